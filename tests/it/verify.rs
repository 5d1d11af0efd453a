//! The Verify conformance suite, every case on every stack: the embedded
//! default (SQLite, in-process limiter), PostgreSQL with the in-process
//! limiter, and production (PostgreSQL and Redis). Exact under concurrency,
//! nothing consumed by denials, changes seen at once, usage made durable.

use prost_types::Duration;
use sqlx::Row;
use tollgate::config::Config;
use tollgate::grpc::pb::{
    CreateKeyRequest, CreatePlanRequest, CreateTenantRequest, GetUsageRequest, Key, Plan, Price,
    Quota, RateLimit, RevokeKeyRequest, RotateKeyRequest, Tenant, VerifyCode, VerifyRequest,
    VerifyResponse, VerifyView, billing_client::BillingClient, keys_client::KeysClient,
    plans_client::PlansClient, verify_client::VerifyClient,
};
use tonic::transport::Channel;

use crate::helpers::{InProcess, SqlCount, TestDb, TestRedis, valid_plan, with_token};

/// A plan with one hard-capped resource, a tenant on it, and a key.
pub async fn setup(server: &InProcess, rpm: i64, burst: i64, cap: i64) -> (String, String) {
    let (secret, key_id, _) =
        setup_on(server.channel(), &server.admin_token, rpm, burst, cap, 1).await;
    (secret, key_id)
}

