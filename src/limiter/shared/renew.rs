//! Renewing a lease: one script call that settles what the lease handed
//! back, adds units Redis may not count, and grants more; a counter Redis
//! lost is restored from the database, and a lease whose record Redis lost
//! is replaced.
use std::{
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use super::{
    Cell, SLOW_STREAK_DOWN, Shared,
    batch::{self, LeaseCall},
    lease::{self, Record},
};
use crate::limiter::{Admitted, Decision};

/// A failed script call; `not_run` when Redis certainly did not run it.
pub(super) struct Trouble {
    pub(super) message: String,
    pub(super) not_run: bool,
    /// Only slow (over the budget), not disconnected or refusing.
    pub(super) slow: bool,
}

/// Units served that Redis may not count (it was away, or lost its data).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Readd {
    /// Served from a lease whose record Redis lost.
    pub(super) restore: i64,
    /// Served failing open, not yet written to the database, and written:
    /// a counter Redis restores from the database has the written ones.
    pub(super) open: i64,
    pub(super) open_written: i64,
}

impl Readd {
    pub(super) fn all(&self) -> i64 {
        self.restore + self.open + self.open_written
    }

    /// Takes off what a call added (`sent`, as it was when sent: some of
    /// its open units may have been written since).
    fn subtract(&mut self, sent: Readd) {
        self.restore = (self.restore - sent.restore).max(0);
        let written = sent.open_written.min(self.open_written);
        self.open_written -= written;
        let mut open = sent.open + sent.open_written - written;
        let from_open = open.min(self.open);
        self.open -= from_open;
        open -= from_open;
        self.open_written = (self.open_written - open).max(0);
    }
}

/// One lease call: what it hands back and what it asks for.
pub(super) struct Ask {
    pub(super) need: i64,
    pub(super) want: i64,
    /// Held before this grant.
    pub(super) holding: i64,
    pub(super) give_back: i64,
    pub(super) close: bool,
    pub(super) record: Record,
    /// The hash's expiry is due to be pushed back.
    pub(super) push_expiry: bool,
}

pub(super) struct Answer {
    pub(super) outcome: i64,
    pub(super) granted: i64,
    pub(super) tokens: f64,
    pub(super) used: i64,
    pub(super) kept: bool,
    /// Granted to the lease in all, less handed back (-1: no record).
    pub(super) leased: i64,
}

/// A renewal's result for the call that made it.
pub(super) enum Renewed {
    Decided(Admitted),
    /// Ask again (the lease was replaced, or a call without a lease).
    Again,
}
impl Shared {
    /// One run of the lease script within the budget.
    pub(super) async fn run(
        &self,
        cell: &Cell,
        ask: &Ask,
        seed: i64,
        add: i64,
    ) -> Result<Answer, Trouble> {
        let key = &cell.key;
        let mut flags = 0;
        if ask.record == Record::Known {
            flags |= batch::RECORD_KNOWN;
        }
        if ask.close {
            flags |= batch::CLOSE;
        }
        if ask.push_expiry {
            flags |= batch::PUSH_EXPIRY;
        }
        let call = LeaseCall {
            fields: cell.fields.clone(),
            requests_per_minute: key.rate.requests_per_minute,
            burst: key.rate.burst,
            need: ask.need,
            want: ask.want,
            give_back: ask.give_back,
            cap: key.quota.as_ref().and_then(|(_, cap)| *cap).unwrap_or(-1),
            flags,
            holding: ask.holding,
            seed,
            add,
        };
        let started = Instant::now();
        let answer = tokio::time::timeout(self.settings.budget, self.batcher.call(call)).await;
        self.metrics
            .call_seconds
            .observe(started.elapsed().as_secs_f64());
        let reply = match answer {
            Ok(Ok(reply)) => reply,
            Ok(Err(failed)) if !failed.timeout => {
                return Err(Trouble {
                    message: failed.message,
                    not_run: failed.refused,
                    slow: false,
                });
            }
            // Our budget, or the connection's own response timeout (the
            // same budget): a slow answer, not a lost connection.
            _ => {
                self.metrics.over_budget.inc();
                return Err(Trouble {
                    message: "Redis: over the time budget".into(),
                    not_run: false,
                    slow: true,
                });
            }
        };
        let [outcome, granted, milli_tokens, used, leased] = reply;
        Ok(Answer {
            outcome,
            granted,
            tokens: milli_tokens as f64 / 1000.0,
            used,
            kept: leased >= 0,
            leased,
        })
    }

