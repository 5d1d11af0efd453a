//! The usage half of the storage conformance suite, on every backend:
//! increments applied once however often a batch is retried, and claims on
//! a dead replica's lease that add only what it had not written, after
//! which that lease adds nothing.
use tollgate::{
    domain::{now, plan::Resource},
    store::{Increment, UsageStore},
};

use crate::helpers::TestDb;

crate::conformance!(
    a_retried_batch_adds_nothing_twice,
    a_claim_adds_only_what_the_lease_had_not_written,
    a_claimed_lease_adds_nothing_more,
);

async fn counter(db: &TestDb) -> (tollgate::store::sql::SqlStore, Increment) {
    let store = db.store().await;
    let (_, tenant) = crate::store::plan_and_tenant(&store).await;
    let at = now();
    let increment = Increment {
        tenant_id: tenant.id,
        resource: Resource::parse("resource", "calls").unwrap(),
        period_start: at - time::Duration::days(1),
        period_end: at + time::Duration::days(29),
        lease: 1,
        units: 0,
    };
    (store, increment)
}

async fn total(store: &tollgate::store::sql::SqlStore, i: &Increment) -> i64 {
    store
        .get_usage(i.tenant_id, &i.resource, i.period_start)
        .await
        .unwrap()
}

async fn a_retried_batch_adds_nothing_twice(db: TestDb) {
    let (store, base) = counter(&db).await;
    let batch = [
        Increment {
            lease: 1,
            units: 7,
            ..base.clone()
        },
        Increment {
            lease: 2,
            units: 5,
            ..base.clone()
        },
    ];
    store.add_usage("replica-a", 1, &batch).await.unwrap();
    // The same batch again, as after a flush whose answer was lost.
    store.add_usage("replica-a", 1, &batch).await.unwrap();
    assert_eq!(total(&store, &base).await, 12);
    // The next batch, and another replica's batch with the same number.
    store
        .add_usage(
            "replica-a",
            2,
            &[Increment {
                lease: 1,
                units: 3,
                ..base.clone()
            }],
        )
        .await
        .unwrap();
    store
        .add_usage(
            "replica-b",
            1,
            &[Increment {
                lease: 1,
                units: 4,
                ..base.clone()
            }],
        )
        .await
        .unwrap();
    assert_eq!(total(&store, &base).await, 19);
    // Pruning forgets old increments, not totals.
    assert!(
        store
            .prune_ledger(now() + time::Duration::seconds(1))
            .await
            .unwrap()
            >= 4
    );
    assert_eq!(total(&store, &base).await, 19);
}

async fn a_claim_adds_only_what_the_lease_had_not_written(db: TestDb) {
    let (store, base) = counter(&db).await;
    // Lease 1 of replica-a was granted 50 units and wrote 30 before dying.
    store
        .add_usage(
            "replica-a",
            1,
            &[Increment {
                lease: 1,
                units: 20,
                ..base.clone()
            }],
        )
        .await
        .unwrap();
    store
        .add_usage(
            "replica-a",
            2,
            &[Increment {
                lease: 1,
                units: 10,
                ..base.clone()
            }],
        )
        .await
        .unwrap();
    // Another lease's units are not its.
    store
        .add_usage(
            "replica-a",
            3,
            &[Increment {
                lease: 2,
                units: 6,
                ..base.clone()
            }],
        )
        .await
        .unwrap();
    let granted = Increment {
        lease: 1,
        units: 50,
        ..base.clone()
    };
    assert_eq!(
        store.claim_lease("replica-a", 1, &granted).await.unwrap(),
        20
    );
    assert_eq!(total(&store, &base).await, 56);
    // Claimed again (a sweeper retrying): nothing more.
    assert_eq!(
        store.claim_lease("replica-a", 1, &granted).await.unwrap(),
        0
    );
    assert_eq!(total(&store, &base).await, 56);
    // A lease that wrote more than it was granted claims nothing.
    let small = Increment {
        lease: 2,
        units: 4,
        ..base.clone()
    };
    assert_eq!(store.claim_lease("replica-a", 2, &small).await.unwrap(), 0);
    assert_eq!(total(&store, &base).await, 56);
}

async fn a_claimed_lease_adds_nothing_more(db: TestDb) {
    let (store, base) = counter(&db).await;
    let units = |lease, units| Increment {
        lease,
        units,
        ..base.clone()
    };
    store
        .add_usage("replica-a", 1, &[units(1, 10)])
        .await
        .unwrap();
    // Replica-a was cut off, not dead: its lease was claimed for the 40
    // units it was granted and had not written.
    assert_eq!(
        store
            .claim_lease("replica-a", 1, &units(1, 50))
            .await
            .unwrap(),
        40
    );
    // It writes what it served from that lease after all (counted by the
    // claim), and units of another lease and of none (failing open).
    store
        .add_usage("replica-a", 2, &[units(1, 25), units(2, 3), units(0, 2)])
        .await
        .unwrap();
    assert_eq!(total(&store, &base).await, 55);
    // A lease claimed before it ever wrote: its first write adds nothing.
    assert_eq!(
        store
            .claim_lease("replica-a", 3, &units(3, 6))
            .await
            .unwrap(),
        6
    );
    store
        .add_usage("replica-a", 3, &[units(3, 6)])
        .await
        .unwrap();
    assert_eq!(total(&store, &base).await, 61);
}

/// PostgreSQL keeps room on the usage tables' pages for their in-place
/// updates (HOT: no index writes), and a second migration (another replica
/// starting) finds it set and changes nothing.
#[tokio::test]
async fn postgres_usage_tables_leave_room_for_updates() {
    let db = TestDb::postgres().await;
    let first = db.store().await;
    let second = db.store().await;
    for table in ["usage_counters", "usage_leases"] {
        let options: Option<String> = sqlx::query_scalar(
            "SELECT array_to_string(reloptions, ',') FROM pg_class WHERE oid = to_regclass($1)",
        )
        .bind(table)
        .fetch_one(second.pool())
        .await
        .unwrap();
        assert_eq!(options.as_deref(), Some("fillfactor=50"), "{table}");
    }
    first.close().await;
    second.close().await;
}
