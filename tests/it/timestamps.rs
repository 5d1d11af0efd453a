//! Every timestamp a caller can send, at the edges of what Tollgate accepts
//! and of what protobuf allows: each RPC that takes one answers it or
//! refuses it with INVALID_ARGUMENT naming the field, never a reset stream
//! (a panic). `GetUsage` at 9999-12-31T23:59:59Z once panicked: its
//! period's end fell in year 10000.
use prost_types::Timestamp;
use tollgate::grpc::pb;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::helpers::{InProcess, TestDb, valid_plan};

crate::conformance!(extreme_timestamps_are_answered_or_refused_by_field);

/// 1970-01-01T00:00:00Z and 9998-12-31T23:59:59.999999999Z: the first and
/// last accepted.
const EARLIEST: Timestamp = Timestamp {
    seconds: 0,
    nanos: 0,
};
const LATEST: Timestamp = Timestamp {
    seconds: 253_370_764_799,
    nanos: 999_999_999,
};

/// What a refusal for the range says.
const RANGE: &str = "between 1970-01-01T00:00:00Z and 9998-12-31T23:59:59Z";

/// Refused: before the epoch, after 9998, and past protobuf's own limits
/// (0001-01-01 to 9999-12-31T23:59:59.999999999Z, nanos 0 to 999,999,999).
fn refused() -> Vec<(&'static str, Timestamp)> {
    let at = |seconds, nanos| Timestamp { seconds, nanos };
    vec![
        ("0001-01-01T00:00:00Z", at(-62_135_596_800, 0)),
        ("1969-12-31T23:59:59.999999999Z", at(-1, 999_999_999)),
        ("9999-01-01T00:00:00Z", at(253_370_764_800, 0)),
        ("9999-12-31T23:59:59Z", at(253_402_300_799, 0)),
        (
            "9999-12-31T23:59:59.999999999Z",
            at(253_402_300_799, 999_999_999),
        ),
        ("protobuf's minimum less a second", at(-62_135_596_801, 0)),
        ("protobuf's maximum and a second", at(253_402_300_800, 0)),
        ("i64::MIN seconds", at(i64::MIN, 0)),
        ("i64::MAX seconds", at(i64::MAX, 999_999_999)),
        ("negative nanos", at(0, -1)),
        ("a second of nanos", at(0, 1_000_000_000)),
    ]
}

/// The RPCs that take a timestamp, and the field it goes in.
#[derive(Debug, Clone, Copy)]
enum Rpc {
    CreateTenant,
    UpdateTenant,
    GetUsage,
    GrantCredits,
    CreateKey,
    UpdateKey,
    ApplySubscription(&'static str),
    ApplyCustomer,
}

impl Rpc {
    fn field(self) -> &'static str {
        match self {
            Rpc::CreateTenant | Rpc::UpdateTenant => "tenant.trial_end",
            Rpc::GetUsage => "at",
            Rpc::GrantCredits => "expire_time",
            Rpc::CreateKey | Rpc::UpdateKey => "key.expire_time",
            Rpc::ApplySubscription(field) => field,
            Rpc::ApplyCustomer => "modified_at",
        }
    }
}

const RPCS: [Rpc; 11] = [
    Rpc::CreateTenant,
    Rpc::UpdateTenant,
    Rpc::GetUsage,
    Rpc::GrantCredits,
    Rpc::CreateKey,
    Rpc::UpdateKey,
    Rpc::ApplySubscription("current_period_start"),
    Rpc::ApplySubscription("current_period_end"),
    Rpc::ApplySubscription("trial_end"),
    Rpc::ApplySubscription("modified_at"),
    Rpc::ApplyCustomer,
];

struct Setup {
    plan_id: String,
    tenant: pb::Tenant,
    key: pb::Key,
}

