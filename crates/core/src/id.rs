//! Dense numeric handles for backends and models.
//!
//! Everything on the decision path refers to backends and models by index into the
//! [`Fleet`](crate::Fleet), never by their string names: indices are `Copy`, hash-free
//! and let candidate sets be bitsets. The names are looked up only when a decision is
//! rendered for a human.

use std::fmt;

/// A backend's position in its [`Fleet`](crate::Fleet), from `0` to `fleet.len() - 1`.
///
/// The configured string id (`"gpu-box"`) is [`Backend::name`](crate::fleet::Backend::name);
/// this handle is what decisions, candidate sets and rejections carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendId(u32);

impl BackendId {
    /// The handle of the backend at `index`.
    pub const fn new(index: u32) -> Self {
        Self(index)
    }

    /// The backend's index in its fleet.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "backend #{}", self.0)
    }
}

/// A tenant's position in the router's tenant table (`[[tenants]]`, in declaration
/// order).
///
/// A gateway that authenticated a request's key puts its tenant on the
/// [`Request`](crate::Request); the pipeline then tightens the request's constraints by
/// the tenant's overrides, and stages that keep per-tenant state (the budget) find it by
/// this index, without a lookup by name on the decision path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantId(u32);

impl TenantId {
    /// The handle of the tenant at `index`.
    pub const fn new(index: u32) -> Self {
        Self(index)
    }

    /// The tenant's index in the tenant table.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tenant #{}", self.0)
    }
}

/// A model name's position in the fleet's model index.
///
/// Every distinct model name served by at least one backend gets one `ModelId`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModelId(u32);

impl ModelId {
    /// The handle of the model at `index`.
    pub const fn new(index: u32) -> Self {
        Self(index)
    }

    /// The model's index in the fleet's model table.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "model #{}", self.0)
    }
}
