//! Counting the SQL statements sqlx runs on the test's own thread (a
//! `tokio::test` runs the in-process server there). PostgreSQL only: sqlx
//! runs SQLite statements on a worker thread of its own, out of sight.
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use tracing_subscriber::{Layer, filter::Targets, layer::SubscriberExt};

#[derive(Clone, Default)]
pub struct SqlCount(Arc<AtomicUsize>);

impl SqlCount {
    /// Counts from now on this thread, until the guard is dropped.
    pub fn install() -> (Self, tracing::subscriber::DefaultGuard) {
        let count = Self::default();
        let guard = tracing::subscriber::set_default(
            tracing_subscriber::registry().with(
                count
                    .clone()
                    .with_filter(Targets::new().with_target("sqlx::query", tracing::Level::TRACE)),
            ),
        );
        (count, guard)
    }

    /// tracing caches each callsite's interest globally: a callsite first
    /// hit on another test's thread is cached as "never", which would hide
    /// this thread's statements too. Call once sqlx's callsites are
    /// registered (after some setup), before counting.
    pub fn rebuild_interest() {
        tracing::callsite::rebuild_interest_cache();
    }

    /// The statements since the last take.
    pub fn take(&self) -> usize {
        self.0.swap(0, Ordering::SeqCst)
    }
}

impl<S: tracing::Subscriber> Layer<S> for SqlCount {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() == "sqlx::query" {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}
