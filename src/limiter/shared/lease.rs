//! A replica's lease on part of a tenant's shared budget: tokens of its
//! bucket and, when a quota is charged, units of its counter (one number for
//! both, as every call takes as many of each). Calls are admitted from it in
//! process; Redis is asked only to renew it, in the background before it
//! runs out, or per call when the budget is nearly spent.
use std::time::{Duration, Instant};

use crate::{
    domain::{
        ids::TenantId,
        plan::RateLimit,
        verify::{BucketId, BucketOutcome, bucket_outcome},
    },
    limiter::{Decision, UsageKey},
};

/// How long a grant may be used. Short, so a dead replica's tokens are soon
/// back in the bucket and a live one settles at least this often.
pub const LIFETIME: Duration = Duration::from_secs(2);
/// A lease asks for this much of its recent demand.
const DEMAND: Duration = Duration::from_millis(250);
/// Calls a lease must expect in its lifetime before it holds any ahead:
/// fewer, and what it held would often expire unused and be handed back
/// (a round trip to Redis for nothing).
const AHEAD_FROM: f64 = 4.0;
/// Units a second from which a lease is renewed before it runs out.
const BUSY: f64 = 10.0;
/// The most one lease may hold.
pub const MAX_GRANT: i64 = 1_000_000;
/// How often a lease pushes its hash's expiry (a day) back.
const PUSH_EXPIRY_EVERY: Duration = Duration::from_secs(3600);
/// How long a spent quota is answered from memory before Redis is asked
/// again (another replica may have handed units back).
const SPENT_FOR: Duration = Duration::from_millis(250);

/// The limits a lease was granted under: a change of plan, override or
/// period makes a new lease, so the next call is decided under the new rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseKey {
    pub tenant_id: TenantId,
    pub bucket: BucketId,
    pub rate: RateLimit,
    /// The counter charged and its hard cap.
    pub quota: Option<(UsageKey, Option<i64>)>,
}

/// A `LeaseKey` borrowed from the call at hand, so that finding a lease
/// clones nothing. Its fields are `LeaseKey`'s, in the same order and
/// hashing alike (`&T` as `T`).
#[derive(Hash)]
pub struct LeaseKeyRef<'a> {
    pub tenant_id: TenantId,
    pub bucket: BucketId,
    pub rate: RateLimit,
    pub quota: Option<(&'a UsageKey, Option<i64>)>,
}

impl hashbrown::Equivalent<LeaseKey> for LeaseKeyRef<'_> {
    fn equivalent(&self, key: &LeaseKey) -> bool {
        self.tenant_id == key.tenant_id
            && self.bucket == key.bucket
            && self.rate == key.rate
            && self.quota == key.quota.as_ref().map(|(k, cap)| (k, *cap))
    }
}

impl LeaseKeyRef<'_> {
    pub fn to_owned(&self) -> LeaseKey {
        LeaseKey {
            tenant_id: self.tenant_id,
            bucket: self.bucket,
            rate: self.rate,
            quota: self.quota.map(|(k, cap)| (k.clone(), cap)),
        }
    }
}

/// Whether Redis holds this lease's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// None yet, or one whose creating call has no answer.
    New,
    Known,
}

#[derive(Debug)]
pub struct Lease {
    /// This replica's number for it, unique for the process.
    pub no: i64,
    /// Granted and not yet used.
    pub held: i64,
    /// Expired, to hand back at the next call.
    pub give_back: i64,
    /// `held` may be used until then.
    pub expires: Instant,
    pub record: Record,
    /// A call since the last answer may have been applied with its answer
    /// lost.
    pub doubt: bool,
    /// When a call last pushed the hash's expiry back.
    pub expiry_pushed: Option<Instant>,
    pub renewing: bool,
    /// Settled or lost: calls look it up again.
    pub closed: bool,
    /// The counter after the last grant (all replicas' grants included).
    pub used_seen: i64,
    /// The bucket's tokens left in Redis after the last call, and when.
    pub bucket_seen: (f64, Instant),
    /// Calls needing at least this many are denied from memory until
    /// then, with this decision.
    pub denied: Option<(Decision, i64, Instant)>,
    /// Units served from it (for the database), those taken into a flush,
    /// and those the database holds.
    pub served: i64,
    pub collected: i64,
    pub durable: i64,
    /// `durable` when Redis last answered: units durable by then are in any
    /// total Redis may be restored from later.
    pub durable_at_answer: i64,
    /// Demand: units taken since the last renewal, and when it was sent.
    pub taken: i64,
    pub since: Instant,
    /// Units a second, smoothed.
    pub rate: f64,
    pub last_used: Instant,
}

