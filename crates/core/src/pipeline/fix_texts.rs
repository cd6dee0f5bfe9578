//! [`FixTexts`]: how a pipeline's explanations tell an operator where to make a fix.
//!
//! Core speaks of pipelines, stages and aliases; where those are written down is the
//! business of whoever builds the pipeline. The `nexus-router` facade, which builds from
//! a config file, sets texts that name its tables (`[routing.aliases]`,
//! `[routing.on_error]`); a pipeline built in code keeps the defaults, which name the
//! builder's calls. The texts are rendered only for a Reject, never on the hot path.

/// The suggested actions a pipeline gives for its own two Rejects: a name that nothing
/// serves, and a failing stage that fails closed. Each is a plain function, so the
/// texts cost nothing until a Reject is rendered.
///
/// ```
/// use nexus_core::pipeline::FixTexts;
///
/// let texts = FixTexts {
///     unknown_model: |model| format!("add '{model}' to models.yaml"),
///     ..FixTexts::default()
/// };
/// assert_eq!((texts.unknown_model)("gpt-5"), "add 'gpt-5' to models.yaml");
/// ```
#[derive(Clone, Copy, Debug)]
pub struct FixTexts {
    /// The fix for a request whose name no backend serves and no alias names, given
    /// that name (a "did you mean" hint, when there is one, is put before it).
    pub unknown_model: fn(model: &str) -> String,
    /// The fix for a decision rejected because the named stage failed with the
    /// fail-closed error policy, given the stage's kind.
    pub failed_stage: fn(kind: &str) -> String,
}

impl Default for FixTexts {
    /// Texts that name the pipeline builder's calls.
    fn default() -> Self {
        FixTexts {
            unknown_model: |model| {
                format!("add a backend that serves '{model}', or an alias that names it (PipelineBuilder::alias)")
            },
            failed_stage: |kind| {
                format!("fix what the error names, or give stage '{kind}' the fail-open error policy to skip it when it fails")
            },
        }
    }
}
