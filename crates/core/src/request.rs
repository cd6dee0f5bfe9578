//! What a request asks for: [`Request`] as the caller states it, and the derived
//! [`RequestRequirements`] that stages check backends against.

use std::fmt;
use std::ops::BitOr;

use crate::{BackendId, TenantId};

/// Optional model features a request may need, as a small bit set.
///
/// ```
/// use nexus_core::pipeline::Features;
/// let needs = Features::VISION | Features::TOOLS;
/// assert!(needs.contains(Features::TOOLS));
/// assert_eq!(needs.missing_from(Features::TOOLS), Features::VISION);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Features(u8);

impl Features {
    /// No features.
    pub const NONE: Features = Features(0);
    /// Image input.
    pub const VISION: Features = Features(1);
    /// Tool (function) calls.
    pub const TOOLS: Features = Features(2);
    /// A JSON response mode.
    pub const JSON_MODE: Features = Features(4);

    /// Builds the set from three flags.
    pub const fn from_flags(vision: bool, tools: bool, json_mode: bool) -> Self {
        Features((vision as u8) | ((tools as u8) << 1) | ((json_mode as u8) << 2))
    }

    /// Whether every feature of `other` is in `self`.
    #[inline]
    pub const fn contains(self, other: Features) -> bool {
        self.0 & other.0 == other.0
    }

    /// The features of `self` that `offered` lacks.
    #[inline]
    pub const fn missing_from(self, offered: Features) -> Features {
        Features(self.0 & !offered.0)
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The raw bits, for compact storage.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// The set from raw bits; unknown bits are dropped.
    pub const fn from_bits(bits: u8) -> Self {
        Features(bits & 7)
    }

    /// The names of the features in the set, as written in config.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        [
            (Features::VISION, "vision"),
            (Features::TOOLS, "tools"),
            (Features::JSON_MODE, "json_mode"),
        ]
        .into_iter()
        .filter(move |(f, _)| self.contains(*f))
        .map(|(_, name)| name)
    }
}

impl BitOr for Features {
    type Output = Features;
    fn bitor(self, rhs: Features) -> Features {
        Features(self.0 | rhs.0)
    }
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for name in self.names() {
            if !first {
                f.write_str(", ")?;
            }
            f.write_str(name)?;
            first = false;
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

/// How strictly a policy's `min_tier` applies to this request.
///
/// Gateways let clients choose with a request header: [`TierMode::from_headers`] maps
/// `X-Nexus-Flexible` and `X-Nexus-Strict` to the mode.
///
/// ```
/// use nexus_core::pipeline::TierMode;
/// let headers = [("content-type", "application/json"), ("x-nexus-flexible", "true")];
/// assert_eq!(TierMode::from_headers(headers), Some(TierMode::Flexible));
/// assert_eq!(TierMode::from_headers([("X-Nexus-Flexible", "0")]), None);
/// // Asking for both is resolved to the safe side.
/// let both = [("X-Nexus-Flexible", "1"), ("X-Nexus-Strict", "1")];
/// assert_eq!(TierMode::from_headers(both), Some(TierMode::Strict));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TierMode {
    /// Never serve below the required tier (the default).
    #[default]
    Strict,
    /// When no backend meets the tier, serve the best tier below it, with a warning.
    Flexible,
}

impl TierMode {
    /// The request header that asks for [`TierMode::Flexible`].
    pub const FLEXIBLE_HEADER: &'static str = "X-Nexus-Flexible";
    /// The request header that asks for [`TierMode::Strict`].
    pub const STRICT_HEADER: &'static str = "X-Nexus-Strict";

    /// The mode a request's headers ask for, or `None` when they ask for neither (the
    /// caller then uses its default, normally [`TierMode::Strict`]).
    ///
    /// Header names match case-insensitively. A header counts when its value is empty,
    /// `1`, `true`, `yes` or `on` (any case); `0`, `false`, `no` and `off` do not. When
    /// both headers are set, strict wins: a client cannot loosen what it also tightened.
    pub fn from_headers<'h>(headers: impl IntoIterator<Item = (&'h str, &'h str)>) -> Option<Self> {
        let mut flexible = false;
        let mut strict = false;
        for (name, value) in headers {
            let value = value.trim();
            let on = value.is_empty()
                || ["1", "true", "yes", "on"]
                    .iter()
                    .any(|v| value.eq_ignore_ascii_case(v));
            if name.eq_ignore_ascii_case(Self::FLEXIBLE_HEADER) {
                flexible |= on;
            } else if name.eq_ignore_ascii_case(Self::STRICT_HEADER) {
                strict |= on;
            }
        }
        match (strict, flexible) {
            (true, _) => Some(TierMode::Strict),
            (false, true) => Some(TierMode::Flexible),
            (false, false) => None,
        }
    }
}

