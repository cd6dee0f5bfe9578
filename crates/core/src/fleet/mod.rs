//! The [`Fleet`]: every backend, the models each one serves, and their live state.
//!
//! A fleet is built once from [`BackendSpec`]s (what the config file says) and is then
//! read-only apart from each backend's [`LiveState`], which is a handful of atomics so
//! that decisions read it without locks while route guards update it. The model index
//! (model name -> [`BackendSet`] of its servers, plus each server's [`Offering`]) is
//! computed here so that a decision starts from a precomputed bitset.
//!
//! Three parts: the config schema ([`BackendSpec`], [`ModelSpec`], [`FleetError`]), the
//! live state ([`LiveState`], [`BackendStatus`]) and the model index ([`Fleet`],
//! [`Backend`], [`ModelEntry`], [`Offering`]). Backends and models are named by dense
//! indices ([`BackendId`], [`ModelId`]) and candidate sets are bitsets ([`BackendSet`]).

mod index;
mod live;
mod spec;

pub use index::{Backend, Fleet, ModelEntry, OfferSummary, Offering};
pub use live::{BackendStatus, LiveState, LATENCY_MEMORY_SECS};
pub use spec::{BackendKind, BackendSpec, FleetError, ModelSpec, Zone, MAX_USD_PER_MTOK};

pub use crate::id::{BackendId, ModelId};
pub use crate::set::{BackendSet, Iter as BackendSetIter};

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{BackendId, Features};

    fn spec(id: &str) -> BackendSpec {
        BackendSpec::new(id, "http://127.0.0.1:1").with_model(ModelSpec::new("m"))
    }

    #[test]
    fn duplicate_ids_name_both_positions() {
        let err = Fleet::new(vec![spec("a"), spec("b"), spec("a")]).unwrap_err();
        assert_eq!(
            err,
            FleetError::DuplicateId {
                id: "a".into(),
                first: 0,
                index: 2
            }
        );
        assert_eq!(err.backend_index(), Some(2));
    }

    #[test]
    fn tier_resolves_model_then_backend_then_zero() {
        let fleet = Fleet::new(vec![
            BackendSpec::new("a", "u")
                .with_tier(2)
                .with_model(ModelSpec::new("x"))
                .with_model(ModelSpec::new("y").with_tier(4)),
            BackendSpec::new("b", "u").with_model(ModelSpec::new("x")),
        ])
        .unwrap();
        let x = fleet.model(fleet.model_id("x").unwrap());
        let y = fleet.model(fleet.model_id("y").unwrap());
        assert_eq!(x.offer(BackendId::new(0)).unwrap().tier, 2);
        assert_eq!(x.offer(BackendId::new(1)).unwrap().tier, 0);
        assert_eq!(y.offer(BackendId::new(0)).unwrap().tier, 4);
        assert!(y.offer(BackendId::new(1)).is_none());
    }

    #[test]
    fn bad_values_are_rejected_with_the_backend() {
        let zero = Fleet::new(vec![spec("a").with_priority(0)]).unwrap_err();
        assert!(matches!(zero, FleetError::ZeroPriority { index: 0, .. }));
        let twice = Fleet::new(vec![spec("a").with_model(ModelSpec::new("m"))]).unwrap_err();
        assert!(twice.to_string().contains("listed twice"), "{twice}");
        let negative = Fleet::new(vec![
            BackendSpec::new("a", "u").with_model(ModelSpec::new("m").with_prices(-1.0, 0.0))
        ])
        .unwrap_err();
        assert_eq!(
            negative.to_string(),
            "backend 'a': model 'm' has input_usd_per_mtok = -1; a price is USD per million tokens, from 0 (local servers) to 1000000 (a dollar a token)"
        );
        for price in [1e12, f64::INFINITY, f64::NAN] {
            let error =
                Fleet::new(vec![BackendSpec::new("a", "u")
                    .with_model(ModelSpec::new("m").with_prices(0.0, price))])
                .unwrap_err();
            assert!(
                matches!(
                    error,
                    FleetError::InvalidPrice {
                        key: "output_usd_per_mtok",
                        model_index: 0,
                        ..
                    }
                ),
                "{error}"
            );
        }
        // The dearest allowed price keeps the dearest request finite and inside an
        // i64 of nano-dollars.
        let offer = Offering {
            tier: 0,
            context_window: None,
            features: Features::NONE,
            input_usd_per_mtok: MAX_USD_PER_MTOK,
            output_usd_per_mtok: MAX_USD_PER_MTOK,
        };
        let dearest = offer.cost_usd(u32::MAX, u32::MAX) * 1e9;
        assert!(
            dearest.is_finite() && dearest < i64::MAX as f64,
            "{dearest}"
        );
    }

    #[test]
    fn latency_ewma_starts_at_first_sample_then_smooths() {
        let live = LiveState::new(BackendStatus::Healthy);
        assert_eq!(live.latency_ewma_ms(1_000), None);
        live.record_latency(Duration::from_millis(100), 1_000);
        assert_eq!(live.latency_ewma_ms(1_000), Some(100.0));
        live.record_latency(Duration::from_millis(200), 1_001);
        assert!((live.latency_ewma_ms(1_001).unwrap() - 120.0).abs() < 1e-9);
        // Old news is forgotten, and the next sample starts afresh.
        assert_eq!(live.latency_ewma_ms(1_001 + LATENCY_MEMORY_SECS + 1), None);
        live.record_latency(Duration::from_millis(500), 1_100);
        assert_eq!(live.latency_ewma_ms(1_100), Some(500.0));
    }

    #[test]
    fn an_absurd_latency_counts_as_the_cap() {
        let live = LiveState::new(BackendStatus::Healthy);
        live.record_latency(Duration::from_secs(u64::MAX), 1_000);
        assert_eq!(live.latency_ewma_ms(1_000), Some(3_600_000.0));
        live.record_latency(Duration::MAX, 1_001);
        assert_eq!(live.latency_ewma_ms(1_001), Some(3_600_000.0));
    }

    #[test]
    fn in_flight_never_wraps() {
        let live = LiveState::new(BackendStatus::Healthy);
        live.end_request();
        assert_eq!(live.in_flight(), 0);
        live.begin_request();
        assert_eq!(live.in_flight(), 1);
    }
}