/// What a call found in its lease.
pub enum Take {
    Admitted {
        renew: bool,
    },
    Denied(Decision),
    /// Nothing usable: ask Redis.
    Empty,
    Closed,
}

impl Lease {
    pub fn new(no: i64, now: Instant) -> Self {
        Self {
            no,
            held: 0,
            give_back: 0,
            expires: now,
            record: Record::New,
            doubt: false,
            expiry_pushed: None,
            renewing: false,
            closed: false,
            used_seen: 0,
            bucket_seen: (0.0, now),
            denied: None,
            served: 0,
            collected: 0,
            durable: 0,
            durable_at_answer: 0,
            taken: 0,
            since: now,
            rate: 0.0,
            last_used: now,
        }
    }

    /// Takes `units` (a 0-unit call needs 1 held but takes nothing).
    pub fn take(&mut self, units: i64, counted: bool, now: Instant) -> Take {
        if self.closed {
            return Take::Closed;
        }
        let need = units.max(1);
        if self.held >= need && now < self.expires {
            self.held -= units;
            self.taken += units;
            if counted {
                self.served += units;
            }
            self.last_used = now;
            // Renewed ahead only when busy: a lease that would sit unused
            // costs a grant now and a settlement later.
            let want = self.want(now);
            let renew = !self.renewing
                && self.busy(now)
                && (self.held < ((want + 1) / 2).max(1)
                    || self.expires.saturating_duration_since(now) < LIFETIME / 4);
            return Take::Admitted { renew };
        }
        if let Some((decision, at_least, until)) = self.denied
            && need >= at_least
            && now < until
        {
            return Take::Denied(decision);
        }
        Take::Empty
    }

    /// Units to ask for beyond the call at hand: `DEMAND` of the recent
    /// rate, rounded up, so that a tenant with a few calls a second holds
    /// its next call's unit and asks Redis every other call, not every
    /// call; none for a tenant too slow to use it in the lease's lifetime.
    pub fn want(&self, now: Instant) -> i64 {
        let rate = self.rate_at(now);
        if rate * LIFETIME.as_secs_f64() < AHEAD_FROM {
            return 0;
        }
        ((rate * DEMAND.as_secs_f64()).ceil() as i64).clamp(0, MAX_GRANT)
    }

    /// At least `BUSY` calls a second lately.
    fn busy(&self, now: Instant) -> bool {
        self.rate_at(now) >= BUSY
    }

