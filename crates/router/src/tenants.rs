//! `[[tenants]]`: who may call a gateway, with what key, under which limits.
//!
//! A tenant has an id, a key (its SHA-256 in the config, `key_sha256`, or the key itself
//! in an environment variable, `key_env`), an optional monthly limit of its own and
//! optional overrides that can only tighten what the traffic policies demand: privacy,
//! `min_tier`, `max_cost_per_request`, and the models it may ask for. The overrides
//! reach the pipeline as [`Constraints`] indexed by [`TenantId`], combined with the
//! policies' by taking the strictest; the limit reaches the budget stage. Keys are kept
//! only as SHA-256 digests, compared in constant time, and never printed.

use std::fmt;

use globset::{Glob, GlobSet, GlobSetBuilder};
use nexus_core::{
    pipeline::TenantId,
    policy::{Constraints, Privacy},
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// One `[[tenants]]` entry as written.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The tenant's id, unique: shown in refusals, `nexus check` and
    /// `GET /v1/nexus/budget`.
    pub id: String,
    /// The SHA-256 of the tenant's key, 64 hexadecimal digits (`printf %s KEY | sha256sum`).
    #[serde(default)]
    pub key_sha256: Option<String>,
    /// The environment variable holding the tenant's key.
    #[serde(default)]
    pub key_env: Option<String>,
    /// The tenant's own monthly limit in USD; its spend also counts against the global
    /// `[routing.budget] monthly_limit_usd`.
    #[serde(default)]
    pub monthly_limit_usd: Option<f64>,
    /// `"restricted"`: the tenant's requests never leave local and private backends.
    #[serde(default)]
    pub privacy: Option<Privacy>,
    /// The lowest capability tier that may serve the tenant.
    #[serde(default)]
    pub min_tier: Option<u8>,
    /// The highest estimated cost of one of the tenant's requests, in USD.
    #[serde(default)]
    pub max_cost_per_request: Option<f64>,
    /// Globs of the model names the tenant may ask for (as requested, before aliases);
    /// every model when absent.
    #[serde(default)]
    pub models: Option<Vec<String>>,
}

impl fmt::Debug for TenantConfig {
    /// Never shows the key's source values beyond which kind it is.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantConfig")
            .field("id", &self.id)
            .field("key_sha256", &self.key_sha256.as_ref().map(|_| "<digest>"))
            .field("key_env", &self.key_env)
            .field("monthly_limit_usd", &self.monthly_limit_usd)
            .field("privacy", &self.privacy)
            .field("min_tier", &self.min_tier)
            .field("max_cost_per_request", &self.max_cost_per_request)
            .field("models", &self.models)
            .finish()
    }
}

/// What is wrong with a tenant: the key at fault (under `tenants[index]`), what and how
/// to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TenantError {
    pub(crate) index: usize,
    pub(crate) key: &'static str,
    pub(crate) message: String,
    pub(crate) help: String,
}

/// One tenant, built.
pub struct Tenant {
    id: String,
    digest: [u8; 32],
    monthly_limit_usd: Option<f64>,
    constraints: Constraints,
    models: Option<(Vec<String>, GlobSet)>,
    key_source: KeySource,
}

/// Where a tenant's key came from, for `nexus check` (never the key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// `key_sha256` in the config.
    Sha256,
    /// `key_env`: the variable's name.
    Env(String),
}

impl fmt::Debug for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tenant")
            .field("id", &self.id)
            .field("key", &self.key_source)
            .field("monthly_limit_usd", &self.monthly_limit_usd)
            .field("constraints", &self.constraints)
            .field("models", &self.models.as_ref().map(|(m, _)| m))
            .finish()
    }
}

impl Tenant {
    /// The tenant's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its own monthly limit in USD, if any.
    pub fn monthly_limit_usd(&self) -> Option<f64> {
        self.monthly_limit_usd
    }

    /// Its overrides, as constraints the pipeline adds to every request of the tenant.
    pub fn constraints(&self) -> &Constraints {
        &self.constraints
    }

    /// The globs of the models it may ask for; `None`: every model.
    pub fn models(&self) -> Option<&[String]> {
        self.models.as_ref().map(|(m, _)| m.as_slice())
    }

    /// Where its key comes from (never the key).
    pub fn key_source(&self) -> &KeySource {
        &self.key_source
    }

    /// Whether the tenant may ask for `model` (the name as requested).
    pub fn allows_model(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|(_, globs)| globs.is_match(model))
    }
}

