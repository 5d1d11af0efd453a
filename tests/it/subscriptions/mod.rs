//! Subscriptions through the gRPC API, on both storage backends: a new
//! customer becomes a tenant on the mapped plan, an unmapped product waits
//! for its mapping, upgrades reach the very next Verify, cancellation keeps
//! access until the period ends, revocation ends it at once, and repeated or
//! out-of-order updates change nothing.
use std::time::{Duration, SystemTime};

use prost_types::Timestamp;
use tollgate::grpc::pb::{
    ApplyOutcome, ApplySubscriptionRequest, CreateKeyRequest, CreatePlanRequest, Customer,
    GetSubscriptionRequest, GetTenantRequest, Key, ListSubscriptionsRequest, MapProductRequest,
    Plan, SubscriptionStatus, Tenant, TenantStatus, VerifyCode, VerifyRequest,
    get_tenant_request::Lookup, verify_client::VerifyClient,
};
use tonic::Code;

use crate::helpers::{InProcess, TestDb, valid_plan};

mod customers;

/// A server with a `free` plan (no `model:gpt-4o`) and a `pro` plan (with
/// it), `prod_free` mapped to free; `prod_pro` is left unmapped.
async fn start(db: TestDb) -> (InProcess, String, String) {
    let server = InProcess::start(db).await;
    let mut ids = Vec::new();
    for (slug, features) in [("free", vec![]), ("pro", vec!["model:gpt-4o".to_owned()])] {
        let plan = server
            .plans()
            .create_plan(server.admin(CreatePlanRequest {
                plan: Some(Plan {
                    features,
                    ..valid_plan(slug)
                }),
            }))
            .await
            .unwrap()
            .into_inner();
        ids.push(plan.id);
    }
    map(&server, "prod_free", &ids[0]).await;
    let pro = ids.pop().unwrap();
    let free = ids.pop().unwrap();
    (server, free, pro)
}

async fn map(server: &InProcess, product: &str, plan_id: &str) {
    server
        .plans()
        .map_product(server.admin(MapProductRequest {
            provider: "polar".into(),
            product_id: product.into(),
            plan_id: plan_id.into(),
        }))
        .await
        .unwrap();
}

fn at(offset: Duration) -> Timestamp {
    (SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000) + offset).into()
}

/// An update of subscription `sub_1` of customer `cus_1`, modified at
/// `modified` seconds past a fixed instant.
fn update(product: &str, status: SubscriptionStatus, modified: u64) -> ApplySubscriptionRequest {
    ApplySubscriptionRequest {
        provider: "polar".into(),
        subscription_id: "sub_1".into(),
        customer: Some(Customer {
            external_id: "cus_1".into(),
            email: "buyer@example.test".into(),
            name: "Buyer".into(),
            provider_customer_id: String::new(),
        }),
        product_id: product.into(),
        status: status as i32,
        // Fixed, so that the same update is the same bytes every time.
        current_period_start: Some(at(Duration::ZERO)),
        current_period_end: Some(at(Duration::from_secs(3_650 * 86_400))),
        cancel_at_period_end: false,
        trial_end: None,
        modified_at: Some(at(Duration::from_secs(modified))),
        event_id: String::new(),
    }
}

async fn apply(server: &InProcess, r: ApplySubscriptionRequest) -> Result<i32, tonic::Status> {
    server
        .billing()
        .apply_subscription(server.admin(r))
        .await
        .map(|r| r.into_inner().outcome)
}

async fn tenant(server: &InProcess) -> Result<Tenant, tonic::Status> {
    server
        .billing()
        .get_tenant(server.admin(GetTenantRequest {
            lookup: Some(Lookup::ExternalId("cus_1".into())),
        }))
        .await
        .map(tonic::Response::into_inner)
}

