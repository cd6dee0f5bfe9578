//! Explaining: excluded backends rendered into words (only for a Reject or when
//! asked), and the best fix of a Reject found by running each stage alone.

use std::sync::Arc;

use super::Pipeline;
use crate::decision::{DecisionParts, Fix, RoutingDecision};
use crate::intent::Scratch;
use crate::routes::{closest, RoutePlan};
use crate::{
    BackendId, BudgetStatus, Constraints, ErrorPolicy, ExplainContext, Explanation, ModelId,
    Reason, Rejection, RequestRequirements, RoutingIntent,
};

impl Pipeline {
    pub(super) fn reject_unknown(
        &self,
        requested: &str,
        requirements: RequestRequirements,
        scratch: Box<Scratch>,
    ) -> DecisionParts {
        let hint = match closest(requested, self.routes.names()) {
            Some(name) => format!("did you mean '{name}'? "),
            None => String::new(),
        };
        DecisionParts {
            plan: None,
            requirements,
            kind: RoutingDecision::Reject {
                reason: format!("no backend serves model '{requested}' and no alias names it"),
                rejections: Vec::new(),
                fix: Some(Fix {
                    reconciler: "analyzer",
                    suggested_action: format!(
                        "{hint}{}",
                        (self.fix_texts.unknown_model)(requested)
                    ),
                    admits: Vec::new(),
                }),
            },
            model: None,
            fallback_used: false,
            budget_status: BudgetStatus::Normal,
            ticket: None,
            scratch,
            queue_candidates: None,
        }
    }

    pub(super) fn reject(
        &self,
        plan: &RoutePlan,
        requirements: &RequestRequirements,
        scratch: &Scratch,
        tenant: Option<crate::TenantId>,
    ) -> RoutingDecision {
        let rejections = self.render_exclusions(plan, requirements, scratch);
        let primary = plan.attempts()[0].model;
        let servers = self.fleet.model(primary).servers().len();
        let name = self.fleet.model(primary).name();
        let mut reason = if servers == 1 {
            format!("the only backend serving '{name}' was excluded")
        } else {
            format!("all {servers} backends serving '{name}' were excluded")
        };
        if plan.attempts().len() > 1 {
            reason.push_str(&format!(
                ", and so were those of its {} fallback{}",
                plan.attempts().len() - 1,
                if plan.attempts().len() == 2 { "" } else { "s" }
            ));
        }
        let fix = self.best_fix(plan, requirements, tenant);
        RoutingDecision::Reject {
            reason,
            rejections,
            fix,
        }
    }

