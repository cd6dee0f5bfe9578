//! Why a backend was excluded, recorded compactly and rendered on demand.
//!
//! During a decision a stage records a [`Reason`]: a numeric code and up to three
//! numbers, `Copy` and heap-free. Only when someone asks (a Reject, or an explanation)
//! does the stage that recorded it turn it into words through
//! [`Reconciler::explain`](crate::Reconciler::explain), with an [`ExplainContext`] that
//! gives it the fleet, the policies and the request to name things by.

use std::borrow::Cow;
use std::sync::Arc;

use crate::{BackendId, Constraints, Fleet, ModelId, PolicySet, RequestRequirements};

/// A compact, stage-defined reason code with up to three numeric arguments.
///
/// Each stage defines its own codes (constants in its crate) and is the only one that
/// renders them. Codes from [`Reason::MAX_STAGE_CODE`]` + 1` (`0xFF00`) up belong to the
/// pipeline itself: [`Reason::new`] and [`Reason::with`] refuse them, so that a stage's
/// reason is never read as a pipeline failure.
///
/// ```
/// use nexus_core::stage::Reason;
///
/// const TOO_FAR: u16 = 3;
/// let reason = Reason::with(TOO_FAR, [120.0, 80.0, 0.0]);
/// assert_eq!((reason.code(), reason.values()[0]), (TOO_FAR, 120.0));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reason {
    code: u16,
    values: [f64; 3],
}

impl Reason {
    /// The highest code a stage may use.
    pub const MAX_STAGE_CODE: u16 = 0xFEFF;

    /// A reason with no arguments.
    ///
    /// # Panics
    /// If `code` is above [`MAX_STAGE_CODE`](Self::MAX_STAGE_CODE) (a bug in the stage,
    /// caught at compile time when `code` is a constant in a const context).
    #[inline]
    pub const fn new(code: u16) -> Self {
        Self::with(code, [0.0; 3])
    }

    /// A reason with arguments.
    ///
    /// # Panics
    /// If `code` is above [`MAX_STAGE_CODE`](Self::MAX_STAGE_CODE).
    #[inline]
    pub const fn with(code: u16, values: [f64; 3]) -> Self {
        assert!(
            code <= Self::MAX_STAGE_CODE,
            "reason codes above Reason::MAX_STAGE_CODE (0xFEFF) are the pipeline's own"
        );
        Self { code, values }
    }

    /// One of the pipeline's own reasons.
    pub(crate) const fn pipeline(code: u16, values: [f64; 3]) -> Self {
        Self { code, values }
    }

    /// The stage-defined code.
    #[inline]
    pub const fn code(&self) -> u16 {
        self.code
    }

    /// The arguments: tiers, policy indexes, amounts; whatever the code needs.
    #[inline]
    pub const fn values(&self) -> [f64; 3] {
        self.values
    }

    /// A policy index as a reason argument: the index, or -1 for "no policy" (the
    /// request itself asked). [`Reason::policy_index`] reads it back. For the
    /// conversions of a [`StageReason`], whose own field is an `Option<usize>`.
    pub fn policy_value(policy: Option<usize>) -> f64 {
        policy.map_or(-1.0, |i| i as f64)
    }

    /// The policy index stored by [`Reason::policy_value`].
    pub fn policy_index(value: f64) -> Option<usize> {
        (value >= 0.0).then_some(value as usize)
    }

    /// The pipeline's code for "this stage failed and its error policy is fail-closed".
    /// `values[0]` is the index of the stage error in the decision.
    pub(crate) const STAGE_FAILED: u16 = 0xFF00;
    /// The pipeline's code for "the caller left this backend out"
    /// ([`Request::excluding`](crate::Request::excluding)), recorded under
    /// [`PIPELINE_STAGE`](Self::PIPELINE_STAGE).
    pub(crate) const EXCLUDED_BY_CALLER: u16 = 0xFF01;
    /// The stage index under which the pipeline records its own exclusions (no stage
    /// has it: a pipeline holds fewer stages).
    pub(crate) const PIPELINE_STAGE: u16 = u16::MAX;
}

