//! The embedded default: no database URL, a SQLite file under
//! `./tollgate-data/`, and everything still there after a restart.
use tollgate::grpc::pb::{
    CreateKeyRequest, CreatePlanRequest, CreateTenantRequest, GetKeyRequest, GetPlanRequest,
    GetTenantRequest, Key, ListKeysRequest, Plan, Price, QuotaReset, RateLimit, Tenant,
    billing_client::BillingClient, get_plan_request, get_tenant_request, keys_client::KeysClient,
    plans_client::PlansClient, quota_reset,
};
use tonic::transport::Channel;

use crate::helpers::{Server, tollgate, with_token};

async fn channel(server: &Server) -> Channel {
    Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_on_the_same_sqlite_file_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let out = tollgate()
        .current_dir(dir.path())
        .args(["admin", "bootstrap"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admin = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(
        dir.path().join("tollgate-data/tollgate.db").is_file(),
        "the embedded default lives in ./tollgate-data"
    );

    let server = Server::start_in(dir.path(), &[]);
    let ch = channel(&server).await;
    let plan = PlansClient::new(ch.clone())
        .create_plan(with_token(
            CreatePlanRequest {
                plan: Some(Plan {
                    slug: "starter".into(),
                    display_name: "Starter".into(),
                    price: Some(Price {
                        amount_minor: 900,
                        currency: "EUR".into(),
                    }),
                    billing_interval: 1,
                    trial_days: 7,
                    rate_limit: Some(RateLimit {
                        requests_per_minute: 60,
                        burst: 10,
                    }),
                    features: vec!["geocode:batch".into()],
                    quota_reset: Some(QuotaReset {
                        schedule: Some(quota_reset::Schedule::BillingPeriod(
                            quota_reset::BillingPeriod {},
                        )),
                    }),
                    ..Plan::default()
                }),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    let tenant = BillingClient::new(ch.clone())
        .create_tenant(with_token(
            CreateTenantRequest {
                tenant: Some(Tenant {
                    external_id: "cus_restart".into(),
                    plan_id: plan.id.clone(),
                    metadata: [("region".to_string(), "eu".to_string())].into(),
                    ..Tenant::default()
                }),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    let key = KeysClient::new(ch.clone())
        .create_key(with_token(
            CreateKeyRequest {
                key: Some(Key {
                    tenant_id: tenant.id.clone(),
                    name: "ci".into(),
                    environment: 2,
                    ..Key::default()
                }),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    drop(ch);
    server.stop();

    let server = Server::start_in(dir.path(), &[]);
    let ch = channel(&server).await;
    let plan_again = PlansClient::new(ch.clone())
        .get_plan(with_token(
            GetPlanRequest {
                lookup: Some(get_plan_request::Lookup::Slug("starter".into())),
            },
            &admin,
        ))
        .await
        .expect("the admin credential and the plan survive")
        .into_inner();
    assert_eq!(plan_again, plan);
    let tenant_again = BillingClient::new(ch.clone())
        .get_tenant(with_token(
            GetTenantRequest {
                lookup: Some(get_tenant_request::Lookup::ExternalId("cus_restart".into())),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tenant_again, tenant);
    assert_eq!(tenant_again.status, 1, "7 trial days: trialing");
    let mut keys = KeysClient::new(ch.clone());
    let key_again = keys
        .get_key(with_token(GetKeyRequest { id: key.id.clone() }, &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(key_again, key);
    let listed = keys
        .list_keys(with_token(
            ListKeysRequest {
                tenant_id: tenant.id.clone(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.keys, vec![key]);
    drop(ch);
    server.stop();
}
