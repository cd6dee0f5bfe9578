//! [`PipelineBuilder`]: stages, the selector, aliases, fallbacks and policies, checked
//! into a [`Pipeline`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use super::{FixTexts, Pipeline, PipelineError, Stage};
use crate::routes::ModelRoutes;
use crate::{Clock, Constraints, ErrorPolicy, Fleet, PolicySet, Reconciler, Selector};

/// Builds a [`Pipeline`]; see [`Pipeline::builder`].
#[derive(Debug)]
pub struct PipelineBuilder {
    pub(super) fleet: Arc<Fleet>,
    pub(super) policies: Arc<PolicySet>,
    pub(super) aliases: BTreeMap<String, String>,
    pub(super) fallbacks: BTreeMap<String, Vec<String>>,
    pub(super) stages: Vec<(Box<dyn Reconciler>, Option<ErrorPolicy>)>,
    pub(super) selector: Box<dyn Selector>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) tenant_constraints: Vec<Constraints>,
    pub(super) fix_texts: FixTexts,
}

impl PipelineBuilder {
    /// Sets the clock that timestamps outcomes (the system clock by default).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sets how the pipeline's own Rejects word their fix (see [`FixTexts`]): a facade
    /// names where its configuration says what the fix changes.
    pub fn fix_texts(mut self, texts: FixTexts) -> Self {
        self.fix_texts = texts;
        self
    }

    /// Sets the traffic policies.
    pub fn policies(mut self, policies: Arc<PolicySet>) -> Self {
        self.policies = policies;
        self
    }

    /// Adds an alias: requests for `alias` go to `target` (a model or another alias).
    pub fn alias(mut self, alias: impl Into<String>, target: impl Into<String>) -> Self {
        self.aliases.insert(alias.into(), target.into());
        self
    }

    /// Sets every alias at once.
    pub fn aliases(mut self, aliases: BTreeMap<String, String>) -> Self {
        self.aliases = aliases;
        self
    }

    /// Sets the fallbacks of `model`, tried in order when it has no viable backend.
    pub fn fallback<I, S>(mut self, model: impl Into<String>, fallbacks: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.fallbacks.insert(
            model.into(),
            fallbacks.into_iter().map(Into::into).collect(),
        );
        self
    }

    /// Sets every fallback list at once.
    pub fn fallbacks(mut self, fallbacks: BTreeMap<String, Vec<String>>) -> Self {
        self.fallbacks = fallbacks;
        self
    }

    /// Sets each tenant's overrides, indexed by [`TenantId`](crate::pipeline::TenantId): a request
    /// made for a tenant ([`Request::tenant`](crate::Request::tenant)) has its constraints
    /// tightened by them, for every model it may be served by. Overrides only tighten:
    /// combined with the policies' constraints by taking the strictest of each.
    pub fn tenant_constraints(mut self, tenants: Vec<Constraints>) -> Self {
        self.tenant_constraints = tenants;
        self
    }

    /// Appends a stage with its default error policy.
    pub fn stage(mut self, reconciler: impl Reconciler + 'static) -> Self {
        self.stages.push((Box::new(reconciler), None));
        self
    }

    /// Appends a boxed stage with an explicit error policy (`None`: its default).
    pub fn boxed_stage(
        mut self,
        reconciler: Box<dyn Reconciler>,
        on_error: Option<ErrorPolicy>,
    ) -> Self {
        self.stages.push((reconciler, on_error));
        self
    }

    /// Sets the selector, the one role that picks among the candidates every stage left
    /// (after all of them ran, and again after a veto). A pipeline has exactly one:
    /// this replaces the previous one, [`HeaviestCandidate`](crate::selector::HeaviestCandidate)
    /// by default.
    pub fn selector(self, selector: impl Selector + 'static) -> Self {
        self.boxed_selector(Box::new(selector))
    }

    /// Sets a boxed selector; see [`selector`](Self::selector).
    pub fn boxed_selector(mut self, selector: Box<dyn Selector>) -> Self {
        self.selector = selector;
        self
    }

    /// Resolves aliases and fallbacks and builds the pipeline.
    pub fn build(self) -> Result<Pipeline, PipelineError> {
        if self.stages.len() >= usize::from(u16::MAX) {
            return Err(PipelineError::TooManyStages {
                max: usize::from(u16::MAX) - 1,
            });
        }
        let routes = ModelRoutes::new(&self.fleet, &self.policies, &self.aliases, &self.fallbacks)?;
        let stages = self
            .stages
            .into_iter()
            .map(|(reconciler, on_error)| Stage {
                on_error: on_error.unwrap_or_else(|| reconciler.default_error_policy()),
                reconciler,
                nanos: AtomicU64::new(0),
                calls: AtomicU64::new(0),
            })
            .collect();
        Ok(Pipeline {
            fleet: self.fleet,
            policies: self.policies,
            routes,
            stages,
            selector: self.selector,
            selector_nanos: AtomicU64::new(0),
            selector_calls: AtomicU64::new(0),
            timing: AtomicBool::new(false),
            clock: self.clock,
            tenant_constraints: self.tenant_constraints.into_boxed_slice(),
            fix_texts: self.fix_texts,
        })
    }
}
