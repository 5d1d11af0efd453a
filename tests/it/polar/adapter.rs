//! The real `tollgate-polar` binary for tests, and deliveries to it signed
//! by the reference Standard Webhooks library (tests/python/polar_deliver.py)
//! with the UTF-8 bytes of the endpoint's secret, as Polar signs them.
use std::{
    net::SocketAddr,
    process::{Child, Command},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;

use crate::helpers::{http_get, python_script, spawn_listening};

pub const SECRET: &str = "polar_whs_8fKq2TnZ4vLx9Rb3Wc7Yd1Hs";

/// A running `tollgate-polar`.
pub struct Adapter {
    pub addr: SocketAddr,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Adapter {
    pub fn start(server: &str, token: &str, secret: &str) -> Self {
        Self::start_env(server, token, secret, &[])
    }

    /// The same with more `TOLLGATE_POLAR_*` settings in its environment.
    pub fn start_env(server: &str, token: &str, secret: &str, env: &[(&str, String)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate-polar"));
        for (key, _) in std::env::vars() {
            if key.starts_with("TOLLGATE_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("TOLLGATE_POLAR_SERVER", format!("http://{server}"))
            .env("TOLLGATE_POLAR_ADMIN_TOKEN", token)
            .env("TOLLGATE_POLAR_WEBHOOK_SECRET", secret)
            // Half the default, for a wide margin under the 2 s the
            // deliveries must be answered in.
            .env("TOLLGATE_POLAR_DEADLINE_MILLIS", "500")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"]);
        let (child, addr, logs) = spawn_listening(cmd, "tollgate-polar listening");
        Self { addr, child, logs }
    }

    pub fn url(&self) -> String {
        format!("http://{}/webhooks/polar", self.addr)
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Posts `body`, signed with `secret` under `id`, with `options` of
    /// polar_deliver.py.
    pub fn deliver_with(&self, secret: &str, id: &str, body: &str, options: &[&str]) -> Answer {
        deliver_to(&self.url(), secret, id, body, options)
    }

    pub fn deliver(&self, id: &str, event: &Value) -> Answer {
        self.deliver_with(SECRET, id, &event.to_string(), &[])
    }

    /// The status of `GET path`.
    pub fn get(&self, path: &str) -> u16 {
        http_get(&self.addr.to_string(), path, Duration::from_secs(10))
            .expect("GET from the adapter")
            .status
    }
}

impl Drop for Adapter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub seconds: f64,
}

impl Answer {
    /// Expects 202 and returns the outcome it names.
    pub fn accepted(&self) -> &str {
        assert_eq!(self.status, 202, "{self:?}");
        self.body["outcome"].as_str().unwrap()
    }
}

/// Posts `body` to `url`, signed with `secret` under `id`, with `options` of
/// polar_deliver.py.
pub fn deliver_to(url: &str, secret: &str, id: &str, body: &str, options: &[&str]) -> Answer {
    let mut args = vec!["--url", url, "--secret", secret, "--id", id];
    args.extend(options);
    let out = python_script("polar_deliver.py", &args, body.as_bytes());
    assert!(
        out.status.success(),
        "polar_deliver.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    Answer {
        status: answer["status"].as_u64().unwrap() as u16,
        body: serde_json::from_str(answer["body"].as_str().unwrap()).unwrap_or(Value::Null),
        seconds: answer["seconds"].as_f64().unwrap(),
    }
}

/// A `customer.updated` event for a Polar customer no tenant was made for:
/// the adapter calls `ApplyCustomer`, which answers `NOT_FOUND`, and answers
/// 202 `ignored`.
pub fn unknown_customer_update(customer_id: &str) -> Value {
    serde_json::json!({"type": "customer.updated", "timestamp": "2026-11-02T00:00:00Z",
        "data": {"id": customer_id, "created_at": "2026-11-01T00:00:00Z",
                 "modified_at": "2026-11-02T00:00:00Z", "external_id": null,
                 "email": "a@b.test", "name": "A"}})
}
