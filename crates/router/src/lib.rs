//! # nexus-router
//!
//! The facade of the Nexus control plane. It turns a TOML configuration into a
//! [`Fleet`](nexus_core::Fleet) and a [`Pipeline`](nexus_core::Pipeline) of stages drawn
//! from a [`Registry`](nexus_core::registry::Registry) (built-ins plus whatever you register),
//! and renders decisions for people and machines ([`DecisionReport`]); the `nexus`
//! command-line tool lives in `nexus-cli`, so that embedding this crate never compiles
//! a web server. Each policy crate is re-exported behind a feature of its name.
//!
//! ```
//! use nexus_core::{Request, RoutingDecision};
//! use nexus_router::{DecisionReport, Router};
//!
//! let router = Router::example()?;
//! let decision = router.route(&Request::new("gpt-4").input_tokens(1000));
//! assert!(matches!(decision.kind(), RoutingDecision::Route { .. }));
//! let report = DecisionReport::new("gpt-4", &decision);
//! assert_eq!(report.model.as_deref(), Some("llama3:70b"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod enforcement;
mod reload;
mod replay;
mod report;
mod router;
mod serving;
mod summary;
mod tenants;
mod validate;
mod wording;

pub use config::{
    Config, ConfigError, ConfigWarning, RoutingConfig, EXAMPLE_CONFIG, EXAMPLE_CONFIG_NAME,
    MAX_CONFIG_BYTES,
};
pub use enforcement::POLICY_KEY_STAGES;
pub use reload::{LiveRouter, ReloadSummary};
pub use replay::ReplayError;
pub use report::{CandidateReport, CostReport, DecisionReport, FixReport, RejectionReport};
pub use router::{Router, RouterBuilder, WithBuiltins, DEFAULT_PIPELINE};
pub use serving::{HealthConfig, LogFormat, ServerConfig};
pub use tenants::{KeySource, Tenant, TenantConfig, Tenants};

#[cfg(feature = "budget")]
pub use nexus_budget as budget;
pub use nexus_core as core;
#[cfg(feature = "privacy")]
pub use nexus_privacy as privacy;
#[cfg(feature = "quality")]
pub use nexus_quality as quality;
#[cfg(feature = "scheduler")]
pub use nexus_scheduler as scheduler;
#[cfg(feature = "tier")]
pub use nexus_tier as tier;