/// Every configured tenant, in declaration order ([`TenantId`] is the index).
///
/// ```
/// use sha2::{Digest, Sha256};
/// # fn hex(d: &[u8]) -> String { d.iter().map(|b| format!("{b:02x}")).collect() }
/// let digest = hex(&Sha256::digest(b"sk-team-a"));
/// let router = nexus_router::Router::from_toml("inline.toml", &format!(r#"
///     [[tenants]]
///     id = "team-a"
///     key_sha256 = "{digest}"
///     models = ["llama*"]
/// "#))?;
/// let tenants = router.tenants();
/// let id = tenants.authenticate("sk-team-a").expect("the key is team-a's");
/// assert_eq!(tenants.get(id).unwrap().id(), "team-a");
/// assert!(tenants.authenticate("sk-wrong").is_none());
/// assert!(!tenants.get(id).unwrap().allows_model("gpt-4o"));
/// # Ok::<(), nexus_router::ConfigError>(())
/// ```
#[derive(Debug, Default)]
pub struct Tenants {
    tenants: Vec<Tenant>,
}

impl Tenants {
    /// Whether no tenant is configured (then the gateway asks for no key).
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    /// How many tenants there are.
    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    /// The tenant with handle `id`.
    pub fn get(&self, id: TenantId) -> Option<&Tenant> {
        self.tenants.get(id.index())
    }