    /// Runs a lease call, restoring a counter Redis does not have from its
    /// durable total first.
    /// Also says whether it did: then its durable total was read after
    /// the call was sent.
    async fn run_seeded(
        &self,
        cell: &Cell,
        ask: &Ask,
        readd: Readd,
    ) -> Result<(Answer, bool), Trouble> {
        let answer = self.run(cell, ask, -1, readd.all()).await?;
        if answer.outcome != 3 {
            return Ok((answer, false));
        }
        let (counter, _) = cell
            .key
            .quota
            .as_ref()
            .expect("only a counter can be missing");
        let stored = counter
            .durable_total(&*self.usage)
            .await
            .map_err(|e| Trouble {
                message: format!("restoring a counter: {e}"),
                not_run: true,
                slow: false,
            })?;
        // The total read has the units already written.
        let add = readd.restore + readd.open;
        Ok((self.run(cell, ask, stored, add).await?, true))
    }

    /// Notes a failed call: a lost connection takes Verify off Redis at
    /// once; a slow answer only when several in a row are, so one busy
    /// moment does not send every replica to the fallback.
    fn troubled(&self, trouble: &Trouble) {
        let slow_streak = if trouble.slow {
            self.slow_streak.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            0
        };
        if !trouble.slow || slow_streak >= SLOW_STREAK_DOWN {
            self.went_down(&trouble.message);
        }
        if !trouble.not_run {
            // Logged as a count by the flusher, not once per call.
            self.memory().uncertain += 1;
        }
    }