async fn setup(server: &InProcess) -> Setup {
    let plan = server
        .plans()
        .create_plan(server.admin(pb::CreatePlanRequest {
            plan: Some(valid_plan("times")),
        }))
        .await
        .unwrap()
        .into_inner();
    let tenant = server
        .billing()
        .create_tenant(server.admin(pb::CreateTenantRequest {
            tenant: Some(pb::Tenant {
                external_id: "times".into(),
                plan_id: plan.id.clone(),
                ..Default::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    let key = server
        .keys()
        .create_key(server.admin(pb::CreateKeyRequest {
            key: Some(pb::Key {
                tenant_id: tenant.id.clone(),
                name: "times".into(),
                ..Default::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    Setup {
        plan_id: plan.id,
        tenant,
        key,
    }
}

fn mask(path: &str) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: vec![path.into()],
    })
}

/// `rpc` with `t` in its field, every other field valid; `n` keeps
/// otherwise equal requests apart (idempotency keys, external ids).
async fn call(
    server: &InProcess,
    s: &Setup,
    rpc: Rpc,
    t: Timestamp,
    n: usize,
) -> Result<(), Status> {
    let (mut billing, mut keys) = (server.billing(), server.keys());
    match rpc {
        Rpc::CreateTenant => billing
            .create_tenant(server.admin(pb::CreateTenantRequest {
                tenant: Some(pb::Tenant {
                    external_id: format!("times-{n}"),
                    plan_id: s.plan_id.clone(),
                    trial_end: Some(t),
                    ..Default::default()
                }),
            }))
            .await
            .map(drop),
        Rpc::UpdateTenant => billing
            .update_tenant(server.admin(pb::UpdateTenantRequest {
                tenant: Some(pb::Tenant {
                    id: s.tenant.id.clone(),
                    trial_end: Some(t),
                    ..Default::default()
                }),
                update_mask: mask("trial_end"),
            }))
            .await
            .map(drop),
        Rpc::GetUsage => billing
            .get_usage(server.admin(pb::GetUsageRequest {
                tenant_id: s.tenant.id.clone(),
                at: Some(t),
            }))
            .await
            .map(drop),
        Rpc::GrantCredits => billing
            .grant_credits(server.admin(pb::GrantCreditsRequest {
                tenant_id: s.tenant.id.clone(),
                credit_type: "tokens".into(),
                amount: 1,
                idempotency_key: format!("times-{n}"),
                expire_time: Some(t),
            }))
            .await
            .map(drop),
        Rpc::CreateKey => keys
            .create_key(server.admin(pb::CreateKeyRequest {
                key: Some(pb::Key {
                    tenant_id: s.tenant.id.clone(),
                    name: format!("times-{n}"),
                    expire_time: Some(t),
                    ..Default::default()
                }),
            }))
            .await
            .map(drop),
        Rpc::UpdateKey => keys
            .update_key(server.admin(pb::UpdateKeyRequest {
                key: Some(pb::Key {
                    id: s.key.id.clone(),
                    expire_time: Some(t),
                    ..Default::default()
                }),
                update_mask: mask("expire_time"),
            }))
            .await
            .map(drop),
        Rpc::ApplySubscription(field) => {
            let mut r = pb::ApplySubscriptionRequest {
                provider: "polar".into(),
                subscription_id: format!("sub_{n}"),
                customer: Some(pb::Customer {
                    external_id: format!("cus_{n}"),
                    email: "buyer@example.test".into(),
                    name: "Buyer".into(),
                    provider_customer_id: String::new(),
                }),
                product_id: "prod_unmapped".into(),
                status: pb::SubscriptionStatus::Active as i32,
                current_period_start: Some(EARLIEST),
                current_period_end: Some(LATEST),
                modified_at: Some(EARLIEST),
                ..Default::default()
            };
            match field {
                "current_period_start" => r.current_period_start = Some(t),
                "current_period_end" => r.current_period_end = Some(t),
                "trial_end" => r.trial_end = Some(t),
                _ => r.modified_at = Some(t),
            }
            billing.apply_subscription(server.admin(r)).await.map(drop)
        }
        Rpc::ApplyCustomer => billing
            .apply_customer(server.admin(pb::ApplyCustomerRequest {
                provider: "polar".into(),
                customer: Some(pb::Customer {
                    external_id: format!("cus_{n}"),
                    email: "buyer@example.test".into(),
                    name: "Buyer".into(),
                    provider_customer_id: String::new(),
                }),
                modified_at: Some(t),
            }))
            .await
            .map(drop),
    }
}

/// The fields a BadRequest names.
fn named(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|d| d.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

async fn extreme_timestamps_are_answered_or_refused_by_field(db: TestDb) {
    let server = InProcess::start(db).await;
    let s = setup(&server).await;
    let mut n = 0;
    for rpc in RPCS {
        // Accepted: answered, or refused by a rule of its own (an expiry in
        // the past, an unmapped product), never for the range, by a reset
        // stream or by an internal error.
        for (what, t) in [("1970-01-01", EARLIEST), ("9998-12-31", LATEST)] {
            n += 1;
            if let Err(status) = call(&server, &s, rpc, t, n).await {
                assert!(
                    !matches!(
                        status.code(),
                        Code::Internal | Code::Unknown | Code::Cancelled | Code::Unavailable
                    ),
                    "{rpc:?} at {what}: {status:?}"
                );
                assert!(
                    !status.message().contains(RANGE),
                    "{rpc:?} at {what}: the accepted timestamp was refused: {status:?}"
                );
            }
        }
        for (what, t) in refused() {
            n += 1;
            let status = call(&server, &s, rpc, t, n)
                .await
                .expect_err(&format!("{rpc:?} accepted {what}"));
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{rpc:?} at {what}: {status:?}"
            );
            assert!(
                status.message().contains(RANGE) || status.message().contains("nanos from 0"),
                "{rpc:?} at {what}: {status:?}"
            );
            assert!(
                named(&status).iter().any(|f| f == rpc.field()),
                "{rpc:?} at {what}: the BadRequest names {:?}, not {}",
                named(&status),
                rpc.field()
            );
        }
    }
    // The period that once ended in year 10000: answered, and the server
    // is still there.
    let usage = server
        .billing()
        .get_usage(server.admin(pb::GetUsageRequest {
            tenant_id: s.tenant.id.clone(),
            at: Some(LATEST),
        }))
        .await
        .expect("GetUsage at the last accepted instant")
        .into_inner();
    let (start, end) = (usage.period_start.unwrap(), usage.period_end.unwrap());
    assert!(
        start.seconds <= LATEST.seconds && LATEST.seconds < end.seconds,
        "the period {start:?} to {end:?} holds the instant asked about"
    );
}