    /// Finds the stage whose fix would admit the most backends of the resolved model: a
    /// backend that only one stage would exclude is admitted by fixing that stage. Each
    /// stage is run alone over every server of the model to learn who excludes whom.
    fn best_fix(
        &self,
        plan: &RoutePlan,
        requirements: &RequestRequirements,
        tenant: Option<crate::TenantId>,
    ) -> Option<Fix> {
        let tenant_constraints = tenant
            .and_then(|t| self.tenant_constraints.get(t.index()))
            .copied()
            .unwrap_or(Constraints::NONE);
        let attempt = plan.attempts()[0];
        let servers = self.fleet.model(attempt.model).servers();
        // Per backend: how many stages exclude it alone, and the first one that does.
        let mut excluded_by: Vec<(u16, Option<(u16, Reason)>)> = vec![(0, None); self.fleet.len()];
        let mut scratch = Scratch::default();
        let now_secs = self.clock.now_secs();
        for (index, stage) in self.stages.iter().enumerate() {
            let stage_index = index as u16;
            let mut intent = RoutingIntent::new(
                &self.fleet,
                &self.policies,
                &mut scratch,
                attempt.model,
                *requirements,
                attempt.constraints,
            );
            intent.tenant = tenant;
            intent.tenant_constraints = tenant_constraints;
            intent.constraints = attempt.constraints.tightened_by(&tenant_constraints);
            intent.stage = stage_index;
            intent.explaining = true;
            intent.now_secs = now_secs;
            let result = stage
                .reconciler
                .reconcile(&mut intent)
                .and_then(|()| stage.reconciler.refine(&mut intent));
            let mut count = |backend: BackendId, reason: Reason| {
                let entry = &mut excluded_by[backend.index()];
                entry.0 += 1;
                entry.1.get_or_insert((stage_index, reason));
            };
            if result.is_err() && stage.on_error == ErrorPolicy::FailClosed {
                for b in servers.iter() {
                    count(b, Reason::pipeline(Reason::STAGE_FAILED, [0.0; 3]));
                }
                continue;
            }
            for e in &scratch.exclusions {
                count(e.backend, e.reason);
            }
        }
        // The stage that alone excludes the most backends (the earliest on a tie).
        let mut admitted_by = vec![0u32; self.stages.len()];
        for (_, only) in excluded_by.iter().filter(|(n, _)| *n == 1) {
            if let Some((stage, _)) = only {
                admitted_by[usize::from(*stage)] += 1;
            }
        }
        let (stage, _) = admitted_by
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)))?;
        let stage = stage as u16;
        let admitted: Vec<(BackendId, Reason)> = excluded_by
            .iter()
            .enumerate()
            .filter_map(|(i, (n, only))| match only {
                Some((s, reason)) if *n == 1 && *s == stage => {
                    Some((BackendId::new(i as u32), *reason))
                }
                _ => None,
            })
            .collect();
        let (first_backend, first_reason) = admitted[0];
        let explanation = self.explain(
            stage,
            &first_reason,
            attempt.model,
            Some(first_backend),
            requirements,
            &attempt.constraints,
            &[],
        );
        Some(Fix {
            reconciler: self.stages[usize::from(stage)].reconciler.name(),
            suggested_action: explanation.suggested_action.into_owned(),
            admits: admitted
                .iter()
                .map(|(b, _)| self.fleet.backend(*b).name().to_owned())
                .collect(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn explain(
        &self,
        stage: u16,
        reason: &Reason,
        model: ModelId,
        backend: Option<BackendId>,
        requirements: &RequestRequirements,
        constraints: &Constraints,
        errors: &[(u16, crate::ReconcileError)],
    ) -> Explanation {
        let name = self
            .stages
            .get(usize::from(stage))
            .map_or("pipeline", |s| s.reconciler.name());
        if reason.code() == Reason::EXCLUDED_BY_CALLER && stage == Reason::PIPELINE_STAGE {
            return Explanation::new(
                "left out by the caller: an earlier attempt of this request failed there",
                "none needed: the request was decided again without it",
            );
        }
        if reason.code() == Reason::STAGE_FAILED {
            let message = errors.get(reason.values()[0] as usize).map_or_else(
                || "it returned an error".to_owned(),
                |(_, e)| e.message.to_string(),
            );
            return Explanation::new(
                format!("stage '{name}' failed: {message}"),
                (self.fix_texts.failed_stage)(name),
            );
        }
        let ctx = ExplainContext {
            fleet: &self.fleet,
            policies: &self.policies,
            requirements,
            constraints,
            model,
            backend,
        };
        match self.stages.get(usize::from(stage)) {
            Some(stage) => stage.reconciler.explain(reason, &ctx),
            None => Explanation::new("excluded by the pipeline", "see the stage's documentation"),
        }
    }

    pub(crate) fn render_exclusions(
        &self,
        plan: &RoutePlan,
        requirements: &RequestRequirements,
        scratch: &Scratch,
    ) -> Vec<Rejection> {
        scratch
            .exclusions
            .iter()
            .map(|e| {
                let constraints = plan.constraints_for(e.model);
                let explanation = self.explain(
                    e.stage,
                    &e.reason,
                    e.model,
                    Some(e.backend),
                    requirements,
                    &constraints,
                    &scratch.errors,
                );
                Rejection {
                    backend: Arc::clone(self.fleet.backend(e.backend).shared_name()),
                    model: Arc::clone(self.fleet.model(e.model).shared_name()),
                    reconciler: self
                        .stages
                        .get(usize::from(e.stage))
                        .map_or("pipeline", |s| s.reconciler.name()),
                    reason: explanation.reason,
                    suggested_action: explanation.suggested_action,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        BackendSpec, ErrorPolicy, Fleet, ModelSpec, ReconcileError, Reconciler, Request, Verdict,
    };

    fn pipeline(stages: Vec<(Box<dyn Reconciler>, Option<ErrorPolicy>)>) -> Pipeline {
        let fleet = Fleet::new(
            ["a", "b", "c", "d"]
                .iter()
                .map(|n| BackendSpec::new(*n, "http://127.0.0.1:1").with_model(ModelSpec::new("m")))
                .collect(),
        )
        .expect("a valid fleet");
        stages
            .into_iter()
            .fold(Pipeline::builder(Arc::new(fleet)), |b, (stage, policy)| {
                b.boxed_stage(stage, policy)
            })
            .build()
            .expect("a pipeline")
    }

    /// Excludes the named backends; fails instead when `fails`.
    #[derive(Debug)]
    struct Exclude {
        name: &'static str,
        backends: &'static [&'static str],
        fails: bool,
    }

    fn exclude(name: &'static str, backends: &'static [&'static str]) -> Box<dyn Reconciler> {
        Box::new(Exclude {
            name,
            backends,
            fails: false,
        })
    }

    impl Reconciler for Exclude {
        fn name(&self) -> &'static str {
            self.name
        }
        fn reconcile(&self, intent: &mut RoutingIntent<'_>) -> Result<(), ReconcileError> {
            if self.fails {
                return Err(ReconcileError::retryable("down"));
            }
            let fleet = intent.fleet();
            intent.visit_candidates(|c| {
                if self.backends.contains(&fleet.backend(c.backend).name()) {
                    Verdict::Exclude(Reason::new(3))
                } else {
                    Verdict::Keep
                }
            });
            Ok(())
        }
        fn explain(&self, _reason: &Reason, ctx: &ExplainContext<'_>) -> Explanation {
            let backend = ctx.backend.map_or("?", |b| ctx.fleet.backend(b).name());
            Explanation::new(
                format!("{} excludes {backend}", self.name),
                format!("relax {} for {backend}", self.name),
            )
        }
    }

    fn fix_of(pipeline: &Pipeline) -> Option<Fix> {
        let plan = pipeline.routes.plan("m").expect("a plan");
        pipeline.best_fix(plan, &Request::new("m").requirements(), None)
    }

    #[test]
    fn the_fix_admits_the_most_backends_that_one_stage_alone_excludes() {
        // a: one alone; b: both; c and d: two alone. Fixing "two" admits c and d.
        let pipeline = pipeline(vec![
            (exclude("one", &["a", "b"]), None),
            (exclude("two", &["b", "c", "d"]), None),
        ]);
        let fix = fix_of(&pipeline).expect("a fix");
        assert_eq!(fix.reconciler, "two");
        assert_eq!(fix.admits, ["c", "d"]);
        // The action is the stage's own, for the first backend it would admit.
        assert_eq!(fix.suggested_action, "relax two for c");
    }

    #[test]
    fn on_a_tie_the_earlier_stage_is_the_fix() {
        let pipeline = pipeline(vec![
            (exclude("one", &["a", "b"]), None),
            (exclude("two", &["b", "c"]), None),
            (exclude("three", &["d"]), None),
        ]);
        let fix = fix_of(&pipeline).expect("a fix");
        assert_eq!((fix.reconciler, fix.admits), ("one", vec!["a".to_owned()]));
    }

    #[test]
    fn no_fix_when_every_backend_needs_two_changes() {
        let pipeline = pipeline(vec![
            (exclude("one", &["a", "b", "c", "d"]), None),
            (exclude("two", &["a", "b", "c", "d"]), None),
        ]);
        assert_eq!(fix_of(&pipeline), None);
    }

    #[test]
    fn a_failing_fail_closed_stage_excludes_every_server_and_a_fail_open_one_none() {
        let failing = || {
            Box::new(Exclude {
                name: "flaky",
                backends: &[],
                fails: true,
            }) as Box<dyn Reconciler>
        };
        let closed = pipeline(vec![
            (exclude("one", &["a"]), None),
            (failing(), Some(ErrorPolicy::FailClosed)),
        ]);
        let fix = fix_of(&closed).expect("a fix");
        assert_eq!(fix.reconciler, "flaky");
        assert_eq!(fix.admits, ["b", "c", "d"]);
        assert_eq!(
            fix.suggested_action,
            "fix what the error names, or give stage 'flaky' the fail-open error policy to skip it when it fails"
        );

        let open = pipeline(vec![
            (exclude("one", &["a"]), None),
            (failing(), Some(ErrorPolicy::FailOpen)),
        ]);
        let fix = fix_of(&open).expect("a fix");
        assert_eq!((fix.reconciler, fix.admits), ("one", vec!["a".to_owned()]));
    }

    fn unknown_fix(pipeline: &Pipeline) -> String {
        match pipeline.decide(&Request::new("n")).kind() {
            RoutingDecision::Reject { fix: Some(fix), .. } => fix.suggested_action.clone(),
            other => panic!("expected a Reject with a fix, got {other:?}"),
        }
    }

    #[test]
    fn the_pipelines_own_rejects_word_their_fix_with_its_fix_texts() {
        assert_eq!(
            unknown_fix(&pipeline(Vec::new())),
            "did you mean 'm'? add a backend that serves 'n', or an alias that names it (PipelineBuilder::alias)"
        );
        let fleet = pipeline(Vec::new()).fleet().clone();
        let worded = Pipeline::builder(fleet)
            .fix_texts(super::super::FixTexts {
                unknown_model: |model| format!("list '{model}' in models.yaml"),
                ..Default::default()
            })
            .build()
            .expect("a pipeline");
        assert_eq!(
            unknown_fix(&worded),
            "did you mean 'm'? list 'n' in models.yaml"
        );
    }
}