    /// The demand, smoothed over renewals; a window under a tenth of a
    /// second only ever raises it (its own rate is noise).
    fn rate_at(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.since).as_secs_f64();
        let current = self.taken as f64 / elapsed.max(0.02);
        if elapsed >= 0.1 {
            (self.rate + current) / 2.0
        } else {
            self.rate.max(current)
        }
    }

    /// A renewal is sent: the demand window restarts.
    pub fn renewal_sent(&mut self, now: Instant) {
        self.rate = self.rate_at(now);
        self.taken = 0;
        self.since = now;
    }

    /// Remembers a denial from Redis.
    pub fn deny(&mut self, decision: Decision, rate: RateLimit, need: i64, now: Instant) {
        let until = match decision {
            Decision::RateLimited => {
                let missing = (need as f64 - self.bucket_seen.0).max(0.0);
                let per_second = rate.requests_per_minute as f64 / 60.0;
                now + Duration::from_secs_f64((missing / per_second).min(60.0))
            }
            _ => now + SPENT_FOR,
        };
        self.denied = Some((decision, need, until));
    }

    /// Units used in the period as far as this replica knows.
    pub fn used(&self) -> i64 {
        self.used_seen - self.held
    }

    /// The bucket as callers see it: what Redis had, refilled since, and
    /// what this lease holds.
    pub fn bucket(
        &self,
        rate: RateLimit,
        units: i64,
        allowed: bool,
        now: Instant,
    ) -> BucketOutcome {
        let per_second = rate.requests_per_minute as f64 / 60.0;
        let (tokens, at) = self.bucket_seen;
        let refilled = (tokens + now.saturating_duration_since(at).as_secs_f64() * per_second)
            .min(rate.burst as f64);
        let tokens = (refilled + self.held as f64).min(rate.burst as f64);
        bucket_outcome(rate, units, tokens, allowed)
    }

    /// Whether the next call should push the hash's expiry back.
    pub fn expiry_due(&self, now: Instant) -> bool {
        self.expiry_pushed
            .is_none_or(|at| now.saturating_duration_since(at) >= PUSH_EXPIRY_EVERY)
    }

    /// Idle long enough to hand back.
    pub fn idle(&self, now: Instant) -> bool {
        !self.renewing
            && (now >= self.expires
                || now.saturating_duration_since(self.last_used) >= LIFETIME / 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_borrowed_key_finds_its_lease_and_no_other() {
        use crate::domain::{now, plan::Resource, verify::Period};
        let usage = UsageKey {
            tenant_id: TenantId::generate(),
            resource: Resource::parse("resource", "calls").unwrap(),
            period: Period {
                start: now(),
                end: now() + time::Duration::days(30),
            },
        };
        let rate = RateLimit {
            requests_per_minute: 600,
            burst: 20,
        };
        let keys =
            [None, Some((&usage, None)), Some((&usage, Some(100)))].map(|quota| LeaseKeyRef {
                tenant_id: usage.tenant_id,
                bucket: BucketId::Tenant(usage.tenant_id),
                rate,
                quota,
            });
        let mut leases = hashbrown::HashMap::new();
        for (i, key) in keys.iter().enumerate() {
            leases.insert(key.to_owned(), i);
        }
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(leases.get(key), Some(&i));
        }
        let other = LeaseKeyRef {
            bucket: BucketId::Key(crate::domain::ids::KeyId::generate()),
            ..keys[0]
        };
        assert_eq!(leases.get(&other), None);
    }

    #[test]
    fn a_lease_admits_what_it_holds_and_asks_for_more_before_running_out() {
        let now = Instant::now();
        let mut l = Lease::new(1, now);
        assert!(matches!(l.take(1, true, now), Take::Empty));
        l.held = 10;
        l.expires = now + LIFETIME;
        for _ in 0..10 {
            assert!(matches!(l.take(1, true, now), Take::Admitted { .. }));
        }
        assert!(matches!(l.take(1, true, now), Take::Empty));
        assert_eq!((l.served, l.held), (10, 0));
    }

    #[test]
    fn an_expired_lease_admits_nothing() {
        let now = Instant::now();
        let mut l = Lease::new(1, now);
        l.held = 10;
        l.expires = now + LIFETIME;
        assert!(matches!(l.take(1, true, now + LIFETIME), Take::Empty));
    }

    #[test]
    fn demand_sizes_the_next_grant() {
        let now = Instant::now();
        let mut l = Lease::new(1, now);
        l.taken = 1000;
        // 1,000 units in half a second, smoothed with no rate before: 1,000
        // a second, 250 in 250 ms.
        assert_eq!(l.want(now + Duration::from_millis(500)), 250);
        assert!(l.busy(now + Duration::from_millis(500)));
        l.renewal_sent(now + Duration::from_millis(500));
        assert_eq!(l.rate, 1000.0);
    }

    #[test]
    fn a_slow_tenant_holds_nothing_ahead_and_a_few_calls_a_second_hold_one() {
        let now = Instant::now();
        let mut l = Lease::new(1, now);
        // One call a second, steadily: two in its lifetime, too few.
        (l.rate, l.taken) = (1.0, 2);
        assert_eq!(l.want(now + Duration::from_secs(2)), 0);
        // Three a second: six in its lifetime; 0.75 in 250 ms, rounded up.
        let mut l = Lease::new(1, now);
        (l.rate, l.taken) = (3.0, 6);
        assert_eq!(l.want(now + Duration::from_secs(2)), 1);
    }

    #[test]
    fn a_rate_limited_lease_waits_for_the_bucket_to_refill() {
        let now = Instant::now();
        let mut l = Lease::new(1, now);
        l.bucket_seen = (0.5, now);
        let rate = RateLimit {
            requests_per_minute: 60,
            burst: 1,
        };
        l.deny(Decision::RateLimited, rate, 1, now);
        assert!(matches!(
            l.take(1, true, now + Duration::from_millis(400)),
            Take::Denied(Decision::RateLimited)
        ));
        assert!(matches!(
            l.take(1, true, now + Duration::from_millis(600)),
            Take::Empty
        ));
    }
}
