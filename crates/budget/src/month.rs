//! [`Month`]: a UTC calendar month, the period a budget covers.

use std::fmt;

/// A calendar month in UTC, e.g. 2026-11.
///
/// ```
/// use nexus_budget::Month;
/// // 2026-11-22T00:34:30Z
/// let month = Month::from_unix_secs(1_795_307_670);
/// assert_eq!(month.to_string(), "2026-11");
/// assert_eq!(month.next().to_string(), "2026-12");
/// assert_eq!(Month::new(2026, 12).unwrap().next().to_string(), "2027-01");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month(u32);

impl Month {
    /// The month `month` (1-12) of `year`; `None` for another month number or a year
    /// past the keys' range (about 357 million).
    pub const fn new(year: u32, month: u32) -> Option<Self> {
        if month == 0 || month > 12 {
            return None;
        }
        match year.checked_mul(12) {
            Some(months) if months <= u32::MAX - 11 => Some(Self(months + month - 1)),
            _ => None,
        }
    }

    /// The month containing `secs` seconds after the Unix epoch (the last month keys
    /// can hold, for seconds hundreds of millions of years away).
    pub const fn from_unix_secs(secs: u64) -> Self {
        let (year, month) = civil_from_days((secs / 86_400) as i64);
        let key = year as u64 * 12 + month as u64 - 1;
        Self(if key > u32::MAX as u64 {
            u32::MAX
        } else {
            key as u32
        })
    }

    /// The year.
    pub const fn year(self) -> u32 {
        self.0 / 12
    }

    /// The month of the year, 1-12.
    pub const fn month(self) -> u32 {
        self.0 % 12 + 1
    }

    /// The month after (the last month keys can hold is its own successor).
    pub const fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }

    /// A compact key for storage: `year * 12 + month - 1`.
    pub const fn key(self) -> u32 {
        self.0
    }

    /// The month of a storage key.
    pub const fn from_key(key: u32) -> Self {
        Self(key)
    }

    /// Seconds after the Unix epoch at the start of the month.
    pub const fn start_unix_secs(self) -> u64 {
        days_from_civil(self.year() as i64, self.month()) as u64 * 86_400
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year(), self.month())
    }
}

/// Year and month of a day count since 1970-01-01 (Howard Hinnant's algorithm).
const fn civil_from_days(days: i64) -> (i64, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    (year, month)
}

/// Days since 1970-01-01 of the first day of `month` in `year`.
const fn days_from_civil(year: i64, month: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_boundaries_are_exact() {
        let december = Month::new(2025, 12).unwrap();
        let start = december.start_unix_secs();
        assert_eq!(start, 1_764_547_200); // 2025-12-01T00:00:00Z
        assert_eq!(Month::from_unix_secs(start), december);
        assert_eq!(
            Month::from_unix_secs(start - 1),
            Month::new(2025, 11).unwrap()
        );
        let january = december.next();
        assert_eq!(january, Month::new(2026, 1).unwrap());
        assert_eq!(Month::from_unix_secs(january.start_unix_secs()), january);
        assert_eq!(
            Month::from_unix_secs(january.start_unix_secs() - 1),
            december
        );
    }

    #[test]
    fn leap_februaries() {
        let feb = Month::new(2028, 2).unwrap();
        let days = (feb.next().start_unix_secs() - feb.start_unix_secs()) / 86_400;
        assert_eq!(days, 29);
        let feb = Month::new(2100, 2).unwrap();
        assert_eq!(
            (feb.next().start_unix_secs() - feb.start_unix_secs()) / 86_400,
            28
        );
    }

    #[test]
    fn the_ends_of_time_saturate_instead_of_overflowing() {
        let last = Month::from_unix_secs(u64::MAX);
        assert_eq!(last.key(), u32::MAX);
        assert_eq!(last.next(), last);
        assert!(last.start_unix_secs() > 0);
        assert_eq!(Month::new(u32::MAX, 1), None);
        // The last second a clock of u64 nanoseconds can show.
        let end_of_clock = u64::MAX / 1_000_000_000;
        assert_eq!(Month::from_unix_secs(end_of_clock).to_string(), "2554-07");
    }

    #[test]
    fn every_month_for_decades_round_trips() {
        let mut month = Month::new(1970, 1).unwrap();
        for _ in 0..12 * 200 {
            let start = month.start_unix_secs();
            assert_eq!(Month::from_unix_secs(start), month);
            assert_eq!(
                Month::from_unix_secs(month.next().start_unix_secs() - 1),
                month
            );
            month = month.next();
        }
    }
}