    /// Every tenant with its handle, in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = (TenantId, &Tenant)> {
        self.tenants
            .iter()
            .enumerate()
            .map(|(i, t)| (TenantId::new(i as u32), t))
    }

    /// The tenant whose key is `key`, if any. The key's SHA-256 is compared with every
    /// tenant's in constant time, and every tenant is compared (no early exit), so the
    /// time taken says nothing about which key, or how much of one, matched.
    pub fn authenticate(&self, key: &str) -> Option<TenantId> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = None;
        for (i, tenant) in self.tenants.iter().enumerate() {
            if bool::from(tenant.digest.ct_eq(&digest)) {
                found = Some(TenantId::new(i as u32));
            }
        }
        found
    }

    /// Each tenant's overrides, by [`TenantId`], for the pipeline.
    pub(crate) fn constraints(&self) -> Vec<Constraints> {
        self.tenants.iter().map(|t| t.constraints).collect()
    }

    /// Builds the tenants: checks every key and reads `key_env` variables (through
    /// `env`). A tenant whose variable is unset is an error, except in a dry run
    /// (`nexus check` on a machine without the keys), where it is a warning.
    pub(crate) fn build(
        configs: &[TenantConfig],
        env: impl Fn(&str) -> Option<String>,
        dry_run: bool,
        warnings: &mut Vec<TenantError>,
    ) -> Result<Tenants, TenantError> {
        let mut tenants: Vec<Tenant> = Vec::with_capacity(configs.len());
        for (index, config) in configs.iter().enumerate() {
            let error = |key: &'static str, message: String, help: &str| TenantError {
                index,
                key,
                message: format!("tenant '{}': {message}", config.id),
                help: help.to_owned(),
            };
            if config.id.trim().is_empty() {
                return Err(error(
                    "id",
                    "the id is empty".into(),
                    "give every tenant a short name, e.g. id = \"team-a\"",
                ));
            }
            // The id names the tenant's Redis scope (`{tenant:<id>}`) and shows in logs.
            if config.id.chars().count() > 64
                || config
                    .id
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '{' || c == '}')
            {
                return Err(error(
                    "id",
                    "the id has whitespace, braces or control characters, or more than 64 characters".into(),
                    "use a short name of letters, digits, '-', '_' or '.', e.g. id = \"team-a\"",
                ));
            }
            if let Some(first) = configs[..index].iter().position(|c| c.id == config.id) {
                return Err(error(
                    "id",
                    format!("the id is used by tenant {first} already"),
                    "give every tenant its own id",
                ));
            }
            let (digest, key_source) = match (&config.key_sha256, &config.key_env) {
                (Some(_), Some(_)) => {
                    return Err(error(
                        "key_env",
                        "both key_sha256 and key_env are set".into(),
                        "keep one: key_sha256 (the key's SHA-256 in hex) or key_env (the variable holding the key)",
                    ))
                }
                (None, None) => {
                    return Err(error(
                        "id",
                        "no key: set key_sha256 or key_env".into(),
                        "add key_sha256 = \"<64 hex digits>\" (printf %s KEY | sha256sum) or key_env = \"VARIABLE\"",
                    ))
                }
                (Some(hex), None) => match parse_digest(hex) {
                    Some(digest) => (digest, KeySource::Sha256),
                    None => {
                        return Err(error(
                            "key_sha256",
                            format!(
                                "key_sha256 is not a SHA-256 digest: {} characters, 64 hexadecimal digits expected",
                                hex.chars().count()
                            ),
                            "write the key's digest, e.g. the first word of `printf %s KEY | sha256sum`",
                        ))
                    }
                },
                (None, Some(var)) => match env(var).filter(|k| !k.is_empty()) {
                    Some(key) => (Sha256::digest(key.as_bytes()).into(), KeySource::Env(var.clone())),
                    None if dry_run => {
                        warnings.push(error(
                            "key_env",
                            format!("${var} is not set here, so this tenant's key is unknown; `nexus serve` refuses to start without it"),
                            "",
                        ));
                        // A digest no key has (all zero bytes): nobody authenticates as it.
                        ([0u8; 32], KeySource::Env(var.clone()))
                    }
                    None => {
                        return Err(error(
                            "key_env",
                            format!("the environment variable ${var} is not set or empty"),
                            "export the tenant's key in that variable before starting, or use key_sha256",
                        ))
                    }
                },
            };
            if digest != [0u8; 32] {
                if let Some(other) = tenants.iter().find(|t| t.digest == digest) {
                    return Err(error(
                        match key_source {
                            KeySource::Sha256 => "key_sha256",
                            KeySource::Env(_) => "key_env",
                        },
                        format!("the key is tenant '{}''s key too", other.id),
                        "give every tenant its own key",
                    ));
                }
            }
            let mut constraints = Constraints::NONE;
            match config.privacy {
                Some(Privacy::Unrestricted) => {
                    return Err(error(
                        "privacy",
                        "privacy = \"unrestricted\" would loosen the traffic policies; a tenant's overrides can only tighten".into(),
                        "remove the key (the policies apply), or write privacy = \"restricted\"",
                    ))
                }
                Some(Privacy::Restricted) => constraints.privacy = Privacy::Restricted,
                None => {}
            }
            if let Some(tier) = config.min_tier {
                if tier == 0 {
                    return Err(error(
                        "min_tier",
                        "min_tier = 0 demands nothing (a tenant's overrides can only tighten)"
                            .into(),
                        "remove the key, or give a tier of 1 or more",
                    ));
                }
                constraints.min_tier = tier;
            }
            if let Some(cap) = config.max_cost_per_request {
                if !cap.is_finite() || cap <= 0.0 {
                    return Err(error(
                        "max_cost_per_request",
                        format!("max_cost_per_request must be a positive number of USD, got {cap}"),
                        "write the most one request may cost, e.g. max_cost_per_request = 0.05",
                    ));
                }
                constraints.max_cost_per_request = Some(cap);
            }
            if let Some(limit) = config.monthly_limit_usd {
                limit_check(limit).map_err(|m| {
                    error(
                        "monthly_limit_usd",
                        m,
                        "write the tenant's monthly limit in USD, e.g. monthly_limit_usd = 50.0",
                    )
                })?;
            }
            let models = match &config.models {
                None => None,
                Some(list) if list.is_empty() => {
                    return Err(error(
                        "models",
                        "models = [] allows no model at all".into(),
                        "list the model globs the tenant may use, or remove the key to allow every model",
                    ))
                }
                Some(list) => {
                    let mut builder = GlobSetBuilder::new();
                    for pattern in list {
                        let glob = Glob::new(pattern).map_err(|e| {
                            error(
                                "models",
                                format!("'{pattern}' is not a valid glob: {}", e.kind()),
                                "use * for any run of characters, ? for one, [abc] for a class",
                            )
                        })?;
                        builder.add(glob);
                    }
                    let set = builder.build().map_err(|e| {
                        error("models", e.to_string(), "check the globs")
                    })?;
                    Some((list.clone(), set))
                }
            };
            tenants.push(Tenant {
                id: config.id.clone(),
                digest,
                monthly_limit_usd: config.monthly_limit_usd,
                constraints,
                models,
                key_source,
            });
        }
        Ok(Tenants { tenants })
    }
}

