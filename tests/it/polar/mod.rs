//! The Polar adapter as Polar meets it: both real binaries (the server on
//! PostgreSQL, `tollgate-polar` in front), and deliveries signed by the
//! reference Standard Webhooks library with the UTF-8 bytes of the
//! endpoint's secret, as Polar signs them.
mod adapter;

use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tollgate::grpc::pb::{
    self, CreateKeyRequest, CreatePlanRequest, GetTenantRequest, ListSubscriptionsRequest,
    ListTenantsRequest, MapProductRequest, Plan, TenantStatus, VerifyCode, VerifyRequest,
    billing_client::BillingClient, get_tenant_request::Lookup, keys_client::KeysClient,
    plans_client::PlansClient, verify_client::VerifyClient,
};
use tonic::transport::Channel;

pub use adapter::{Adapter, SECRET, deliver_to, unknown_customer_update};

use crate::helpers::{Server, TestDb, run_tollgate, valid_plan, with_token};

/// The server on PostgreSQL with plans `free` (no `model:gpt-4o`) and `pro`
/// mapped from Polar's `prod_free` and `prod_pro`, and the adapter.
struct Stack {
    db: TestDb,
    server: Option<Server>,
    adapter: Adapter,
    admin: String,
    verify_token: String,
    channel: Channel,
    free: String,
    pro: String,
}

impl Stack {
    async fn start() -> Self {
        let db = TestDb::postgres().await;
        let admin = run_tollgate(&db, &["admin", "bootstrap"]).trim().to_owned();
        let verify_token = run_tollgate(&db, &["admin", "create-credential", "--scope", "verify"])
            .trim()
            .to_owned();
        let server = Server::start(&["--database-url", db.url()]);
        let adapter = Adapter::start(&server.target(), &admin, SECRET);
        let channel = Channel::from_shared(format!("http://{}", server.target()))
            .unwrap()
            .connect_lazy();
        let mut stack = Self {
            db,
            server: Some(server),
            adapter,
            admin,
            verify_token,
            channel,
            free: String::new(),
            pro: String::new(),
        };
        stack.free = stack.plan("free", vec![]).await;
        stack.pro = stack.plan("pro", vec!["model:gpt-4o".into()]).await;
        stack.map("prod_free", &stack.free.clone()).await;
        stack.map("prod_pro", &stack.pro.clone()).await;
        stack
    }

    fn admin<T>(&self, message: T) -> tonic::Request<T> {
        with_token(message, &self.admin)
    }

    async fn plan(&self, slug: &str, features: Vec<String>) -> String {
        PlansClient::new(self.channel.clone())
            .create_plan(self.admin(CreatePlanRequest {
                plan: Some(Plan {
                    features,
                    ..valid_plan(slug)
                }),
            }))
            .await
            .unwrap()
            .into_inner()
            .id
    }

    async fn map(&self, product: &str, plan_id: &str) {
        PlansClient::new(self.channel.clone())
            .map_product(self.admin(MapProductRequest {
                provider: "polar".into(),
                product_id: product.into(),
                plan_id: plan_id.into(),
            }))
            .await
            .unwrap();
    }

