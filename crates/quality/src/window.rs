//! Sliding windows of outcome counts in time buckets, updated with atomics.
//!
//! Each bucket is one `AtomicU64` that packs the bucket's period number (24 bits) with
//! its count (40 bits). Adding to a bucket is one compare-and-swap loop: if the bucket
//! still holds an older period it is restarted at the new one in the same step, so no
//! update is ever lost to a reset and no lock is needed. Reading a window sums the
//! buckets whose period lies inside it.

use std::sync::atomic::{AtomicU64, Ordering};

const PERIOD_BITS: u32 = 24;
const COUNT_BITS: u32 = 64 - PERIOD_BITS;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const PERIOD_MASK: u64 = (1 << PERIOD_BITS) - 1;

/// A ring of `N` buckets, each `SPAN` seconds long: a window of `N × SPAN` seconds.
/// The span is a constant so that finding a bucket is a multiplication, not a division.
#[derive(Debug)]
pub(crate) struct Window<const N: usize, const SPAN: u64> {
    buckets: [AtomicU64; N],
}

impl<const N: usize, const SPAN: u64> Window<N, SPAN> {
    pub(crate) fn new() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    #[inline]
    fn period(&self, now_secs: u64) -> u64 {
        now_secs / SPAN
    }

    /// Adds `amount` to the bucket of `now_secs`.
    pub(crate) fn add(&self, now_secs: u64, amount: u64) {
        let period = self.period(now_secs);
        let tag = period & PERIOD_MASK;
        let bucket = &self.buckets[(period % N as u64) as usize];
        let _ = bucket.fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
            let count = if word >> COUNT_BITS == tag {
                (word & COUNT_MASK).saturating_add(amount).min(COUNT_MASK)
            } else {
                amount.min(COUNT_MASK)
            };
            Some(tag << COUNT_BITS | count)
        });
    }

    /// The sum over the window ending at `now_secs` (its current bucket included).
    pub(crate) fn sum(&self, now_secs: u64) -> u64 {
        self.sum_recent(now_secs, N)
    }

    /// The sum over the last `buckets` buckets (at most `N`) ending at `now_secs`.
    pub(crate) fn sum_recent(&self, now_secs: u64, buckets: usize) -> u64 {
        let current = self.period(now_secs);
        let oldest = current.saturating_sub(buckets.clamp(1, N) as u64 - 1);
        (oldest..=current)
            .map(|period| {
                let word = self.buckets[(period % N as u64) as usize].load(Ordering::Acquire);
                if word >> COUNT_BITS == period & PERIOD_MASK {
                    word & COUNT_MASK
                } else {
                    0
                }
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_the_window_and_forgets_after() {
        let window: Window<60, 60> = Window::new();
        let t0 = 1_800_000_000; // a whole minute
        window.add(t0, 3);
        window.add(t0 + 59, 2);
        window.add(t0 + 60, 1);
        assert_eq!(window.sum(t0 + 60), 6);
        // 59 minutes later the first minute is still inside; at 60 it is out.
        assert_eq!(window.sum(t0 + 59 * 60), 6);
        assert_eq!(window.sum(t0 + 60 * 60), 1);
        assert_eq!(window.sum(t0 + 61 * 60), 0);
    }

    #[test]
    fn a_reused_bucket_restarts_instead_of_adding_to_stale_counts() {
        let window: Window<4, 1> = Window::new();
        window.add(100, 7);
        window.add(104, 1); // same slot, four periods later
        assert_eq!(window.sum(104), 1);
    }

    #[test]
    fn concurrent_adds_are_never_lost() {
        let window = std::sync::Arc::new(Window::<60, 60>::new());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let window = window.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        window.add(1_000_000 + i % 120, 1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(window.sum(1_000_000 + 119), 80_000);
    }
}
