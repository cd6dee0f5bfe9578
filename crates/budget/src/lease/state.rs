//! The background task's bookkeeping, without I/O: what to send in the next sync, and
//! how an answer changes the [`Allowance`].
//!
//! One identity drives it. For the current month, the lease Redis holds for this
//! replica equals what is left in the allowance, plus the reservations in flight, plus
//! spend settled here and not yet confirmed by Redis. Decisions and settlements keep it
//! (they move amounts between those three), so an answer only has to compare the lease
//! Redis reports with the lease we believed in: the difference (a grant, or a lease
//! that expired while we were cut off) goes to the allowance. That makes every answer
//! self-correcting, including the answer to a retry of a call whose first answer was
//! lost, and the first answer after Redis lost its data.

use std::collections::BTreeMap;

use super::model::{SyncReply, SyncRequest};
use super::Allowance;
use crate::Month;

/// Spend settled here for one month: what we know, and what Redis confirmed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Cumulative {
    total: u64,
    confirmed: u64,
}

/// The lease of the current month as this replica believes Redis holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Current {
    pub(crate) month: Month,
    pub(crate) lease: u64,
    pub(crate) target: u64,
    /// No free budget was left at the last answer: top-ups can only come from
    /// leases other replicas return, so asking often is pointless.
    pub(crate) starved: bool,
}

/// Fixed parameters of a replica's leases, in nano-dollars and milliseconds.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LeaseParams {
    pub(crate) replica: String,
    pub(crate) limit: u64,
    pub(crate) min_lease: u64,
    pub(crate) max_lease: u64,
    pub(crate) ttl_ms: u64,
    pub(crate) renew_below: f64,
}

/// What an answer changed, for logs and status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Applied {
    /// A new month started with this answer.
    pub(crate) new_month: bool,
    /// Lease that Redis no longer held for us (it expired while we were cut off, or
    /// Redis lost its data).
    pub(crate) lost: u64,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct LeaseState {
    pub(crate) params: LeaseParams,
    pub(crate) current: Option<Current>,
    cumulative: BTreeMap<Month, Cumulative>,
    /// Spend settled before the first answer: it belongs to the first month we learn.
    unattributed: u64,
    /// What the call in flight sends.
    sending: Vec<(Month, u64)>,
    /// Redis's clock minus ours, in ms, from the last answer.
    pub(crate) offset_ms: i64,
    /// The last answer, for status.
    pub(crate) last_reply: Option<SyncReply>,
}

impl LeaseState {
    pub(crate) fn new(params: LeaseParams) -> Self {
        Self {
            params,
            current: None,
            cumulative: BTreeMap::new(),
            unattributed: 0,
            sending: Vec::new(),
            offset_ms: 0,
            last_reply: None,
        }
    }

    /// Moves spend settled since the last call from the allowance into the per-month
    /// totals.
    fn collect(&mut self, allowance: &Allowance) {
        for (month, nanos) in allowance.collect() {
            self.add(month, nanos);
        }
    }

    fn add(&mut self, month: Option<Month>, nanos: u64) {
        if nanos == 0 {
            return;
        }
        match month.or(self.current.map(|c| c.month)) {
            Some(month) => {
                let entry = self.cumulative.entry(month).or_default();
                entry.total = entry.total.saturating_add(nanos);
            }
            None => self.unattributed = self.unattributed.saturating_add(nanos),
        }
    }

    /// Whether settled spend waits to be sent.
    pub(crate) fn has_unsent(&mut self, allowance: &Allowance) -> bool {
        self.collect(allowance);
        self.unattributed > 0 || self.cumulative.values().any(|c| c.total > c.confirmed)
    }

    /// Whether the allowance runs low: below `renew_below` of the lease size, or too
    /// small for a request that was refused.
    pub(crate) fn below_low_water(&self, allowance: &Allowance, largest_refused: u64) -> bool {
        let Some(current) = self.current else {
            return true;
        };
        let low = (current.target as f64 * self.params.renew_below) as i64;
        let left = allowance.left();
        left < low
            || (largest_refused > 0 && left < i64::try_from(largest_refused).unwrap_or(i64::MAX))
    }