/// The same over any channel, with the overage policy given (1: hard cap,
/// 2: billed); returns the key's secret and id and the tenant's id.
pub async fn setup_on(
    channel: Channel,
    admin_token: &str,
    rpm: i64,
    burst: i64,
    included: i64,
    overage_policy: i32,
) -> (String, String, String) {
    let slug = format!("p{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let plan = PlansClient::new(channel.clone())
        .create_plan(with_token(
            CreatePlanRequest {
                plan: Some(Plan {
                    price: Some(Price {
                        amount_minor: 0,
                        currency: "USD".into(),
                    }),
                    rate_limit: Some(RateLimit {
                        requests_per_minute: rpm,
                        burst,
                    }),
                    quotas: vec![Quota {
                        resource: "chat_requests".into(),
                        included_units: included,
                        overage_policy,
                        overage_unit_price_micros: if overage_policy == 2 { 1_000 } else { 0 },
                    }],
                    ..valid_plan(&slug)
                }),
            },
            admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let tenant = BillingClient::new(channel.clone())
        .create_tenant(with_token(
            CreateTenantRequest {
                tenant: Some(Tenant {
                    plan_id: plan.id,
                    ..Tenant::default()
                }),
            },
            admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let key = KeysClient::new(channel)
        .create_key(with_token(
            CreateKeyRequest {
                key: Some(Key {
                    tenant_id: tenant.id.clone(),
                    name: "k".into(),
                    ..Key::default()
                }),
            },
            admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    (key.secret, key.key.unwrap().id, tenant.id)
}

/// `clients` concurrent callers, spread over `channels`, each calling Verify
/// until the hard cap refuses it; returns how many calls were VALID.
pub async fn drain_to_cap(channels: &[Channel], token: &str, secret: &str, clients: usize) -> u64 {
    let mut tasks = Vec::new();
    for i in 0..clients {
        let mut client = VerifyClient::new(channels[i % channels.len()].clone());
        let (token, secret) = (token.to_owned(), secret.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut valid = 0u64;
            loop {
                let r = client
                    .verify(with_token(call(&secret, None, &[]), &token))
                    .await
                    .expect("verify")
                    .into_inner();
                match code(&r) {
                    VerifyCode::Valid => valid += 1,
                    VerifyCode::QuotaExceeded => return valid,
                    other => panic!("unexpected {other:?}"),
                }
            }
        }));
    }
    let mut valid = 0;
    for t in tasks {
        valid += t.await.unwrap();
    }
    valid
}

/// Where a case runs.
pub enum Stack {
    Embedded,
    Postgres,
    Redis,
}

impl Stack {
    pub async fn start(self) -> InProcess {
        self.start_tuned(|_| {}).await
    }

    pub async fn start_tuned(self, tune: impl FnOnce(&mut Config)) -> InProcess {
        match self {
            Self::Embedded => InProcess::start_with(TestDb::sqlite().await, None, tune).await,
            Self::Postgres => InProcess::start_with(TestDb::postgres().await, None, tune).await,
            Self::Redis => {
                InProcess::start_with(TestDb::postgres().await, Some(TestRedis::shared()), |c| {
                    // Loaded test machines are not failing Redis servers.
                    c.redis_timeout_millis = 2_000;
                    tune(c)
                })
                .await
            }
        }
    }
}

/// Generates `<case>::{embedded, postgres, redis}` from `async fn <case>(Stack)`.
macro_rules! verify_conformance {
    ($($case:ident),+ $(,)?) => {$(
        mod $case {
            #[tokio::test]
            async fn embedded() {
                super::$case(super::Stack::Embedded).await
            }

            #[tokio::test]
            async fn postgres() {
                super::$case(super::Stack::Postgres).await
            }

            #[tokio::test]
            async fn redis() {
                super::$case(super::Stack::Redis).await
            }
        }
    )+};
}

pub fn call(secret: &str, units: Option<i64>, features: &[&str]) -> VerifyRequest {
    VerifyRequest {
        key: secret.into(),
        resource: "chat_requests".into(),
        units,
        required_features: features.iter().map(|f| f.to_string()).collect(),
        ..Default::default()
    }
}

/// The same call asking for the FULL view (features and headers).
pub fn full(mut request: VerifyRequest) -> VerifyRequest {
    request.view = VerifyView::Full as i32;
    request
}

pub async fn verify(server: &InProcess, req: VerifyRequest) -> VerifyResponse {
    VerifyClient::new(server.channel())
        .verify(server.verify(req))
        .await
        .expect("verify")
        .into_inner()
}

pub fn code(r: &VerifyResponse) -> VerifyCode {
    VerifyCode::try_from(r.code).unwrap()
}

pub async fn stored_usage(db_url: &str) -> i64 {
    let store =
        tollgate::store::sql::SqlStore::connect(db_url, 1, std::time::Duration::from_secs(5))
            .await
            .unwrap();
    let row = sqlx::query("SELECT CAST(COALESCE(SUM(used), 0) AS BIGINT) AS n FROM usage_counters")
        .fetch_one(store.pool())
        .await
        .unwrap();
    let n: i64 = row.try_get("n").unwrap();
    store.close().await;
    n
}

async fn exact_under_concurrency(stack: Stack) {
    let server = stack.start().await;
    let url = server.db().url().to_owned();
    let (secret, _) = setup(&server, 1_000_000_000, 1_000_000_000, 10_000).await;
    let valid = drain_to_cap(&[server.channel()], &server.verify_token, &secret, 64).await;
    assert_eq!(valid, 10_000, "exactly the hard cap is admitted");
    // The flusher writes at least once a second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let stored = stored_usage(&url).await;
        if stored == 10_000 {
            break;
        }
        assert!(
            stored < 10_000,
            "durable usage {stored} exceeds admitted calls"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "usage not flushed: {stored}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

async fn denials_consume_nothing(stack: Stack) {
    let server = stack.start().await;
    // 1 request a minute: no refill to speak of during the test.
    let (secret, _) = setup(&server, 1, 10, 8).await;
    let r = verify(&server, full(call(&secret, Some(5), &["model:gpt-4o"]))).await;
    assert_eq!(code(&r), VerifyCode::Valid);
    assert_eq!(
        r.rate_limit.as_ref().unwrap().remaining,
        5,
        "5 units take 5 tokens"
    );
    assert_eq!(r.quota.as_ref().unwrap().used, 5);
    assert_eq!(r.http_status, 200);
    assert_eq!(r.headers["X-RateLimit-Remaining"], "5");
    assert_eq!(r.headers["X-Quota-Remaining"], "3");

    let r = verify(&server, call(&secret, Some(1), &["model:o3"])).await;
    assert_eq!(code(&r), VerifyCode::FeatureNotInPlan);
    assert_eq!(r.http_status, 403);

    let r = verify(&server, call(&secret, Some(4), &[])).await;
    assert_eq!(code(&r), VerifyCode::QuotaExceeded, "5 + 4 > 8");
    assert_eq!(r.http_status, 429);
    assert_eq!(
        r.rate_limit.as_ref().unwrap().remaining,
        5,
        "no token taken"
    );
    assert_eq!(r.quota.as_ref().unwrap().used, 5, "no unit taken");

    let r = verify(&server, call(&secret, Some(0), &[])).await;
    assert_eq!(code(&r), VerifyCode::Valid, "0 units only ask");
    assert_eq!(r.quota.as_ref().unwrap().used, 5);

    let r = verify(&server, call(&secret, Some(3), &[])).await;
    assert_eq!(code(&r), VerifyCode::Valid);
    assert_eq!(r.quota.as_ref().unwrap().remaining, 0);
    let r = verify(&server, full(call(&secret, Some(3), &[]))).await;
    assert_eq!(code(&r), VerifyCode::RateLimited, "2 tokens left, 3 asked");
    assert!(r.rate_limit.as_ref().unwrap().retry_after_ms > 0);
    assert!(r.headers.contains_key("Retry-After"));
    assert_eq!(r.quota.as_ref().unwrap().used, 8);

    let r = verify(&server, call("tg_live_nosuchkey", None, &[])).await;
    assert_eq!(code(&r), VerifyCode::KeyNotFound);
    assert_eq!(r.http_status, 401);
}

async fn burst_then_rate(stack: Stack) {
    let server = stack.start().await;
    let (secret, _) = setup(&server, 60, 10, 1_000).await;
    let mut valid = 0;
    for _ in 0..15 {
        if code(&verify(&server, call(&secret, None, &[])).await) == VerifyCode::Valid {
            valid += 1;
        }
    }
    assert_eq!(valid, 10, "exactly the burst at once");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        code(&verify(&server, call(&secret, None, &[])).await),
        VerifyCode::Valid
    );
    assert_eq!(
        code(&verify(&server, call(&secret, None, &[])).await),
        VerifyCode::RateLimited,
        "about one a second"
    );
}

async fn key_changes_apply_at_once(stack: Stack) {
    let server = stack.start().await;
    let (secret, key_id) = setup(&server, 1_000, 1_000, 1_000).await;
    assert_eq!(
        code(&verify(&server, call(&secret, None, &[])).await),
        VerifyCode::Valid
    );
    let rotated = server
        .keys()
        .rotate_key(server.admin(RotateKeyRequest {
            id: key_id.clone(),
            grace_period: Some(Duration {
                seconds: 60,
                nanos: 0,
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        code(&verify(&server, call(&secret, None, &[])).await),
        VerifyCode::Valid,
        "old secret in grace"
    );
    assert_eq!(
        code(&verify(&server, call(&rotated.secret, None, &[])).await),
        VerifyCode::Valid
    );
    let again = server
        .keys()
        .rotate_key(server.admin(RotateKeyRequest {
            id: key_id.clone(),
            grace_period: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        code(&verify(&server, call(&secret, None, &[])).await),
        VerifyCode::KeyNotFound
    );
    assert_eq!(
        code(&verify(&server, call(&rotated.secret, None, &[])).await),
        VerifyCode::KeyNotFound
    );
    assert_eq!(
        code(&verify(&server, call(&again.secret, None, &[])).await),
        VerifyCode::Valid
    );
    server
        .keys()
        .revoke_key(server.admin(RevokeKeyRequest { id: key_id }))
        .await
        .unwrap();
    let r = verify(&server, call(&again.secret, None, &[])).await;
    assert_eq!(code(&r), VerifyCode::KeyRevoked);
    assert!(!r.valid);
}

async fn usage_is_reported_with_billed_overage(stack: Stack) {
    let server = stack.start().await;
    let (secret, _, tenant_id) = setup_on(
        server.channel(),
        &server.admin_token,
        1_000_000,
        1_000_000,
        3,
        2,
    )
    .await;
    let mut last = None;
    for _ in 0..5 {
        let r = verify(&server, call(&secret, None, &[])).await;
        assert_eq!(code(&r), VerifyCode::Valid, "billed overage never refuses");
        last = r.quota;
    }
    let quota = last.unwrap();
    assert_eq!(
        (quota.used, quota.remaining, quota.overage_units),
        (5, 0, 2)
    );
    let mut billing = BillingClient::new(server.channel());
    let usage = billing
        .get_usage(server.admin(GetUsageRequest {
            tenant_id: tenant_id.clone(),
            at: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(usage.tenant_id, tenant_id);
    assert_eq!(usage.resources.len(), 1);
    let r = &usage.resources[0];
    assert_eq!(
        (r.resource.as_str(), r.used, r.included, r.overage),
        ("chat_requests", 5, 3, 2)
    );
    assert!(usage.period_start.unwrap().seconds < usage.period_end.unwrap().seconds);
    // A period long past: nothing used then.
    let old = billing
        .get_usage(server.admin(GetUsageRequest {
            tenant_id: tenant_id.clone(),
            at: Some(prost_types::Timestamp {
                seconds: 1_600_000_000,
                nanos: 0,
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(old.resources[0].used, 0);
    let err = billing
        .get_usage(server.admin(GetUsageRequest {
            tenant_id: "ten_nope".into(),
            at: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("tenant_id"), "{}", err.message());
    let err = billing
        .get_usage(server.admin(GetUsageRequest {
            tenant_id: "ten_0123456789abcdef0123456789abcdef".into(),
            at: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = billing
        .get_usage(server.verify(GetUsageRequest {
            tenant_id,
            at: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::PermissionDenied,
        "usage is admin only"
    );
}

async fn credentials_for_verify(stack: Stack) {
    let server = stack.start().await;
    let (secret, _) = setup(&server, 1_000, 1_000, 1_000).await;
    let mut client = VerifyClient::new(server.channel());
    assert!(
        client
            .verify(server.admin(call(&secret, None, &[])))
            .await
            .is_ok(),
        "admin may verify"
    );
    let err = client
        .verify(tonic::Request::new(call(&secret, None, &[])))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = client
        .verify(with_token(call(&secret, None, &[]), &secret))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::Unauthenticated,
        "an API key is no credential"
    );
    let err = client
        .verify(server.verify(call(&secret, Some(-1), &[])))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = client
        .verify(server.verify(call("", None, &[])))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

async fn cache_hit_runs_no_sql(stack: Stack) {
    let (count, _guard) = SqlCount::install();
    // No flush during the test: only Verify's own statements are counted.
    let server = stack
        .start_tuned(|c| {
            c.usage_flush_millis = 3_600_000;
            c.usage_sweep_seconds = 3_600;
        })
        .await;
    let (secret, _) = setup(&server, 1_000_000, 1_000_000, 1_000_000).await;
    SqlCount::rebuild_interest();
    count.take();
    verify(&server, call(&secret, None, &[])).await;
    let cold = count.take();
    assert!(
        cold > 0,
        "the first Verify reads the key ({cold} statements counted)"
    );
    for _ in 0..50 {
        let r = verify(&server, call(&secret, None, &[])).await;
        assert_eq!(code(&r), VerifyCode::Valid);
    }
    assert_eq!(count.take(), 0, "cache hits run no SQL");
    // Shaped like a key issued before checksums: only a lookup can tell.
    let unknown = format!("tg_live_{}", "2".repeat(44));
    verify(&server, call(&unknown, None, &[])).await;
    assert!(
        count.take() > 0,
        "an unknown secret is looked up: the count is live"
    );
    for _ in 0..20 {
        let r = verify(&server, call(&unknown, None, &[])).await;
        assert_eq!(code(&r), VerifyCode::KeyNotFound);
    }
    assert_eq!(
        count.take(),
        0,
        "an unknown secret is remembered as unknown"
    );
}

/// PostgreSQL stacks only: sqlx runs SQLite statements on a worker thread of
/// its own, out of this thread-scoped count's sight. The embedded stack
/// shares the Verifier and its cache with these.
mod cache_hit_runs_no_sql {
    #[tokio::test]
    async fn postgres() {
        super::cache_hit_runs_no_sql(super::Stack::Postgres).await
    }

    #[tokio::test]
    async fn redis() {
        super::cache_hit_runs_no_sql(super::Stack::Redis).await
    }
}

verify_conformance!(
    usage_is_reported_with_billed_overage,
    exact_under_concurrency,
    denials_consume_nothing,
    burst_then_rate,
    key_changes_apply_at_once,
    credentials_for_verify,
);
