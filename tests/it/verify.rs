//! Verify on the in-process limiter (the embedded path), every case on both
//! storage backends: exact under concurrency, nothing consumed by denials,
//! changes seen at once, and usage made durable.
use std::sync::Arc;

use prost_types::Duration;
use sqlx::Row;
use tollgate::grpc::pb::{
    CreateKeyRequest, CreatePlanRequest, CreateTenantRequest, Key, Plan, Price, Quota, QuotaReset,
    RateLimit, RevokeKeyRequest, RotateKeyRequest, Tenant, VerifyCode, VerifyRequest,
    VerifyResponse, quota_reset, verify_client::VerifyClient,
};

use crate::helpers::{InProcess, TestDb, with_token};

/// A plan with one hard-capped resource, a tenant on it, and a key.
async fn setup(server: &InProcess, rpm: i64, burst: i64, cap: i64) -> (String, String) {
    let plan = server
        .plans()
        .create_plan(server.admin(CreatePlanRequest {
            plan: Some(Plan {
                slug: "metered".into(),
                display_name: "Metered".into(),
                price: Some(Price {
                    amount_minor: 0,
                    currency: "USD".into(),
                }),
                billing_interval: 1,
                rate_limit: Some(RateLimit {
                    requests_per_minute: rpm,
                    burst,
                }),
                quotas: vec![Quota {
                    resource: "chat_requests".into(),
                    included_units: cap,
                    overage_policy: 1,
                    overage_unit_price_micros: 0,
                }],
                features: vec!["model:gpt-4o".into()],
                quota_reset: Some(QuotaReset {
                    schedule: Some(quota_reset::Schedule::CalendarMonth(
                        quota_reset::CalendarMonth { day: 1 },
                    )),
                }),
                ..Plan::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    let tenant = server
        .billing()
        .create_tenant(server.admin(CreateTenantRequest {
            tenant: Some(Tenant {
                plan_id: plan.id,
                ..Tenant::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    let key = server
        .keys()
        .create_key(server.admin(CreateKeyRequest {
            key: Some(Key {
                tenant_id: tenant.id.clone(),
                name: "k".into(),
                ..Key::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    (key.secret, key.key.unwrap().id)
}

fn call(secret: &str, units: Option<i64>, features: &[&str]) -> VerifyRequest {
    VerifyRequest {
        key: secret.into(),
        resource: "chat_requests".into(),
        units,
        required_features: features.iter().map(|f| f.to_string()).collect(),
    }
}

async fn verify(server: &InProcess, req: VerifyRequest) -> VerifyResponse {
    VerifyClient::new(server.channel())
        .verify(server.verify(req))
        .await
        .expect("verify")
        .into_inner()
}

fn code(r: &VerifyResponse) -> VerifyCode {
    VerifyCode::try_from(r.code).unwrap()
}

async fn stored_usage(db_url: &str) -> i64 {
    let store = tollgate::store::sql::SqlStore::connect(db_url, 1)
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

async fn exact_under_concurrency(db: TestDb) {
    let url = db.url().to_owned();
    let server = Arc::new(InProcess::start(db).await);
    let (secret, _) = setup(&server, 1_000_000_000, 1_000_000_000, 10_000).await;
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let server = server.clone();
        let secret = secret.clone();
        tasks.push(tokio::spawn(async move {
            let mut valid = 0u64;
            loop {
                let r = verify(&server, call(&secret, None, &[])).await;
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

async fn denials_consume_nothing(db: TestDb) {
    let server = InProcess::start(db).await;
    // 1 request a minute: no refill to speak of during the test.
    let (secret, _) = setup(&server, 1, 10, 8).await;
    let r = verify(&server, call(&secret, Some(5), &["model:gpt-4o"])).await;
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
    let r = verify(&server, call(&secret, Some(3), &[])).await;
    assert_eq!(code(&r), VerifyCode::RateLimited, "2 tokens left, 3 asked");
    assert!(r.rate_limit.as_ref().unwrap().retry_after_ms > 0);
    assert!(r.headers.contains_key("Retry-After"));
    assert_eq!(r.quota.as_ref().unwrap().used, 8);

    let r = verify(&server, call("tg_live_nosuchkey", None, &[])).await;
    assert_eq!(code(&r), VerifyCode::KeyNotFound);
    assert_eq!(r.http_status, 401);
}

async fn burst_then_rate(db: TestDb) {
    let server = InProcess::start(db).await;
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

async fn key_changes_apply_at_once(db: TestDb) {
    let server = InProcess::start(db).await;
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

async fn credentials_for_verify(db: TestDb) {
    let server = InProcess::start(db).await;
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

crate::conformance!(
    exact_under_concurrency,
    denials_consume_nothing,
    burst_then_rate,
    key_changes_apply_at_once,
    credentials_for_verify,
);