/// One inference request, as far as routing needs to know it.
///
/// The model name is borrowed so that a gateway can route straight from the parsed
/// request body without copying.
///
/// ```
/// use nexus_core::{pipeline::Features, Request};
/// let request = Request::new("gpt-4").input_tokens(1000).needs(Features::TOOLS);
/// let needs = request.requirements();
/// assert_eq!(needs.estimated_output_tokens, 500);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Request<'a> {
    /// The model the client asked for (possibly an alias).
    pub model: &'a str,
    /// Input tokens, when known; counts as 0 otherwise.
    pub input_tokens: Option<u32>,
    /// An upper bound of the input tokens, when the caller cannot count them exactly
    /// but can bound them: the prompt's length in bytes is one, since tokenizers do not
    /// make tokens of less than a byte. The budget reserves at this bound (so that the
    /// limit holds however the estimate errs), while cost estimates, caps and context
    /// checks use `input_tokens`. Ignored when below `input_tokens`.
    pub max_input_tokens: Option<u32>,
    /// The client's cap on output tokens.
    pub max_output_tokens: Option<u32>,
    /// Features the request needs.
    pub features: Features,
    /// Strict or flexible tier enforcement.
    pub tier_mode: TierMode,
    /// Backends not to consider for this request: a gateway that failed over from a
    /// backend decides again without it. Usually empty.
    pub excluded: &'a [BackendId],
    /// The tenant the request is made for, when the caller authenticated one: the
    /// pipeline tightens the constraints by the tenant's overrides
    /// ([`PipelineBuilder::tenant_constraints`](crate::pipeline::PipelineBuilder::tenant_constraints))
    /// and the budget counts its spend against the tenant's limit as well as the
    /// global one. `None`: no tenant.
    pub tenant: Option<TenantId>,
}

impl<'a> Request<'a> {
    /// A request for `model` with no other requirements.
    pub const fn new(model: &'a str) -> Self {
        Self {
            model,
            input_tokens: None,
            max_input_tokens: None,
            max_output_tokens: None,
            features: Features::NONE,
            tier_mode: TierMode::Strict,
            excluded: &[],
            tenant: None,
        }
    }

    /// Makes the request on behalf of `tenant`; see [`Request::tenant`].
    pub const fn for_tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// Sets the input token count.
    pub const fn input_tokens(mut self, tokens: u32) -> Self {
        self.input_tokens = Some(tokens);
        self
    }

    /// Sets the upper bound of the input tokens; see [`Request::max_input_tokens`].
    pub const fn max_input_tokens(mut self, tokens: u32) -> Self {
        self.max_input_tokens = Some(tokens);
        self
    }

    /// Sets the output token cap.
    pub const fn max_output_tokens(mut self, tokens: u32) -> Self {
        self.max_output_tokens = Some(tokens);
        self
    }

    /// Adds needed features.
    pub const fn needs(mut self, features: Features) -> Self {
        self.features = Features(self.features.0 | features.0);
        self
    }

    /// Sets the tier mode.
    pub const fn tier_mode(mut self, mode: TierMode) -> Self {
        self.tier_mode = mode;
        self
    }

    /// Leaves `backends` out of the decision (each is reported as excluded by the
    /// caller): for deciding again after an attempt on one of them failed.
    pub const fn excluding(mut self, backends: &'a [BackendId]) -> Self {
        self.excluded = backends;
        self
    }

    /// The derived requirements: input counts as 0 when unknown; the estimated output is
    /// the output cap when given, otherwise half the input; the input bound is the
    /// larger of `max_input_tokens` and the input.
    pub const fn requirements(&self) -> RequestRequirements {
        let input = match self.input_tokens {
            Some(n) => n,
            None => 0,
        };
        let max_input = match self.max_input_tokens {
            Some(n) if n > input => n,
            _ => input,
        };
        let output = match self.max_output_tokens {
            Some(n) => n,
            None => input / 2,
        };
        RequestRequirements {
            input_tokens: input,
            max_input_tokens: max_input,
            estimated_output_tokens: output,
            features: self.features,
            tier_mode: self.tier_mode,
        }
    }
}