/// A stage's reasons as a type: an enum whose variants say what the stage records, with
/// named fields (a policy is an `Option<usize>`, a tier a `u8`), converting to the compact
/// [`Reason`] a decision stores (`Into<Reason>`: `Copy`, heap-free, for the hot path)
/// and back ([`from_reason`](Self::from_reason)) when the stage renders it in
/// [`Reconciler::explain`](crate::Reconciler::explain).
///
/// ```
/// use nexus_core::stage::{Reason, StageReason};
///
/// #[derive(Clone, Copy, Debug, PartialEq)]
/// enum GeoReason {
///     TooFar { km: u32, limit_km: u32 },
///     NoRegion,
/// }
///
/// impl From<GeoReason> for Reason {
///     fn from(reason: GeoReason) -> Reason {
///         match reason {
///             GeoReason::TooFar { km, limit_km } => {
///                 Reason::with(1, [f64::from(km), f64::from(limit_km), 0.0])
///             }
///             GeoReason::NoRegion => Reason::new(2),
///         }
///     }
/// }
///
/// impl StageReason for GeoReason {
///     fn from_reason(reason: Reason) -> Option<Self> {
///         let [a, b, _] = reason.values();
///         match reason.code() {
///             1 => Some(GeoReason::TooFar { km: a as u32, limit_km: b as u32 }),
///             2 => Some(GeoReason::NoRegion),
///             _ => None,
///         }
///     }
/// }
///
/// let reason = GeoReason::TooFar { km: 120, limit_km: 80 };
/// assert_eq!(GeoReason::from_reason(reason.into()), Some(reason));
/// ```
pub trait StageReason: Copy + Into<Reason> {
    /// The typed reason a compact one holds; `None` for a code the stage does not define.
    fn from_reason(reason: Reason) -> Option<Self>;
}

/// One backend excluded by one stage while deciding for one model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Exclusion {
    /// The excluded backend.
    pub(crate) backend: BackendId,
    /// The model being decided for (differs from the primary when a fallback was tried).
    pub(crate) model: ModelId,
    /// Index of the stage in the pipeline.
    pub(crate) stage: u16,
    /// Why.
    pub(crate) reason: Reason,
}

/// A note attached to a decision that does not exclude anything, e.g. a flexible tier
/// downgrade or a stage that failed open.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Warning {
    /// Index of the stage in the pipeline.
    pub(crate) stage: u16,
    /// The model being decided for.
    pub(crate) model: ModelId,
    /// The backend it is about, if any.
    pub(crate) backend: Option<BackendId>,
    /// What happened.
    pub(crate) reason: Reason,
}

/// A rendered reason: what happened and what would fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// What was measured or required, e.g. "zone cloud, policy 'gpt-4-*' requires restricted".
    pub reason: Cow<'static, str>,
    /// What the operator can do, e.g. "add a local backend for this model or relax the policy".
    pub suggested_action: Cow<'static, str>,
}

impl Explanation {
    /// An explanation from two texts.
    pub fn new(
        reason: impl Into<Cow<'static, str>>,
        suggested_action: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            reason: reason.into(),
            suggested_action: suggested_action.into(),
        }
    }
}

/// What a stage may consult when it renders one of its [`Reason`]s.
#[derive(Clone, Copy, Debug)]
pub struct ExplainContext<'a> {
    /// The fleet.
    pub fleet: &'a Fleet,
    /// The traffic policies.
    pub policies: &'a PolicySet,
    /// The request's requirements.
    pub requirements: &'a RequestRequirements,
    /// The combined constraints in force for `model`.
    pub constraints: &'a Constraints,
    /// The model being decided for.
    pub model: ModelId,
    /// The backend the reason is about, if any.
    pub backend: Option<BackendId>,
}

impl ExplainContext<'_> {
    /// `"policy 'pattern' (#index)"`, for naming the policy that demanded something.
    pub fn policy_label(&self, index: Option<usize>) -> String {
        match index.filter(|&i| i < self.policies.len()) {
            Some(i) => format!("policy '{}' (#{i})", self.policies.policy(i).model_pattern),
            None => "the request".to_owned(),
        }
    }
}

/// An excluded backend with its reason in words: one entry of a decision's
/// `rejections`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The backend's configured id.
    pub backend: Arc<str>,
    /// The model it was excluded for.
    pub model: Arc<str>,
    /// The kind of the stage that excluded it, e.g. `"privacy"`.
    pub reconciler: &'static str,
    /// What was wrong.
    pub reason: Cow<'static, str>,
    /// What would fix it.
    pub suggested_action: Cow<'static, str>,
}

#[cfg(test)]
mod tests {
    use super::Reason;

    #[test]
    fn stages_get_every_code_below_the_pipelines_range() {
        for code in [0, 1, 0x1234, Reason::MAX_STAGE_CODE] {
            assert_eq!(Reason::new(code).code(), code);
        }
    }

    #[test]
    #[should_panic(expected = "are the pipeline's own")]
    fn a_stage_cannot_use_a_pipeline_code() {
        let _ = Reason::new(Reason::STAGE_FAILED);
    }
}
