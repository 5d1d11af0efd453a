//! Lease calls on their way to Redis: calls that arrive while one is in
//! flight go out together in the next, as one script call over all their
//! tenants (on a cluster, one per hash slot, sent at once: a script's keys
//! must share a slot). With Redis idle a call goes out at once, alone; under
//! load Redis reads, runs and answers many decisions per call instead of
//! one.
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use redis::{Cmd, ErrorKind, Script};
use tokio::sync::oneshot;

use super::scripts::{ANSWER_LEN, LEASE};
use crate::shared_redis::RedisConn;

/// The most lease calls one script call carries.
const MOST: usize = 256;

/// Where a lease lives in Redis: its tenant's hash and the fields it
/// touches, made once per lease (they are the same for every call).
#[derive(Debug)]
pub(super) struct Fields {
    pub hash: String,
    pub bucket: String,
    /// Empty when no quota is charged.
    pub counter: String,
    pub record: String,
}

/// One lease call: one key of the lease script and its arguments.
pub(super) struct LeaseCall {
    pub fields: Arc<Fields>,
    pub requests_per_minute: i64,
    pub burst: i64,
    pub need: i64,
    pub want: i64,
    pub give_back: i64,
    pub cap: i64,
    pub flags: i64,
    pub holding: i64,
    pub seed: i64,
    pub add: i64,
}

impl LeaseCall {
    /// The numbers, as the script unpacks them.
    fn packed(&self) -> [u8; 80] {
        let numbers = [
            self.requests_per_minute,
            self.burst,
            self.need,
            self.want,
            self.give_back,
            self.cap,
            self.flags,
            self.holding,
            self.seed,
            self.add,
        ];
        let mut packed = [0; 80];
        for (slot, n) in packed.chunks_exact_mut(8).zip(numbers) {
            slot.copy_from_slice(&n.to_le_bytes());
        }
        packed
    }
}

/// The lease script's flags.
pub(super) const RECORD_KNOWN: i64 = 1;
pub(super) const CLOSE: i64 = 2;
pub(super) const PUSH_EXPIRY: i64 = 4;

/// Why a round trip failed, for each call it carried.
#[derive(Debug, Clone)]
pub(super) struct Failed {
    pub message: String,
    pub timeout: bool,
    pub refused: bool,
}

impl From<redis::RedisError> for Failed {
    fn from(e: redis::RedisError) -> Self {
        Self {
            message: format!("Redis: {e}"),
            timeout: e.is_timeout(),
            refused: e.is_connection_refusal(),
        }
    }
}

pub(super) type Reply = [i64; ANSWER_LEN];

/// Runs the lease script over `calls` (all on one node, and on a cluster
/// in one slot); their answers in order.
async fn invoke(
    conn: &RedisConn,
    script: &Script,
    calls: &[&LeaseCall],
) -> Result<Vec<Reply>, Failed> {
    let now = crate::domain::to_micros(crate::domain::now());
    let lifetime = super::lease::LIFETIME.as_micros() as i64;
    let command = |first: Cmd| {
        let mut cmd = first;
        cmd.arg(calls.len());
        for c in calls {
            cmd.arg(&c.fields.hash);
        }
        cmd.arg(now).arg(lifetime);
        for c in calls {
            let f = &c.fields;
            cmd.arg(&f.bucket)
                .arg(&f.counter)
                .arg(&f.record)
                .arg(&c.packed()[..]);
        }
        cmd
    };
    let mut conn = conn.clone();
    let mut evalsha = redis::cmd("EVALSHA");
    evalsha.arg(script.get_hash());
    let values: Vec<i64> = match command(evalsha).query_async(&mut conn).await {
        Err(e) if e.kind() == ErrorKind::NoScriptError => {
            // Redis restarted or flushed its scripts: EVAL caches it again.
            let mut eval = redis::cmd("EVAL");
            eval.arg(LEASE);
            command(eval).query_async(&mut conn).await?
        }
        other => other?,
    };
    if values.len() != calls.len() * ANSWER_LEN {
        return Err(Failed {
            message: format!(
                "Redis: {} values for {} lease calls",
                values.len(),
                calls.len()
            ),
            timeout: false,
            refused: false,
        });
    }
    Ok(values
        .chunks_exact(ANSWER_LEN)
        .map(|c| c.try_into().expect("chunks of ANSWER_LEN"))
        .collect())
}

