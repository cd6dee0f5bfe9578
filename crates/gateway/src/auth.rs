//! Who is calling: a tenant's key, the admin key, or nobody in particular.
//!
//! With `[[tenants]]` configured, every request of the HTTP contract except `/health`,
//! `/ready` and `/metrics` needs `Authorization: Bearer KEY` with a tenant's key or the
//! admin key (`[server] admin_key_env`); otherwise it is refused with 401
//! `invalid_api_key`. Without tenants, requests need no key, and the admin key only
//! widens what `GET /v1/nexus/budget` shows. Keys are compared as SHA-256 digests in
//! constant time, and never logged or echoed.

use axum::http::{header, HeaderMap};
use nexus_core::pipeline::TenantId;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{Gateway, GatewayError};

/// The caller of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Caller {
    /// No key was needed and none that means something was sent.
    Anyone,
    /// A tenant's key.
    Tenant(TenantId),
    /// The admin key.
    Admin,
}

/// The admin key's digest, read once from `[server] admin_key_env`.
#[derive(Clone, Copy)]
pub(crate) struct AdminKey([u8; 32]);

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminKey(<digest>)")
    }
}

impl AdminKey {
    /// The admin key of `[server] admin_key_env`, when the variable is set; a set name
    /// whose variable is not is logged (by name) and no key is admin.
    pub(crate) fn from_env(var: Option<&str>) -> Option<AdminKey> {
        let var = var?;
        match std::env::var(var) {
            Ok(key) if !key.is_empty() => Some(AdminKey(Sha256::digest(key.as_bytes()).into())),
            _ => {
                tracing::warn!(
                    var,
                    "[server] admin_key_env names a variable that is not set; no key is the admin key, and admin endpoints answer 403"
                );
                None
            }
        }
    }

    /// Whether `key` is the admin key (digests compared in constant time).
    pub(crate) fn matches(&self, key: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.0.ct_eq(&digest).into()
    }
}

/// The bearer token of `Authorization`, if the header is one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Who sent `headers`: 401 `invalid_api_key` when tenants are configured and the key
/// is missing or neither a tenant's nor the admin's.
pub(crate) fn caller(gateway: &Gateway, headers: &HeaderMap) -> Result<Caller, GatewayError> {
    let router = gateway.router();
    let tenants = router.tenants();
    let key = bearer(headers);
    // Both comparisons run whatever the first says, so that timing tells nothing.
    let tenant = key.and_then(|k| tenants.authenticate(k));
    let admin = match (key, gateway.shared.admin_key.as_ref()) {
        (Some(k), Some(admin)) => admin.matches(k),
        _ => false,
    };
    match (tenant, admin) {
        (Some(id), _) => Ok(Caller::Tenant(id)),
        (None, true) => Ok(Caller::Admin),
        (None, false) if tenants.is_empty() => Ok(Caller::Anyone),
        (None, false) => Err(GatewayError::invalid_api_key()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_tokens_are_read_whatever_the_scheme_case() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sk-a"),
        );
        assert_eq!(bearer(&headers), Some("sk-a"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  sk-b "),
        );
        assert_eq!(bearer(&headers), Some("sk-b"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&headers), None);
    }

    #[test]
    fn the_admin_key_matches_only_itself() {
        let admin = AdminKey(Sha256::digest(b"admin-secret").into());
        assert!(admin.matches("admin-secret"));
        assert!(!admin.matches("admin-secre"));
        assert!(!admin.matches(""));
        assert!(!format!("{admin:?}").contains("admin"));
    }
}
