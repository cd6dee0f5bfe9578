//! Amounts of money: USD as configured, integer nano-dollars as counted, and the range
//! of limits the ledger enforces exactly.
//!
//! The ledger counts in `i64` nano-dollars so that a reservation is one compare-and-swap.
//! That word holds about $9.2 billion; limits are kept well inside it, and prices are
//! bounded where the fleet is built ([`MAX_USD_PER_MTOK`](nexus_core::fleet::MAX_USD_PER_MTOK))
//! so that no single request's cost leaves it either. Whatever still passes the range
//! saturates in the [`SpendLedger`](crate::SpendLedger): it never wraps.

/// Nano-dollars in one USD.
pub const NANOS_PER_USD: f64 = 1e9;

/// The smallest monthly limit, one micro-dollar: a thousand nano-dollars, so that
/// rounding to the nano-dollar moves it by at most 0.05 %.
pub const MIN_LIMIT_USD: f64 = 1e-6;

/// The largest monthly limit, one billion USD (10^18 nano-dollars): the ledger's word
/// holds it and the dearest request on top of it, and every amount up to it converts to
/// nano-dollars and back without losing a cent.
pub const MAX_LIMIT_USD: f64 = 1e9;

/// USD to nano-dollars, rounded to the nearest (negative and NaN amounts count as 0,
/// amounts past `u64::MAX` nano-dollars as `u64::MAX`).
pub fn usd_to_nanos(usd: f64) -> u64 {
    if usd.is_nan() || usd <= 0.0 {
        0
    } else {
        // `as` saturates: 1e300 USD is u64::MAX nano-dollars, not a wrap.
        (usd * NANOS_PER_USD).round() as u64
    }
}

/// Nano-dollars to USD.
pub fn nanos_to_usd(nanos: u64) -> f64 {
    nanos as f64 / NANOS_PER_USD
}

/// Checks that `usd`, the value of config key `key`, is a limit the ledger can enforce:
/// between [`MIN_LIMIT_USD`] and [`MAX_LIMIT_USD`]. The error names the key (in
/// backquotes, so that the config loader points at its line) and the range.
///
/// ```
/// use nexus_budget::check_limit_usd;
/// assert!(check_limit_usd("monthly_limit_usd", 1000.0).is_ok());
/// let error = check_limit_usd("monthly_limit_usd", 2e10).unwrap_err();
/// assert!(error.starts_with("monthly_limit_usd must be between $0.000001 and $1000000000"));
/// ```
pub fn check_limit_usd(key: &str, usd: f64) -> Result<(), String> {
    if (MIN_LIMIT_USD..=MAX_LIMIT_USD).contains(&usd) {
        return Ok(());
    }
    let hint = if usd > MAX_LIMIT_USD {
        "; a larger limit cannot be counted to the nano-dollar: leave the budget stage out of the pipeline for no limit at all"
    } else if usd > 0.0 {
        "; a smaller limit rounds to nothing in nano-dollars"
    } else {
        ""
    };
    Err(format!(
        "{key} must be between ${MIN_LIMIT_USD} and ${MAX_LIMIT_USD}, the limits the budget enforces exactly, got {}{hint}",
        Readable(usd)
    ))
}

/// An amount as a person wrote it: plain digits, or an exponent when plain digits would
/// run to dozens (1e300 has 301).
struct Readable(f64);

impl std::fmt::Display for Readable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let magnitude = self.0.abs();
        if magnitude.is_finite() && magnitude != 0.0 && !(1e-9..1e15).contains(&magnitude) {
            write!(f, "{:e}", self.0)
        } else {
            write!(f, "{}", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_outside_the_enforced_range_are_refused_with_the_key() {
        for usd in [MIN_LIMIT_USD, 0.01, 1000.0, MAX_LIMIT_USD] {
            assert_eq!(check_limit_usd("monthly_limit_usd", usd), Ok(()), "{usd}");
        }
        for usd in [
            2e10,
            1e300,
            f64::INFINITY,
            1e-12,
            0.0,
            -5.0,
            f64::NAN,
            f64::NEG_INFINITY,
        ] {
            let error = check_limit_usd("monthly_limit_usd", usd).unwrap_err();
            assert!(
                error.starts_with(
                    "monthly_limit_usd must be between $0.000001 and $1000000000, the limits the budget enforces exactly, got "
                ),
                "{error}"
            );
        }
        assert!(check_limit_usd("monthly_limit_usd", 1e-12)
            .unwrap_err()
            .ends_with("got 1e-12; a smaller limit rounds to nothing in nano-dollars"));
        assert!(check_limit_usd("monthly_limit_usd", 1e300)
            .unwrap_err()
            .contains("got 1e300; a larger limit"));
        assert!(check_limit_usd("monthly_limit_usd", 2e10)
            .unwrap_err()
            .contains("got 20000000000; a larger limit"));
    }

    #[test]
    fn every_limit_in_range_converts_to_nanos_and_back_to_the_cent() {
        for usd in [
            MIN_LIMIT_USD,
            0.1,
            123_456.78,
            999_999_999.99,
            MAX_LIMIT_USD,
        ] {
            let back = nanos_to_usd(usd_to_nanos(usd));
            assert!((back - usd).abs() < 0.005, "{usd} -> {back}");
        }
        assert_eq!(usd_to_nanos(MIN_LIMIT_USD), 1_000);
        assert_eq!(usd_to_nanos(MAX_LIMIT_USD), 1_000_000_000_000_000_000);
        assert!(usd_to_nanos(MAX_LIMIT_USD) < i64::MAX as u64);
    }

    #[test]
    fn conversions_saturate_instead_of_wrapping() {
        assert_eq!(usd_to_nanos(1e300), u64::MAX);
        assert_eq!(usd_to_nanos(f64::INFINITY), u64::MAX);
        assert_eq!(usd_to_nanos(f64::NAN), 0);
        assert_eq!(usd_to_nanos(-1.0), 0);
    }
}
