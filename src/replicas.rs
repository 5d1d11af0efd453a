//! Keeping replicas' caches honest: every catalog change is published on a
//! Redis channel, and every replica forgets what the change touched. The
//! cache's short TTL is the backstop for a message lost while disconnected.
use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use redis::AsyncCommands;

use crate::{
    catalog::{Change, ChangeListener},
    domain::ids::{CredentialId, KeyId, PlanId, TenantId},
    shared_redis::RedisConn,
    telemetry::metrics::ChangeMetrics,
};

/// The channel changes are published on.
pub fn channel(prefix: &str) -> String {
    format!("{prefix}:changes")
}

fn encode(change: Change) -> String {
    match change {
        Change::Key(id) => id.to_string(),
        Change::Tenant(id) => id.to_string(),
        Change::Plan(id) => id.to_string(),
        Change::Credential(id) => id.to_string(),
    }
}

/// Ids carry their kind in their prefix, so the id alone is the message.
fn decode(message: &str) -> Option<Change> {
    KeyId::parse("", message)
        .map(Change::Key)
        .or_else(|_| TenantId::parse("", message).map(Change::Tenant))
        .or_else(|_| PlanId::parse("", message).map(Change::Plan))
        .or_else(|_| CredentialId::parse("", message).map(Change::Credential))
        .ok()
}

/// Publishes this replica's changes to the others.
#[derive(Clone)]
pub struct ChangeBus {
    conn: RedisConn,
    channel: String,
}

impl ChangeBus {
    pub fn new(conn: RedisConn, prefix: &str) -> Self {
        Self {
            conn,
            channel: channel(prefix),
        }
    }

    /// Publishes `change` and waits until Redis has it (for a command
    /// that exits right after).
    pub async fn publish(&self, change: Change) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        conn.publish::<_, _, i64>(&self.channel, encode(change))
            .await
            .map(drop)
    }
}

impl ChangeListener for ChangeBus {
    fn changed(&self, change: Change) {
        let bus = self.clone();
        tokio::spawn(async move {
            if let Err(error) = bus.publish(change).await {
                // Other replicas see the change when their cache entry expires.
                tracing::warn!(%error, ?change, "publishing a change failed");
            }
        });
    }
}

/// Applies other replicas' changes to `caches` until the process ends,
/// resubscribing after a lost connection, on the next node of `clients`
/// (and then forgetting everything, since changes may have been missed
/// meanwhile).
pub async fn follow(
    clients: Vec<redis::Client>,
    prefix: String,
    caches: Arc<dyn ChangeListener>,
    metrics: ChangeMetrics,
) {
    let channel = channel(&prefix);
    let mut lost = false;
    for client in clients.iter().cycle() {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                Ok(()) => {
                    if lost {
                        caches.missed_changes();
                        metrics.reconnects.inc();
                        tracing::info!("following catalog changes again");
                    }
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        metrics.received.inc();
                        let payload: String = message.get_payload().unwrap_or_default();
                        if let Some(change) = decode(&payload) {
                            caches.changed(change);
                        }
                    }
                    tracing::warn!("lost the catalog change channel; reconnecting");
                }
                Err(error) => tracing::warn!(%error, "subscribing to catalog changes failed"),
            },
            Err(error) => tracing::warn!(%error, "connecting for catalog changes failed"),
        }
        lost = true;
        caches.missed_changes();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_survives_the_channel() {
        for change in [
            Change::Key(KeyId::generate()),
            Change::Tenant(TenantId::generate()),
            Change::Plan(PlanId::generate()),
            Change::Credential(CredentialId::generate()),
        ] {
            assert_eq!(decode(&encode(change)), Some(change));
        }
        assert_eq!(decode("nonsense"), None);
    }
}
