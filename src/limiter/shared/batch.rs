//! Shared round trips on one Redis node: lease calls that arrive while one
//! is in flight go out together in the next, as one script call over all
//! their tenants. With Redis idle a call goes out at once, alone; under load
//! Redis reads, runs and answers many decisions per call instead of one.
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use redis::{FromRedisValue, Script, Value};
use tokio::sync::oneshot;

use super::scripts::LEASE_MANY;
use crate::shared_redis::RedisConn;

/// Values each lease call answers.
const ANSWER_LEN: usize = 6;
/// The most lease calls one script call carries.
const MOST: usize = 256;

/// Why a shared round trip failed, for each call it carried.
#[derive(Debug, Clone)]
pub(super) struct Failed {
    pub message: String,
    pub timeout: bool,
    pub refused: bool,
}

struct Pending {
    hash: String,
    args: Vec<Vec<u8>>,
    answer: oneshot::Sender<Result<Vec<Value>, Failed>>,
}

pub(super) struct Batcher {
    conn: RedisConn,
    script: Script,
    queue: Mutex<Vec<Pending>>,
    /// A task is sending the queue, one script call at a time.
    sending: AtomicBool,
}

impl Batcher {
    pub fn new(conn: RedisConn) -> Self {
        Self {
            conn,
            script: Script::new(LEASE_MANY),
            queue: Mutex::default(),
            sending: AtomicBool::new(false),
        }
    }

    /// Queues one lease call on `hash` with its arguments; the answer comes
    /// with the round trip that carries it.
    pub fn call<T: FromRedisValue + Send + 'static>(
        self: &Arc<Self>,
        hash: String,
        args: Vec<Vec<u8>>,
    ) -> impl Future<Output = Result<T, Failed>> + use<T> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .lock()
            .expect("batch queue")
            .push(Pending { hash, args, answer });
        if !self.sending.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.clone().send());
        }
        async move {
            let values = answered.await.map_err(|_| Failed {
                message: "Redis: the shared round trip was dropped".into(),
                timeout: false,
                refused: false,
            })??;
            T::from_redis_value(&Value::Array(values)).map_err(|e| Failed {
                message: format!("Redis: {e}"),
                timeout: false,
                refused: false,
            })
        }
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
            let mut call = self.script.prepare_invoke();
            for p in &batch {
                call.key(&p.hash);
                for a in &p.args {
                    call.arg(a.as_slice());
                }
            }
            let mut conn = self.conn.clone();
            match call.invoke_async::<Vec<Value>>(&mut conn).await {
                Ok(values) if values.len() == batch.len() * ANSWER_LEN => {
                    for (p, answer) in batch.into_iter().zip(values.chunks(ANSWER_LEN)) {
                        let _ = p.answer.send(Ok(answer.to_vec()));
                    }
                }
                Ok(values) => {
                    let failed = Failed {
                        message: format!(
                            "Redis: {} values for {} lease calls",
                            values.len(),
                            batch.len()
                        ),
                        timeout: false,
                        refused: false,
                    };
                    for p in batch {
                        let _ = p.answer.send(Err(failed.clone()));
                    }
                }
                Err(e) => {
                    let failed = Failed {
                        message: format!("Redis: {e}"),
                        timeout: e.is_timeout(),
                        refused: e.is_connection_refusal(),
                    };
                    for p in batch {
                        let _ = p.answer.send(Err(failed.clone()));
                    }
                }
            }
        }
    }
}