    /// The next call: gives back what is left above the lease size (everything when
    /// `release`), sends every open month's settled total, asks for a top-up that fits
    /// `need` (the largest request refused recently).
    pub(crate) fn prepare(
        &mut self,
        allowance: &Allowance,
        need: u64,
        release: bool,
        now_override_ms: Option<u64>,
    ) -> SyncRequest<'_> {
        self.collect(allowance);
        if release {
            // No draw from here on: what is given back must stay given back.
            allowance.set_deadline(0);
        }
        let mut returned = 0;
        if let Some(current) = &mut self.current {
            let keep = if release {
                0
            } else if current.target > 0 {
                i64::try_from(current.target).unwrap_or(i64::MAX)
            } else {
                i64::MAX
            };
            returned = allowance.take_above(keep);
            // Believed given back now; if the call fails, the next answer's lease says
            // otherwise and the difference comes back to the allowance.
            current.lease = current.lease.saturating_sub(returned);
        }
        // Every open month's total, confirmed or not: a total Redis already has adds
        // nothing, and one it lost (a restart without persistence, a flush) comes back
        // at the next call, not only when this replica settles something new.
        self.sending = self
            .cumulative
            .iter()
            .filter(|(_, c)| c.total > 0)
            .map(|(m, c)| (*m, c.total))
            .collect();
        let params = &self.params;
        SyncRequest {
            replica: &params.replica,
            limit: params.limit,
            lease_month: self.current.map(|c| c.month),
            unspent: allowance.left(),
            returned,
            min_lease: params.min_lease,
            max_lease: params.max_lease,
            need,
            ttl_ms: if release { 0 } else { params.ttl_ms },
            now_ms: now_override_ms,
            settlements: self.sending.clone(),
        }
    }

    /// Applies an answer to the call `prepare` built, sent at `sent_ms` and answered at
    /// `received_ms` (our clock). `now_secs` is the current second: decisions from the
    /// next one on draw from a new month's lease.
    pub(crate) fn apply(
        &mut self,
        allowance: &Allowance,
        reply: SyncReply,
        sent_ms: u64,
        received_ms: u64,
        release: bool,
    ) -> Applied {
        let midpoint = (sent_ms + received_ms) / 2;
        self.offset_ms = i64::try_from(reply.now_ms).unwrap_or(i64::MAX)
            - i64::try_from(midpoint).unwrap_or(i64::MAX);
        self.last_reply = Some(reply);
        // Confirmed settlements of the answer's month: they left the lease in Redis.
        let mut confirmed_now = 0u64;
        for (month, total) in std::mem::take(&mut self.sending) {
            let entry = self.cumulative.entry(month).or_default();
            if total > entry.confirmed {
                if month == reply.month {
                    confirmed_now += total - entry.confirmed;
                }
                entry.confirmed = total;
            }
        }
        let mut applied = Applied::default();
        let starved = reply.settled.saturating_add(reply.leased) >= self.params.limit;
        match &mut self.current {
            Some(current) if current.month == reply.month => {
                let expected = current.lease.saturating_sub(confirmed_now) + reply.granted;
                applied.lost = expected.saturating_sub(reply.lease);
                let delta =
                    i128::from(reply.lease) - i128::from(current.lease) + i128::from(confirmed_now);
                allowance.adjust(i64::try_from(delta).unwrap_or(0));
                current.lease = reply.lease;
                current.target = reply.target;
                current.starved = starved;
            }
            _ => {
                let first = self.current.is_none();
                // Decisions of this second may have drawn from the old lease: the new
                // one serves from the next second on (from now, on the first answer).
                let start_secs = if first { 0 } else { received_ms / 1000 + 1 };
                let initial = i128::from(reply.lease) + i128::from(confirmed_now);
                let (stale_month, stale) = allowance.start_month(
                    reply.month,
                    start_secs,
                    i64::try_from(initial).unwrap_or(i64::MAX),
                );
                self.current = Some(Current {
                    month: reply.month,
                    lease: reply.lease,
                    target: reply.target,
                    starved,
                });
                self.add(stale_month, stale);
                let unattributed = std::mem::take(&mut self.unattributed);
                self.add(Some(reply.month), unattributed);
                applied.new_month = true;
            }
        }
        // Months before the previous one are closed: forget them once confirmed.
        let previous = Month::from_key(reply.month.key().saturating_sub(1));
        self.cumulative
            .retain(|m, c| *m >= previous || c.total > c.confirmed);
        if release {
            allowance.set_deadline(0);
        } else {
            allowance.set_deadline(self.deadline_secs(reply, sent_ms));
        }
        allowance.set_month_end(self.month_end_ms(reply.month) / 1000);
        applied
    }

    /// Under `fail_open`, after a call failed: once the current month has ended by
    /// Redis's clock (as of the last answer), starts the next month here with an empty
    /// lease, so that what is spent meanwhile on local accounting counts in the month it
    /// was spent in (a debt against that month's lease, paid by its first answer), not
    /// in the month that ended. Decisions from the next second on draw from it. Returns
    /// the month started, if any.
    pub(crate) fn start_month_locally(
        &mut self,
        allowance: &Allowance,
        now_ms: u64,
    ) -> Option<Month> {
        let current = self.current?;
        let server_now_ms = i128::from(now_ms) + i128::from(self.offset_ms);
        let server_secs = u64::try_from(server_now_ms.max(0) / 1000).unwrap_or(u64::MAX);
        let month = Month::from_unix_secs(server_secs);
        if month <= current.month {
            return None;
        }
        let (stale_month, stale) = allowance.start_month(month, now_ms / 1000 + 1, 0);
        allowance.set_month_end(self.month_end_ms(month) / 1000);
        self.current = Some(Current {
            month,
            lease: 0,
            target: 0,
            starved: false,
        });
        self.add(stale_month, stale);
        Some(month)
    }

    /// The end of `month` by Redis's clock, in our milliseconds.
    fn month_end_ms(&self, month: Month) -> u64 {
        let month_end_redis = month.next().start_unix_secs() * 1000;
        let month_end = i128::from(month_end_redis) - i128::from(self.offset_ms);
        u64::try_from(month_end.max(0)).unwrap_or(u64::MAX)
    }

    /// Draws stop half a lease lifetime after the call was sent (so a request drawn at
    /// the last moment has the other half to finish before Redis could hand its lease
    /// to someone else), and at the end of the month by Redis's clock.
    fn deadline_secs(&self, reply: SyncReply, sent_ms: u64) -> u64 {
        let lease_end = sent_ms + self.params.ttl_ms / 2;
        lease_end.min(self.month_end_ms(reply.month)) / 1000
    }

    /// The month's spend settled here that Redis has not confirmed yet.
    pub(crate) fn unconfirmed(&self) -> u64 {
        self.unattributed
            + self
                .cumulative
                .values()
                .map(|c| c.total - c.confirmed)
                .sum::<u64>()
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
