//! The real binary on PostgreSQL, driven by grpcurl 1.8.6 through server
//! reflection alone (no proto files given), as someone trying it from a shell.
use serde_json::{Value, json};

use crate::helpers::{Server, TestDb, grpcurl, run_tollgate};

/// grpcurl with `-plaintext`, an optional bearer token and a JSON body.
fn call(server: &Server, token: Option<&str>, method: &str, body: Value) -> std::process::Output {
    let header = token.map(|t| format!("authorization: Bearer {t}"));
    let body = body.to_string();
    let target = server.target();
    let mut args = vec!["-plaintext"];
    if let Some(h) = &header {
        args.extend(["-H", h]);
    }
    args.extend(["-d", &body, &target, method]);
    grpcurl(&args)
}

fn ok(server: &Server, token: &str, method: &str, body: Value) -> Value {
    let out = call(server, Some(token), method, body);
    assert!(
        out.status.success(),
        "{method} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("grpcurl prints JSON")
}

fn fails_with(out: &std::process::Output, code: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected {code}, call succeeded");
    assert!(
        stderr.contains(&format!("Code: {code}")),
        "expected {code}, got: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn grpcurl_drives_the_server_through_reflection() {
    let db = TestDb::postgres().await;
    let admin = run_tollgate(&db, &["admin", "bootstrap"]).trim().to_owned();
    let verify = run_tollgate(&db, &["admin", "create-credential", "--scope", "verify"])
        .trim()
        .to_owned();
    assert!(admin.starts_with("tgc_") && verify.starts_with("tgc_") && admin != verify);
    let server = Server::start(&["--database-url", db.url()]);
    let target = server.target();

    let out = grpcurl(&["-plaintext", &target, "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let services = String::from_utf8_lossy(&out.stdout);
    for service in [
        "tollgate.v1.Plans",
        "tollgate.v1.Keys",
        "tollgate.v1.Billing",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.lines().any(|l| l == service),
            "{service} not listed: {services}"
        );
    }

    let out = grpcurl(&["-plaintext", &target, "describe", "tollgate.v1.Plan"]);
    let described = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(described.contains("string slug = 2;"), "{described}");
    assert!(
        described.contains("// Unique short name"),
        "fields undocumented: {described}"
    );
    assert!(
        described.contains("// Price for one billing interval."),
        "{described}"
    );

    let plan = ok(
        &server,
        &admin,
        "tollgate.v1.Plans/CreatePlan",
        json!({"plan": {
            "slug": "pro",
            "display_name": "Pro",
            "price": {"amount_minor": 4900, "currency": "USD"},
            "billing_interval": "BILLING_INTERVAL_MONTH",
            "rate_limit": {"requests_per_minute": 600, "burst": 20},
            "quotas": [{"resource": "chat_requests", "included_units": 10000,
                        "overage_policy": "OVERAGE_POLICY_BILLED", "overage_unit_price_micros": 500}],
            "features": ["model:gpt-4o"],
            "quota_reset": {"calendar_month": {"day": 1}}
        }}),
    );
    let plan_id = plan["id"].as_str().unwrap();
    assert!(plan_id.starts_with("plan_"), "{plan}");
    assert_eq!(plan["quotas"][0]["overageUnitPriceMicros"], "500");

    let tenant = ok(
        &server,
        &admin,
        "tollgate.v1.Billing/CreateTenant",
        json!({"tenant": {"external_id": "cus_123", "email": "ops@acme.test",
                          "company": "Acme", "plan_id": plan_id}}),
    );
    let tenant_id = tenant["id"].as_str().unwrap();
    assert!(tenant_id.starts_with("ten_"));
    assert_eq!(tenant["status"], "TENANT_STATUS_ACTIVE");

    let created = ok(
        &server,
        &admin,
        "tollgate.v1.Keys/CreateKey",
        json!({"key": {"tenant_id": tenant_id, "name": "production"}}),
    );
    let secret = created["secret"].as_str().unwrap().to_owned();
    let key_id = created["key"]["id"].as_str().unwrap().to_owned();
    assert!(
        secret.starts_with("tg_live_") && secret.len() >= 8 + 43,
        "{secret}"
    );
    assert!(secret.starts_with(created["key"]["prefix"].as_str().unwrap()));

    let out = call(
        &server,
        Some(&admin),
        "tollgate.v1.Keys/GetKey",
        json!({"id": key_id}),
    );
    assert!(out.status.success());
    let got = String::from_utf8_lossy(&out.stdout);
    assert!(
        !got.contains(&secret) && !got.contains("secret"),
        "GetKey leaked: {got}"
    );
    let listed = ok(
        &server,
        &admin,
        "tollgate.v1.Keys/ListKeys",
        json!({"tenant_id": tenant_id}),
    );
    assert_eq!(listed["keys"][0]["id"], key_id.as_str());
    assert!(!listed.to_string().contains(&secret));

    let revoked = ok(
        &server,
        &admin,
        "tollgate.v1.Keys/RevokeKey",
        json!({"id": key_id}),
    );
    assert_eq!(revoked["status"], "KEY_STATUS_REVOKED");
    let again = ok(
        &server,
        &admin,
        "tollgate.v1.Keys/GetKey",
        json!({"id": key_id}),
    );
    assert_eq!(again["status"], "KEY_STATUS_REVOKED");
    assert!(again["revokeTime"].is_string());

    fails_with(
        &call(&server, None, "tollgate.v1.Plans/ListPlans", json!({})),
        "Unauthenticated",
    );
    fails_with(
        &call(
            &server,
            Some(&verify),
            "tollgate.v1.Plans/ListPlans",
            json!({}),
        ),
        "PermissionDenied",
    );
    fails_with(
        &call(
            &server,
            Some(&secret),
            "tollgate.v1.Plans/ListPlans",
            json!({}),
        ),
        "Unauthenticated",
    );
    let bad = call(
        &server,
        Some(&admin),
        "tollgate.v1.Plans/CreatePlan",
        json!({"plan": {"slug": "Pro"}}),
    );
    fails_with(&bad, "InvalidArgument");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("plan.slug"));

    let health = ok(
        &server,
        &admin,
        "grpc.health.v1.Health/Check",
        json!({"service": "tollgate.v1.Plans"}),
    );
    assert_eq!(health["status"], "SERVING");
    let out = call(&server, None, "grpc.health.v1.Health/Check", json!({}));
    assert!(out.status.success(), "health needs no token");

    let logs = server.logs().join("\n");
    assert!(
        !logs.contains(&secret) && !logs.contains(&admin),
        "a secret reached the logs"
    );
    server.stop();
}
