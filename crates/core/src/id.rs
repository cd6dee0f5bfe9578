//! Dense numeric handles for backends and models.
//!
//! Everything on the decision path refers to backends and models by index into the
//! [`Fleet`](crate::Fleet), never by their string names: indices are `Copy`, hash-free
//! and let candidate sets be bitsets. The names are looked up only when a decision is
//! rendered for a human.

use std::fmt;

/// A backend's position in its [`Fleet`](crate::Fleet), from `0` to `fleet.len() - 1`.
///
/// The configured string id (`"gpu-box"`) is [`Backend::name`](crate::Backend::name);
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