/// A monthly limit's range check, worded like the budget's (without depending on the
/// budget stage, which a build may leave out).
fn limit_check(limit: f64) -> Result<(), String> {
    if (1e-6..=1e9).contains(&limit) {
        Ok(())
    } else {
        Err(format!(
            "monthly_limit_usd must be from 1e-6 to 1e9 USD, got {limit}"
        ))
    }
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(digest: &[u8]) -> String {
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn tenant(id: &str) -> TenantConfig {
        TenantConfig {
            id: id.into(),
            key_sha256: Some(hex(&Sha256::digest(format!("key-{id}").as_bytes()))),
            key_env: None,
            monthly_limit_usd: None,
            privacy: None,
            min_tier: None,
            max_cost_per_request: None,
            models: None,
        }
    }

    fn build(configs: &[TenantConfig]) -> Result<Tenants, TenantError> {
        Tenants::build(configs, |_| None, false, &mut Vec::new())
    }

    #[test]
    fn keys_authenticate_their_own_tenant_only() {
        let tenants = build(&[tenant("a"), tenant("b")]).unwrap();
        assert_eq!(tenants.authenticate("key-a"), Some(TenantId::new(0)));
        assert_eq!(tenants.authenticate("key-b"), Some(TenantId::new(1)));
        assert_eq!(tenants.authenticate("key-c"), None);
        assert_eq!(tenants.authenticate(""), None);
        assert_eq!(tenants.authenticate("key-a "), None);
    }

    #[test]
    fn a_key_from_the_environment_is_hashed_and_never_shown() {
        let mut config = tenant("a");
        config.key_sha256 = None;
        config.key_env = Some("TEAM_A_KEY".into());
        let env = |name: &str| (name == "TEAM_A_KEY").then(|| "sk-secret-a".to_owned());
        let tenants = Tenants::build(&[config.clone()], env, false, &mut Vec::new()).unwrap();
        assert_eq!(tenants.authenticate("sk-secret-a"), Some(TenantId::new(0)));
        assert!(!format!("{tenants:?}").contains("sk-secret-a"));
        // Unset: an error at key_env when serving, a warning in a dry run.
        let err = build(&[config.clone()]).unwrap_err();
        assert_eq!(err.key, "key_env");
        assert!(err.message.contains("$TEAM_A_KEY"), "{}", err.message);
        let mut warnings = Vec::new();
        let tenants = Tenants::build(&[config], |_| None, true, &mut warnings).unwrap();
        assert_eq!(warnings.len(), 1);
        assert_eq!(tenants.authenticate(""), None);
    }

    #[test]
    fn loosening_or_empty_overrides_are_errors_at_their_key() {
        let mut loose = tenant("a");
        loose.privacy = Some(Privacy::Unrestricted);
        let err = build(&[loose]).unwrap_err();
        assert_eq!((err.index, err.key), (0, "privacy"));
        assert!(err.message.contains("only tighten"), "{}", err.message);

        let mut zero = tenant("b");
        zero.min_tier = Some(0);
        assert_eq!(build(&[tenant("a"), zero]).unwrap_err().key, "min_tier");

        let mut free = tenant("a");
        free.max_cost_per_request = Some(-1.0);
        assert_eq!(build(&[free]).unwrap_err().key, "max_cost_per_request");

        let mut none = tenant("a");
        none.models = Some(vec![]);
        assert_eq!(build(&[none]).unwrap_err().key, "models");

        let mut bad = tenant("a");
        bad.key_sha256 = Some("abc".into());
        assert_eq!(build(&[bad]).unwrap_err().key, "key_sha256");

        assert_eq!(build(&[tenant("team a")]).unwrap_err().key, "id");
        assert_eq!(build(&[tenant("{a}")]).unwrap_err().key, "id");
        let err = build(&[tenant("a"), tenant("a")]).unwrap_err();
        assert_eq!((err.index, err.key), (1, "id"));

        let mut same_key = tenant("b");
        same_key.key_sha256 = tenant("a").key_sha256;
        assert_eq!(
            build(&[tenant("a"), same_key]).unwrap_err().key,
            "key_sha256"
        );
    }

    #[test]
    fn overrides_become_constraints_and_model_globs() {
        let mut t = tenant("a");
        t.privacy = Some(Privacy::Restricted);
        t.min_tier = Some(2);
        t.max_cost_per_request = Some(0.01);
        t.models = Some(vec!["llama*".into(), "qwen2:7b".into()]);
        let tenants = build(&[t]).unwrap();
        let a = tenants.get(TenantId::new(0)).unwrap();
        let c = a.constraints();
        assert_eq!(
            (c.privacy, c.min_tier, c.max_cost_per_request),
            (Privacy::Restricted, 2, Some(0.01))
        );
        assert!(a.allows_model("llama3:70b"));
        assert!(a.allows_model("qwen2:7b"));
        assert!(!a.allows_model("gpt-4o"));
    }
}