/// A key for customer `cus_1`'s tenant; its secret.
async fn key(server: &InProcess) -> String {
    let tenant = tenant(server).await.unwrap();
    server
        .keys()
        .create_key(server.admin(CreateKeyRequest {
            key: Some(Key {
                tenant_id: tenant.id,
                name: "app".into(),
                ..Key::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .secret
}

async fn verify(server: &InProcess, secret: &str, features: &[&str]) -> i32 {
    VerifyClient::new(server.channel())
        .verify(server.verify(VerifyRequest {
            key: secret.into(),
            resource: "chat_requests".into(),
            required_features: features.iter().map(|f| f.to_string()).collect(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .code
}

crate::conformance!(
    a_new_customer_gets_a_tenant_on_the_mapped_plan,
    an_unmapped_product_waits_for_its_mapping,
    an_upgrade_reaches_the_next_verify,
    cancellation_keeps_access_until_the_period_ends,
    a_canceled_status_follows_its_period_end,
    revocation_ends_access_at_once,
    repeated_and_older_updates_change_nothing,
    an_event_id_reused_for_another_subscription_is_refused_by_name,
    bad_updates_write_nothing,
    concurrent_deliveries_make_one_tenant,
    a_paused_subscription_loses_access_until_resumed,
);

async fn a_new_customer_gets_a_tenant_on_the_mapped_plan(db: TestDb) {
    let (server, free, _) = start(db).await;
    let outcome = apply(&server, update("prod_free", SubscriptionStatus::Active, 1)).await;
    assert_eq!(outcome.unwrap(), ApplyOutcome::Applied as i32);
    let t = tenant(&server).await.unwrap();
    assert_eq!(t.plan_id, free);
    assert_eq!(t.status, TenantStatus::Active as i32);
    assert_eq!(t.email, "buyer@example.test");
    assert!(t.current_period_end.is_some());
    let secret = key(&server).await;
    assert_eq!(
        verify(&server, &secret, &[]).await,
        VerifyCode::Valid as i32
    );
    let s = server
        .billing()
        .get_subscription(server.admin(GetSubscriptionRequest {
            provider: "polar".into(),
            id: "sub_1".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((s.tenant_id, s.plan_id, s.pending), (t.id, free, false));
}

async fn an_unmapped_product_waits_for_its_mapping(db: TestDb) {
    let (server, _, pro) = start(db).await;
    let outcome = apply(&server, update("prod_pro", SubscriptionStatus::Active, 1)).await;
    assert_eq!(outcome.unwrap(), ApplyOutcome::Pending as i32);
    assert_eq!(tenant(&server).await.unwrap_err().code(), Code::NotFound);
    let listed = server
        .billing()
        .list_subscriptions(server.admin(ListSubscriptionsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .subscriptions;
    assert_eq!(listed.len(), 1);
    assert!(listed[0].pending);
    // The same update again is still pending, not an error.
    let outcome = apply(&server, update("prod_pro", SubscriptionStatus::Active, 1)).await;
    assert_eq!(outcome.unwrap(), ApplyOutcome::Pending as i32);

    map(&server, "prod_pro", &pro).await;
    let t = tenant(&server).await.unwrap();
    assert_eq!(t.plan_id, pro, "applied when the product was mapped");
    let secret = key(&server).await;
    assert_eq!(
        verify(&server, &secret, &["model:gpt-4o"]).await,
        VerifyCode::Valid as i32
    );
}

async fn an_upgrade_reaches_the_next_verify(db: TestDb) {
    let (server, _, pro) = start(db).await;
    apply(&server, update("prod_free", SubscriptionStatus::Active, 1))
        .await
        .unwrap();
    let secret = key(&server).await;
    assert_eq!(
        verify(&server, &secret, &["model:gpt-4o"]).await,
        VerifyCode::FeatureNotInPlan as i32
    );
    map(&server, "prod_pro", &pro).await;
    let outcome = apply(&server, update("prod_pro", SubscriptionStatus::Active, 2)).await;
    assert_eq!(outcome.unwrap(), ApplyOutcome::Applied as i32);
    assert_eq!(
        verify(&server, &secret, &["model:gpt-4o"]).await,
        VerifyCode::Valid as i32,
        "the very next Verify"
    );
}

async fn cancellation_keeps_access_until_the_period_ends(db: TestDb) {
    let (server, _, _) = start(db).await;
    apply(&server, update("prod_free", SubscriptionStatus::Active, 1))
        .await
        .unwrap();
    let secret = key(&server).await;
    // A subscription canceled at period end is still active at the
    // provider until then; the tenant is canceled, with access until the end.
    let end = SystemTime::now() + Duration::from_millis(3_000);
    let canceled = ApplySubscriptionRequest {
        current_period_end: Some(end.into()),
        cancel_at_period_end: true,
        ..update("prod_free", SubscriptionStatus::Active, 2)
    };
    assert_eq!(
        apply(&server, canceled).await.unwrap(),
        ApplyOutcome::Applied as i32
    );
    assert_eq!(
        tenant(&server).await.unwrap().status,
        TenantStatus::Canceled as i32
    );
    assert_eq!(
        verify(&server, &secret, &[]).await,
        VerifyCode::Valid as i32
    );
    tokio::time::sleep(end.duration_since(SystemTime::now()).unwrap_or_default()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        verify(&server, &secret, &[]).await,
        VerifyCode::TenantInactive as i32
    );
}

async fn a_canceled_status_follows_its_period_end(db: TestDb) {
    let (server, _, _) = start(db).await;
    let ended = SystemTime::now() - Duration::from_secs(60);
    let ends = SystemTime::now() + Duration::from_secs(3_600);
    apply(
        &server,
        ApplySubscriptionRequest {
            current_period_end: Some(ends.into()),
            ..update("prod_free", SubscriptionStatus::Canceled, 1)
        },
    )
    .await
    .unwrap();
    let secret = key(&server).await;
    assert_eq!(
        verify(&server, &secret, &[]).await,
        VerifyCode::Valid as i32
    );
    apply(
        &server,
        ApplySubscriptionRequest {
            current_period_end: Some(ended.into()),
            ..update("prod_free", SubscriptionStatus::Canceled, 2)
        },
    )
    .await
    .unwrap();
    assert_eq!(
        verify(&server, &secret, &[]).await,
        VerifyCode::TenantInactive as i32
    );
}

async fn revocation_ends_access_at_once(db: TestDb) {
    let (server, _, _) = start(db).await;
    apply(&server, update("prod_free", SubscriptionStatus::Active, 1))
        .await
        .unwrap();
    let secret = key(&server).await;
    assert_eq!(
        verify(&server, &secret, &[]).await,
        VerifyCode::Valid as i32
    );
    apply(&server, update("prod_free", SubscriptionStatus::Revoked, 2))
        .await
        .unwrap();
    assert_eq!(
        verify(&server, &secret, &[]).await,
        VerifyCode::TenantInactive as i32
    );
}

async fn repeated_and_older_updates_change_nothing(db: TestDb) {
    let (server, _, _) = start(db).await;
    let first = update("prod_free", SubscriptionStatus::Active, 10);
    assert_eq!(
        apply(&server, first.clone()).await.unwrap(),
        ApplyOutcome::Applied as i32
    );
    let after_first = tenant(&server).await.unwrap();
    assert_eq!(
        apply(&server, first.clone()).await.unwrap(),
        ApplyOutcome::Unchanged as i32
    );
    assert_eq!(tenant(&server).await.unwrap(), after_first, "untouched");

    let newer = update("prod_free", SubscriptionStatus::PastDue, 20);
    assert_eq!(
        apply(&server, newer).await.unwrap(),
        ApplyOutcome::Applied as i32
    );
    let after_newer = tenant(&server).await.unwrap();
    assert_eq!(after_newer.status, TenantStatus::PastDue as i32);
    // An older update arriving late never rolls the tenant back.
    let older = update("prod_free", SubscriptionStatus::Revoked, 15);
    assert_eq!(
        apply(&server, older).await.unwrap(),
        ApplyOutcome::Stale as i32
    );
    assert_eq!(tenant(&server).await.unwrap(), after_newer);

    // An event applied once is recognized even if the subscription changed
    // in between.
    let event = ApplySubscriptionRequest {
        event_id: "evt_1".into(),
        ..update("prod_free", SubscriptionStatus::Active, 30)
    };
    assert_eq!(
        apply(&server, event.clone()).await.unwrap(),
        ApplyOutcome::Applied as i32
    );
    apply(
        &server,
        update("prod_free", SubscriptionStatus::PastDue, 40),
    )
    .await
    .unwrap();
    let before = tenant(&server).await.unwrap();
    assert_eq!(
        apply(&server, event).await.unwrap(),
        ApplyOutcome::Unchanged as i32
    );
    assert_eq!(tenant(&server).await.unwrap(), before);
}

async fn an_event_id_reused_for_another_subscription_is_refused_by_name(db: TestDb) {
    let (server, _, _) = start(db).await;
    let first = ApplySubscriptionRequest {
        event_id: "evt_1".into(),
        ..update("prod_free", SubscriptionStatus::Active, 1)
    };
    assert_eq!(
        apply(&server, first.clone()).await.unwrap(),
        ApplyOutcome::Applied as i32
    );
    let subscription = |id: &str| {
        let mut billing = server.billing();
        let request = server.admin(GetSubscriptionRequest {
            provider: "polar".into(),
            id: id.into(),
        });
        async move { billing.get_subscription(request).await }
    };
    let before = subscription("sub_1").await.unwrap().into_inner();
    // The same event id on another subscription: never INTERNAL (which the
    // adapter would answer 503, and Polar redeliver forever).
    let reused = ApplySubscriptionRequest {
        subscription_id: "sub_2".into(),
        ..first.clone()
    };
    let status = apply(&server, reused).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("event_id evt_1") && status.message().contains("sub_1"),
        "{status:?}"
    );
    let missing = subscription("sub_2").await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    // Once sub_2 exists the reused id is still refused, and for sub_1 it
    // is still a redelivery.
    let status = apply(
        &server,
        ApplySubscriptionRequest {
            subscription_id: "sub_2".into(),
            ..update("prod_free", SubscriptionStatus::Active, 2)
        },
    )
    .await;
    assert_eq!(status.unwrap(), ApplyOutcome::Applied as i32);
    let reused_on_existing = ApplySubscriptionRequest {
        subscription_id: "sub_2".into(),
        ..first.clone()
    };
    let status = apply(&server, reused_on_existing).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(
        apply(&server, first).await.unwrap(),
        ApplyOutcome::Unchanged as i32
    );
    assert_eq!(subscription("sub_1").await.unwrap().into_inner(), before);
}

async fn bad_updates_write_nothing(db: TestDb) {
    let (server, _, _) = start(db).await;
    let good = || update("prod_free", SubscriptionStatus::Active, 1);
    let cases: Vec<(ApplySubscriptionRequest, &str)> = vec![
        (
            ApplySubscriptionRequest {
                provider: String::new(),
                ..good()
            },
            "provider",
        ),
        (
            ApplySubscriptionRequest {
                provider: "stripe".into(),
                ..good()
            },
            "provider",
        ),
        (
            ApplySubscriptionRequest {
                subscription_id: String::new(),
                ..good()
            },
            "subscription_id",
        ),
        (
            ApplySubscriptionRequest {
                customer: None,
                ..good()
            },
            "customer",
        ),
        (
            ApplySubscriptionRequest {
                customer: Some(Customer {
                    external_id: String::new(),
                    ..Customer::default()
                }),
                ..good()
            },
            "customer.external_id",
        ),
        (
            ApplySubscriptionRequest {
                customer: Some(Customer {
                    external_id: "cus_1".into(),
                    email: "nope".into(),
                    name: String::new(),
                    provider_customer_id: String::new(),
                }),
                ..good()
            },
            "customer.email",
        ),
        (
            ApplySubscriptionRequest {
                product_id: String::new(),
                ..good()
            },
            "product_id",
        ),
        (
            ApplySubscriptionRequest {
                status: 0,
                ..good()
            },
            "status",
        ),
        (
            ApplySubscriptionRequest {
                current_period_end: Some(at(Duration::ZERO)),
                ..good()
            },
            "current_period_end",
        ),
        (
            ApplySubscriptionRequest {
                current_period_start: None,
                ..good()
            },
            "current_period_end",
        ),
        (
            ApplySubscriptionRequest {
                modified_at: None,
                ..good()
            },
            "modified_at",
        ),
    ];
    for (request, field) in cases {
        let status = apply(&server, request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(field), "{field}: {status:?}");
    }
    let listed = server
        .billing()
        .list_subscriptions(server.admin(ListSubscriptionsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .subscriptions;
    assert!(listed.is_empty(), "nothing was written");
    assert_eq!(tenant(&server).await.unwrap_err().code(), Code::NotFound);
    let status = server
        .billing()
        .get_subscription(server.admin(GetSubscriptionRequest {
            provider: "polar".into(),
            id: "sub_1".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = server
        .billing()
        .get_subscription(server.admin(GetSubscriptionRequest {
            provider: "paypal".into(),
            id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("provider") && status.message().contains("id"),
        "{status:?}"
    );
    let status = server
        .billing()
        .list_subscriptions(server.admin(ListSubscriptionsRequest {
            tenant_id: "nope".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("tenant_id"), "{status:?}");
}

async fn concurrent_deliveries_make_one_tenant(db: TestDb) {
    let (server, _, _) = start(db).await;
    let server = std::sync::Arc::new(server);
    // The same update delivered eight times at once, and eight newer ones.
    let calls: Vec<_> = (0..16)
        .map(|i| {
            let server = server.clone();
            let status = if i % 2 == 0 {
                SubscriptionStatus::Trialing
            } else {
                SubscriptionStatus::Active
            };
            tokio::spawn(async move {
                let r = update("prod_free", status, 1 + (i % 2));
                apply(&server, r).await.unwrap()
            })
        })
        .collect();
    let mut applied = 0;
    for call in calls {
        if call.await.unwrap() == ApplyOutcome::Applied as i32 {
            applied += 1;
        }
    }
    assert!((1..=2).contains(&applied), "{applied} applied");
    let tenants = server
        .billing()
        .list_tenants(server.admin(tollgate::grpc::pb::ListTenantsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .tenants;
    assert_eq!(tenants.len(), 1, "one tenant for one customer");
    assert_eq!(
        tenants[0].status,
        TenantStatus::Active as i32,
        "the newest wins"
    );
}

async fn a_paused_subscription_loses_access_until_resumed(db: TestDb) {
    let (server, _, _) = start(db).await;
    apply(&server, update("prod_free", SubscriptionStatus::Active, 1))
        .await
        .unwrap();
    let secret = key(&server).await;
    apply(&server, update("prod_free", SubscriptionStatus::Paused, 2))
        .await
        .unwrap();
    assert_eq!(
        tenant(&server).await.unwrap().status,
        TenantStatus::Paused as i32
    );
    assert_eq!(
        verify(&server, &secret, &[]).await,
        VerifyCode::TenantInactive as i32
    );
    apply(&server, update("prod_free", SubscriptionStatus::Active, 3))
        .await
        .unwrap();
    assert_eq!(
        verify(&server, &secret, &[]).await,
        VerifyCode::Valid as i32
    );
}