    /// Asks Redis for more of `cell`'s lease; `call` is the call waiting
    /// for it (units), none for a renewal ahead of need.
    pub(super) async fn renew(
        &self,
        cell: &Arc<Cell>,
        call: Option<i64>,
    ) -> Result<Renewed, Trouble> {
        let counted = cell.key.quota.is_some();
        let now = Instant::now();
        let (ask, durable_when_sent) = {
            let mut l = cell.lease();
            // An expired grant is handed back, not used.
            if now >= l.expires && l.held > 0 {
                l.give_back += std::mem::take(&mut l.held);
            }
            let ask = Ask {
                // What the call needs beyond what is held.
                need: call.map_or(0, |units| (units.max(1) - l.held).max(0)),
                // Enough to hold `want` in all, so grants do not pile up.
                want: (l.want(now) - l.held).max(0),
                holding: l.held,
                give_back: l.give_back,
                close: false,
                record: l.record,
                push_expiry: l.expiry_due(now),
            };
            l.renewal_sent(now);
            (ask, l.durable)
        };
        let counter = cell.key.quota.as_ref().map(|(k, _)| k);
        // What to add, left in place until Redis has it: the flusher may
        // mark some of it written meanwhile. A call whose answer is lost
        // leaves it to be added again (twice errs towards under-use; not at
        // all, towards passing a cap).
        let readd = counter
            .and_then(|k| self.memory().readd.get(k).copied())
            .unwrap_or_default();
        let result = self.run_seeded(cell, &ask, readd).await;
        let (answer, seeded) = match result {
            Ok(answer) => answer,
            Err(trouble) => {
                let mut l = cell.lease();
                l.renewing = false;
                if !trouble.not_run {
                    // It may have run: what it granted, and whether it took
                    // back what was handed back, the next answer tells.
                    l.give_back = 0;
                    l.doubt = true;
                }
                drop(l);
                cell.renewed.notify_waiters();
                self.troubled(&trouble);
                return Err(trouble);
            }
        };
        if self.slow_streak.load(Ordering::Relaxed) != 0 {
            self.slow_streak.store(0, Ordering::Relaxed);
        }
        if answer.outcome != 4
            && let Some(k) = counter
            && readd.all() > 0
        {
            // Added, or (written units, when the counter was restored from
            // the database) counted by the restore.
            let mut memory = self.memory();
            if let Some(r) = memory.readd.get_mut(k) {
                r.subtract(readd);
                if r.all() == 0 {
                    memory.readd.remove(k);
                }
            }
        }
        if answer.outcome == 4 {
            // Redis lost the record (and likely everything): the grant is
            // gone, and units served may be missing from the total Redis
            // restores its counter from, so they are added again: those not
            // durable when this call was sent, if this call restored the
            // counter; else those not durable when Redis last answered (it
            // lost its data since). Counting some twice errs towards
            // under-use.
            let restore = {
                let mut l = cell.lease();
                l.closed = true;
                l.renewing = false;
                l.held = 0;
                l.give_back = 0;
                l.record = Record::New;
                l.served
                    - if seeded {
                        durable_when_sent
                    } else {
                        l.durable_at_answer
                    }
            };
            if let Some(k) = counter {
                self.memory().readd.entry(k.clone()).or_default().restore += restore;
            }
            self.retire(cell);
            cell.renewed.notify_waiters();
            return Ok(Renewed::Again);
        }
        let decision = match answer.outcome {
            0 => Decision::Admitted,
            1 => Decision::RateLimited,
            2 => Decision::QuotaExceeded,
            other => {
                cell.lease().renewing = false;
                cell.renewed.notify_waiters();
                return Err(Trouble {
                    message: format!("Redis: the lease script answered {other}"),
                    not_run: false,
                    slow: false,
                });
            }
        };
        let at = Instant::now();
        let mut l = cell.lease();
        l.renewing = false;
        l.give_back = 0;
        l.doubt = false;
        if ask.push_expiry {
            l.expiry_pushed = Some(now);
        }
        l.record = if answer.kept {
            Record::Known
        } else {
            Record::New
        };
        l.bucket_seen = (answer.tokens, at);
        l.durable_at_answer = durable_when_sent;
        if counted {
            l.used_seen = answer.used;
        }
        let units = call.unwrap_or(0);
        l.held += answer.granted;
        if answer.leased >= 0 {
            // Redis's count of what the lease holds or used; more than this
            // replica knows of are grants whose answers were lost.
            let known = l.served + l.held;
            l.held = (l.held + answer.leased - known).max(0);
        }
        let result = if decision == Decision::Admitted {
            // Timed from when it was asked for: Redis may have waited.
            l.expires = now + lease::LIFETIME;
            l.denied = None;
            if call.is_some() {
                if l.held < units.max(1) {
                    // Others took what was held meanwhile: take again.
                    drop(l);
                    cell.renewed.notify_waiters();
                    return Ok(Renewed::Again);
                }
                l.held -= units;
                l.taken += units;
                l.last_used = at;
                if counted {
                    l.served += units;
                }
            }
            Admitted {
                decision,
                bucket: l.bucket(cell.key.rate, units, true, at),
                used: counted.then(|| l.used()),
            }
        } else {
            if call.is_some() || l.held == 0 {
                l.deny(decision, cell.key.rate, units.max(1), at);
            }
            Admitted {
                decision,
                bucket: l.bucket(cell.key.rate, units, decision != Decision::RateLimited, at),
                used: counted.then(|| l.used()),
            }
        };
        drop(l);
        cell.renewed.notify_waiters();
        Ok(match call {
            Some(_) => Renewed::Decided(result),
            None => Renewed::Again,
        })
    }
}