/// What a backend must satisfy to serve a request, derived once per decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestRequirements {
    /// Input tokens (0 when unknown).
    pub input_tokens: u32,
    /// The upper bound of the input tokens the budget reserves for: at least
    /// `input_tokens`.
    pub max_input_tokens: u32,
    /// Output tokens the request is expected to produce.
    pub estimated_output_tokens: u32,
    /// Needed features.
    pub features: Features,
    /// Tier enforcement mode.
    pub tier_mode: TierMode,
}

impl RequestRequirements {
    /// Input plus estimated output tokens, for context-window checks.
    pub const fn total_tokens(&self) -> u64 {
        self.input_tokens as u64 + self.estimated_output_tokens as u64
    }
}

/// A request's size class by input plus estimated output tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TokenTier {
    /// Fewer than 1 000 tokens.
    #[default]
    Small,
    /// 1 000 to 9 999 tokens.
    Medium,
    /// 10 000 to 99 999 tokens.
    Large,
    /// 100 000 tokens or more.
    Huge,
}

impl TokenTier {
    /// The class of `tokens` tokens.
    pub const fn of(tokens: u64) -> Self {
        match tokens {
            0..=999 => TokenTier::Small,
            1_000..=9_999 => TokenTier::Medium,
            10_000..=99_999 => TokenTier::Large,
            _ => TokenTier::Huge,
        }
    }

    /// The class as written in JSON output.
    pub const fn as_str(self) -> &'static str {
        match self {
            TokenTier::Small => "small",
            TokenTier::Medium => "medium",
            TokenTier::Large => "large",
            TokenTier::Huge => "huge",
        }
    }
}

/// The estimated cost of serving a request on one backend.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CostEstimate {
    /// Input tokens counted.
    pub input_tokens: u32,
    /// The upper bound of the input tokens (at least `input_tokens`): what a budget
    /// reserves for, with `estimated_output_tokens`.
    pub max_input_tokens: u32,
    /// Output tokens expected.
    pub estimated_output_tokens: u32,
    /// Cost in USD at the backend's prices.
    pub cost_usd: f64,
    /// The request's size class.
    pub token_tier: TokenTier,
}

/// Estimates the tokens of a prompt from its text, for callers that do not run a
/// tokenizer: one token per four bytes of UTF-8, rounded up, the usual rule of thumb for
/// English text with BPE tokenizers (it over-counts code and under-counts CJK text).
///
/// ```
/// assert_eq!(nexus_core::pipeline::estimate_tokens("Hello, world!"), 4);
/// assert_eq!(nexus_core::pipeline::estimate_tokens(""), 0);
/// ```
pub fn estimate_tokens(text: &str) -> u32 {
    u32::try_from(text.len().div_ceil(4)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_defaults_to_half_the_input() {
        let r = Request::new("m").input_tokens(1001).requirements();
        assert_eq!(r.estimated_output_tokens, 500);
        let r = Request::new("m").requirements();
        assert_eq!((r.input_tokens, r.estimated_output_tokens), (0, 0));
        let r = Request::new("m")
            .input_tokens(10)
            .max_output_tokens(99)
            .requirements();
        assert_eq!(r.estimated_output_tokens, 99);
    }

    #[test]
    fn the_input_bound_is_never_below_the_input() {
        let r = Request::new("m").input_tokens(100).requirements();
        assert_eq!(r.max_input_tokens, 100);
        let r = Request::new("m")
            .input_tokens(100)
            .max_input_tokens(400)
            .requirements();
        assert_eq!((r.input_tokens, r.max_input_tokens), (100, 400));
        assert_eq!(r.estimated_output_tokens, 50, "estimated from the input");
        let r = Request::new("m")
            .input_tokens(100)
            .max_input_tokens(10)
            .requirements();
        assert_eq!(r.max_input_tokens, 100);
    }

    #[test]
    fn features_display_their_config_names() {
        assert_eq!(
            (Features::VISION | Features::JSON_MODE).to_string(),
            "vision, json_mode"
        );
        assert_eq!(Features::NONE.to_string(), "none");
    }
}