struct Pending {
    call: LeaseCall,
    answer: oneshot::Sender<Result<Reply, Failed>>,
}

pub(super) struct Batcher {
    conn: RedisConn,
    script: Script,
    /// Calls are grouped by hash slot (a cluster).
    by_slot: bool,
    queue: Mutex<Vec<Pending>>,
    /// A task is sending the queue, one script call at a time.
    sending: AtomicBool,
}

impl Batcher {
    pub fn new(conn: RedisConn) -> Self {
        Self {
            by_slot: matches!(conn, RedisConn::Cluster(_)),
            conn,
            script: Script::new(LEASE),
            queue: Mutex::default(),
            sending: AtomicBool::new(false),
        }
    }

    /// One lease call, sharing the round trip that carries it with the
    /// calls around it.
    pub async fn call(self: &Arc<Self>, call: LeaseCall) -> Result<Reply, Failed> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .lock()
            .expect("batch queue")
            .push(Pending { call, answer });
        if !self.sending.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.clone().send());
        }
        answered.await.map_err(|_| Failed {
            message: "Redis: the shared round trip was dropped".into(),
            timeout: false,
            refused: false,
        })?
    }

    /// Sends what is queued, one script call after another, until nothing
    /// is left; a call queued as it stops starts the next sender.
    async fn send(self: Arc<Self>) {
        loop {
            let batch: Vec<Pending> = {
                let mut queue = self.queue.lock().expect("batch queue");
                let n = queue.len().min(MOST);
                queue.drain(..n).collect()
            };
            if batch.is_empty() {
                self.sending.store(false, Ordering::Release);
                let more = !self.queue.lock().expect("batch queue").is_empty();
                if more && !self.sending.swap(true, Ordering::AcqRel) {
                    continue;
                }
                return;
            }
            if !self.by_slot {
                self.answer(batch).await;
                continue;
            }
            let mut slots: HashMap<u16, Vec<Pending>> = HashMap::new();
            for p in batch {
                slots.entry(slot(&p.call.fields.hash)).or_default().push(p);
            }
            futures_util::future::join_all(slots.into_values().map(|group| self.answer(group)))
                .await;
        }
    }

    /// Sends one script call over `batch` and hands each call its answer.
    async fn answer(&self, batch: Vec<Pending>) {
        let calls: Vec<&LeaseCall> = batch.iter().map(|p| &p.call).collect();
        match invoke(&self.conn, &self.script, &calls).await {
            Ok(replies) => {
                for (p, reply) in batch.into_iter().zip(replies) {
                    let _ = p.answer.send(Ok(reply));
                }
            }
            Err(failed) => {
                for p in batch {
                    let _ = p.answer.send(Err(failed.clone()));
                }
            }
        }
    }
}

/// A key's Redis Cluster hash slot: CRC16 (XMODEM) of its hash tag, as the
/// cluster and redis-rs compute it.
fn slot(key: &str) -> u16 {
    let key = key.as_bytes();
    let tag = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let close = key[open + 1..].iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &key[open + 1..open + 1 + close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tag) % 16384
}

#[cfg(test)]
mod tests {
    use super::slot;

    #[test]
    fn slots_are_the_clusters() {
        // CLUSTER KEYSLOT's answers.
        assert_eq!(slot("123456789"), 0x31C3);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("foo"), 12182);
        assert_ne!(slot("{}foo"), slot("foo"));
    }
}