    async fn tenant(&self, external_id: &str) -> Result<pb::Tenant, tonic::Status> {
        BillingClient::new(self.channel.clone())
            .get_tenant(self.admin(GetTenantRequest {
                lookup: Some(Lookup::ExternalId(external_id.into())),
            }))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn tenants(&self) -> Vec<pb::Tenant> {
        BillingClient::new(self.channel.clone())
            .list_tenants(self.admin(ListTenantsRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .tenants
    }

    async fn subscriptions(&self) -> Vec<pb::Subscription> {
        BillingClient::new(self.channel.clone())
            .list_subscriptions(self.admin(ListSubscriptionsRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .subscriptions
    }

    /// A new key of the customer's tenant: its secret.
    async fn key(&self, external_id: &str) -> String {
        let tenant = self.tenant(external_id).await.unwrap();
        KeysClient::new(self.channel.clone())
            .create_key(self.admin(CreateKeyRequest {
                key: Some(pb::Key {
                    tenant_id: tenant.id,
                    name: "app".into(),
                    ..Default::default()
                }),
            }))
            .await
            .unwrap()
            .into_inner()
            .secret
    }

    async fn verify(&self, key: &str, features: &[&str]) -> VerifyCode {
        let code = VerifyClient::new(self.channel.clone())
            .verify(with_token(
                VerifyRequest {
                    key: key.into(),
                    resource: "chat_requests".into(),
                    required_features: features.iter().map(|f| f.to_string()).collect(),
                    ..Default::default()
                },
                &self.verify_token,
            ))
            .await
            .unwrap()
            .into_inner()
            .code;
        VerifyCode::try_from(code).unwrap()
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap()
}

/// A fixed instant plus `n` seconds: the order of Polar's modifications.
fn modified(n: i64) -> String {
    rfc3339(OffsetDateTime::from_unix_timestamp(1_793_491_200 + n).unwrap())
}

/// A `subscription.*` delivery as Polar sends it: subscription `sub_1` of
/// customer `pc_1` (external id `cus_acme`), its period from a day ago to
/// 30 days ahead, modified at `modified(n)`.
fn subscription(kind: &str, product: &str, status: &str, n: i64) -> Value {
    let now = OffsetDateTime::now_utc();
    json!({
        "type": kind,
        "timestamp": rfc3339(now),
        "api_version": "2025-01-01",
        "data": {
            "created_at": modified(0),
            "modified_at": modified(n),
            "id": "sub_1",
            "amount": 4900,
            "currency": "usd",
            "recurring_interval": "month",
            "status": status,
            "current_period_start": rfc3339(now - time::Duration::days(1)),
            "current_period_end": rfc3339(now + time::Duration::days(30)),
            "trial_start": null,
            "trial_end": null,
            "cancel_at_period_end": false,
            "canceled_at": null,
            "started_at": modified(0),
            "ends_at": null,
            "ended_at": null,
            "customer_id": "pc_1",
            "product_id": product,
            "discount_id": null,
            "checkout_id": "chk_1",
            "metadata": {},
            "customer": {
                "id": "pc_1",
                "created_at": modified(0),
                "modified_at": null,
                "metadata": {},
                "external_id": "cus_acme",
                "email": "ops@acme.test",
                "email_verified": true,
                "name": "Acme Ops",
                "organization_id": "org_1",
                "deleted_at": null
            },
            "product": {"id": product, "name": product},
        }
    })
}

async fn stack_with_key() -> (Stack, String) {
    let stack = Stack::start().await;
    let created = stack.adapter.deliver(
        "msg_created",
        &subscription("subscription.created", "prod_free", "incomplete", 1),
    );
    assert_eq!(created.accepted(), "applied");
    let active = stack.adapter.deliver(
        "msg_active",
        &subscription("subscription.active", "prod_free", "active", 2),
    );
    assert_eq!(active.accepted(), "applied");
    let key = stack.key("cus_acme").await;
    (stack, key)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_purchase_an_upgrade_a_cancellation_and_a_revocation_reach_verify() {
    let (stack, key) = stack_with_key().await;
    let tenant = stack.tenant("cus_acme").await.unwrap();
    assert_eq!(tenant.plan_id, stack.free);
    assert_eq!(tenant.status, TenantStatus::Active as i32);
    assert_eq!(stack.verify(&key, &[]).await, VerifyCode::Valid);
    assert_eq!(
        stack.verify(&key, &["model:gpt-4o"]).await,
        VerifyCode::FeatureNotInPlan
    );

    let upgrade = subscription("subscription.updated", "prod_pro", "active", 3);
    assert_eq!(
        stack.adapter.deliver("msg_upgrade", &upgrade).accepted(),
        "applied"
    );
    assert_eq!(
        stack.verify(&key, &["model:gpt-4o"]).await,
        VerifyCode::Valid
    );

    // Canceled at the end of a period that ends in 6 s: access until then.
    let period_end = OffsetDateTime::now_utc() + time::Duration::seconds(6);
    let mut canceled = subscription("subscription.canceled", "prod_pro", "active", 4);
    canceled["data"]["cancel_at_period_end"] = json!(true);
    canceled["data"]["ends_at"] = json!(rfc3339(period_end));
    canceled["data"]["current_period_end"] = json!(rfc3339(period_end));
    assert_eq!(
        stack.adapter.deliver("msg_cancel", &canceled).accepted(),
        "applied"
    );
    let tenant = stack.tenant("cus_acme").await.unwrap();
    assert_eq!(tenant.status, TenantStatus::Canceled as i32);
    assert_eq!(stack.verify(&key, &[]).await, VerifyCode::Valid);
    let wait = period_end - OffsetDateTime::now_utc() + time::Duration::seconds(1);
    tokio::time::sleep(wait.try_into().unwrap_or_default()).await;
    assert_eq!(stack.verify(&key, &[]).await, VerifyCode::TenantInactive);

    // Uncanceled (with a period that has not ended): access again.
    let uncanceled = subscription("subscription.uncanceled", "prod_pro", "active", 5);
    assert_eq!(
        stack
            .adapter
            .deliver("msg_uncancel", &uncanceled)
            .accepted(),
        "applied"
    );
    assert_eq!(stack.verify(&key, &[]).await, VerifyCode::Valid);

    // Revoked: canceled at once, access ends with it.
    let mut revoked = subscription("subscription.revoked", "prod_pro", "canceled", 6);
    revoked["data"]["ended_at"] = json!(rfc3339(OffsetDateTime::now_utc()));
    assert_eq!(
        stack.adapter.deliver("msg_revoke", &revoked).accepted(),
        "applied"
    );
    assert_eq!(stack.verify(&key, &[]).await, VerifyCode::TenantInactive);
    assert_eq!(
        stack.tenant("cus_acme").await.unwrap().status,
        TenantStatus::Revoked as i32
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn paused_and_past_due_follow_the_readmes_mapping() {
    let (stack, key) = stack_with_key().await;
    let past_due = subscription("subscription.past_due", "prod_free", "past_due", 3);
    assert_eq!(
        stack.adapter.deliver("msg_past_due", &past_due).accepted(),
        "applied"
    );
    assert_eq!(
        stack.verify(&key, &[]).await,
        VerifyCode::Valid,
        "past_due keeps access"
    );
    let paused = subscription("subscription.paused", "prod_free", "paused", 4);
    assert_eq!(
        stack.adapter.deliver("msg_paused", &paused).accepted(),
        "applied"
    );
    assert_eq!(stack.verify(&key, &[]).await, VerifyCode::TenantInactive);
    let resumed = subscription("subscription.resumed", "prod_free", "active", 5);
    assert_eq!(
        stack.adapter.deliver("msg_resumed", &resumed).accepted(),
        "applied"
    );
    assert_eq!(stack.verify(&key, &[]).await, VerifyCode::Valid);
    let unpaid = subscription("subscription.updated", "prod_free", "unpaid", 6);
    assert_eq!(
        stack.adapter.deliver("msg_unpaid", &unpaid).accepted(),
        "applied"
    );
    assert_eq!(stack.verify(&key, &[]).await, VerifyCode::TenantInactive);
}

#[tokio::test(flavor = "multi_thread")]
async fn redeliveries_and_late_updates_change_nothing() {
    let (stack, _) = stack_with_key().await;
    let active = subscription("subscription.active", "prod_free", "active", 2);
    // The same delivery again: applied once.
    assert_eq!(
        stack.adapter.deliver("msg_active", &active).accepted(),
        "unchanged"
    );
    // Even after the tenant changed in between, a redelivery changes nothing.
    BillingClient::new(stack.channel.clone())
        .change_plan(stack.admin(pb::ChangePlanRequest {
            tenant_id: stack.tenant("cus_acme").await.unwrap().id,
            plan_id: stack.pro.clone(),
        }))
        .await
        .unwrap();
    assert_eq!(
        stack.adapter.deliver("msg_active", &active).accepted(),
        "unchanged"
    );
    assert_eq!(stack.tenant("cus_acme").await.unwrap().plan_id, stack.pro);

    // A newer update, then an older one arriving late: the newer stands.
    let newer = subscription("subscription.updated", "prod_free", "active", 10);
    assert_eq!(
        stack.adapter.deliver("msg_newer", &newer).accepted(),
        "applied"
    );
    let older = subscription("subscription.updated", "prod_pro", "active", 9);
    assert_eq!(
        stack.adapter.deliver("msg_older", &older).accepted(),
        "stale"
    );
    assert_eq!(stack.tenant("cus_acme").await.unwrap().plan_id, stack.free);
    let stored = stack.subscriptions().await;
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].modified_at.as_ref().unwrap().seconds,
        1_793_491_210
    );

    // A delivery id already applied, on another subscription: the server
    // refuses it by name; the adapter acknowledges it (never 503, which
    // Polar would redeliver forever) and logs why.
    let mut other = subscription("subscription.created", "prod_free", "active", 11);
    other["data"]["id"] = json!("sub_2");
    let reused = stack.adapter.deliver("msg_newer", &other);
    assert_eq!(
        (reused.status, reused.body["outcome"].as_str()),
        (200, Some("refused")),
        "{reused:?}"
    );
    assert!(
        reused.body["error"].as_str().unwrap().contains("event_id"),
        "{reused:?}"
    );
    assert_eq!(stack.subscriptions().await.len(), 1);
    assert!(
        stack
            .adapter
            .logs()
            .contains("delivery acknowledged, not applied"),
        "{}",
        stack.adapter.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_failing_verification_get_403_and_change_nothing() {
    let stack = Stack::start().await;
    let event = subscription("subscription.created", "prod_free", "active", 1).to_string();
    let refusals: [(&str, &[&str]); 7] = [
        ("a tampered body", &["--tamper"]),
        ("a timestamp 6 minutes old", &["--age-seconds", "360"]),
        ("a timestamp 6 minutes ahead", &["--age-seconds", "-360"]),
        ("no webhook-id", &["--drop-header", "webhook-id"]),
        (
            "no webhook-timestamp",
            &["--drop-header", "webhook-timestamp"],
        ),
        (
            "no webhook-signature",
            &["--drop-header", "webhook-signature"],
        ),
        (
            "no headers at all",
            &[
                "--drop-header",
                "webhook-id",
                "--drop-header",
                "webhook-timestamp",
                "--drop-header",
                "webhook-signature",
            ],
        ),
    ];
    for (what, options) in refusals {
        let answer = stack.adapter.deliver_with(SECRET, "msg_1", &event, options);
        assert_eq!(answer.status, 403, "{what}: {answer:?}");
    }
    let wrong = stack
        .adapter
        .deliver_with("polar_whs_someone_else", "msg_1", &event, &[]);
    assert_eq!(wrong.status, 403, "a wrong secret: {wrong:?}");
    assert!(stack.tenants().await.is_empty());
    assert!(stack.subscriptions().await.is_empty());

    // Signed right but unreadable: acknowledged (200, no redelivery could
    // mend it), said why, and logged.
    let not_json =
        stack
            .adapter
            .deliver_with(SECRET, "msg_2", "{\"type\": \"subscription.created\",", &[]);
    assert_eq!(
        (not_json.status, not_json.body["outcome"].as_str()),
        (200, Some("invalid")),
        "{not_json:?}"
    );
    let mut no_id = subscription("subscription.created", "prod_free", "active", 1);
    no_id["data"].as_object_mut().unwrap().remove("id");
    let missing = stack.adapter.deliver("msg_3", &no_id);
    assert_eq!(
        (missing.status, missing.body["outcome"].as_str()),
        (200, Some("invalid")),
        "{missing:?}"
    );
    assert!(
        missing.body["error"].as_str().unwrap().contains("`id`"),
        "{missing:?}"
    );
    // A type Tollgate does not follow: 202, ignored, and logged by type.
    let other = json!({"type": "order.paid", "timestamp": modified(0),
                       "api_version": "2025-01-01", "data": {"id": "ord_1"}});
    assert_eq!(stack.adapter.deliver("msg_4", &other).accepted(), "ignored");
    // Over the 1 MiB cap: refused before anything is read.
    let huge = json!({"type": "order.paid", "data": {"pad": "x".repeat(1_100_000)}});
    assert_eq!(stack.adapter.deliver("msg_5", &huge).status, 413);
    assert!(stack.tenants().await.is_empty());
    assert!(stack.subscriptions().await.is_empty());

    // The same event signed right applies, even behind a wrong signature
    // (several `v1` entries: one must match).
    let answer = stack
        .adapter
        .deliver_with(SECRET, "msg_1", &event, &["--extra-signature"]);
    assert_eq!(answer.accepted(), "applied");
    assert_eq!(stack.tenants().await.len(), 1);

    let logs = stack.adapter.logs();
    assert!(
        logs.contains("order.paid"),
        "the ignored type is logged: {logs}"
    );
    assert!(logs.contains("failed verification"), "{logs}");
    assert!(!logs.contains(SECRET), "the secret is never logged");
    assert!(!logs.contains("v1,"), "no signature is logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_whsec_secret_is_used_decoded() {
    let stack = Stack::start().await;
    // base64 of "a Standard Webhooks key".
    let whsec = "whsec_YSBTdGFuZGFyZCBXZWJob29rcyBrZXk=";
    let adapter = Adapter::start(
        &stack.server.as_ref().unwrap().target(),
        &stack.admin,
        whsec,
    );
    let event = subscription("subscription.created", "prod_free", "active", 1).to_string();
    // Signed with the string's UTF-8 bytes as the key, as Polar would sign
    // with a secret of its own: another key, refused.
    let as_bytes = adapter.deliver_with(whsec, "msg_1", &event, &["--secret-bytes"]);
    assert_eq!(as_bytes.status, 403, "{as_bytes:?}");
    let decoded = adapter.deliver_with(whsec, "msg_1", &event, &[]);
    assert_eq!(decoded.accepted(), "applied");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unmapped_product_waits_for_its_mapping() {
    let stack = Stack::start().await;
    let event = subscription("subscription.created", "prod_team", "active", 1);
    assert_eq!(stack.adapter.deliver("msg_1", &event).accepted(), "pending");
    let logs = stack.adapter.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("prod_team") && l.contains("MapProduct")),
        "a log line names the product to map: {logs}"
    );
    assert_eq!(
        stack.tenant("cus_acme").await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    let team = stack.plan("team", vec!["model:gpt-4o".into()]).await;
    stack.map("prod_team", &team).await;
    let tenant = stack.tenant("cus_acme").await.unwrap();
    assert_eq!(tenant.plan_id, team);
    let key = stack.key("cus_acme").await;
    assert_eq!(
        stack.verify(&key, &["model:gpt-4o"]).await,
        VerifyCode::Valid
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn customer_updates_reach_the_tenant() {
    let (stack, _) = stack_with_key().await;
    let customer = |email: &str, n: i64| {
        json!({"type": "customer.updated", "timestamp": modified(n), "api_version": "2025-01-01",
               "data": {"id": "pc_1", "created_at": modified(0), "modified_at": modified(n),
                        "external_id": "cus_acme", "email": email, "name": format!("Name {n}"),
                        "email_verified": true, "metadata": {}, "organization_id": "org_1"}})
    };
    let answer = stack
        .adapter
        .deliver("msg_c1", &customer("billing@acme.test", 20));
    assert_eq!(answer.accepted(), "applied");
    let tenant = stack.tenant("cus_acme").await.unwrap();
    assert_eq!(
        (tenant.email.as_str(), tenant.name.as_str()),
        ("billing@acme.test", "Name 20")
    );
    let late = stack
        .adapter
        .deliver("msg_c0", &customer("old@acme.test", 19));
    assert_eq!(late.accepted(), "stale");
    assert_eq!(
        stack.tenant("cus_acme").await.unwrap().email,
        "billing@acme.test"
    );
    let mut stranger = customer("x@y.test", 21);
    stranger["data"]["id"] = json!("pc_unknown");
    stranger["data"]["external_id"] = Value::Null;
    assert_eq!(
        stack.adapter.deliver("msg_c2", &stranger).accepted(),
        "ignored"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_away_gets_503_and_the_redelivery_applies() {
    let mut stack = Stack::start().await;
    assert_eq!(stack.adapter.get("/readyz"), 200);
    let server = stack.server.take().unwrap();
    let addr = server.addr;
    server.stop();
    assert_eq!(stack.adapter.get("/healthz"), 200);
    assert_eq!(stack.adapter.get("/readyz"), 503);
    let event = subscription("subscription.created", "prod_free", "active", 1);
    let away = stack.adapter.deliver("msg_1", &event);
    assert_eq!(away.status, 503, "{away:?}");
    assert!(away.seconds < 2.0, "answered in {:.3} s", away.seconds);

    // Back where it was: Polar's redelivery (same id, signed anew) applies,
    // over the adapter's same channel.
    stack.server = Some(Server::start_at(
        addr,
        &["--database-url", stack.db.url()],
        &[],
    ));
    assert_eq!(stack.adapter.get("/readyz"), 200);
    assert_eq!(stack.adapter.deliver("msg_1", &event).accepted(), "applied");
    assert_eq!(stack.tenant("cus_acme").await.unwrap().plan_id, stack.free);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_does_not_answer_gets_503_within_2_s() {
    // Accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming() {
            held.push(stream);
        }
    });
    let adapter = Adapter::start(&addr.to_string(), "tg_admin_unused", SECRET);
    let event = subscription("subscription.created", "prod_free", "active", 1);
    let answer = adapter.deliver("msg_1", &event);
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(answer.seconds < 2.0, "answered in {:.3} s", answer.seconds);
    assert!(
        answer.seconds >= 0.4,
        "waited for its deadline: {:.3} s",
        answer.seconds
    );
}
