//! Customers through the gRPC API, on both storage backends: a customer
//! known only by the provider's id is found by it, a new customer's
//! concurrent subscriptions make one tenant, and customer updates follow
//! their modification time.
use std::time::Duration;

use tollgate::grpc::pb::{
    ApplyCustomerRequest, ApplyOutcome, ApplySubscriptionRequest, Customer, SubscriptionStatus,
    Tenant,
};
use tonic::Code;

use super::{apply, at, start, update};
use crate::helpers::{InProcess, TestDb};

crate::conformance!(
    a_customer_without_external_id_is_found_by_its_provider_id,
    a_new_customers_concurrent_subscriptions_make_one_tenant,
    customer_updates_follow_their_modification_time,
    bad_customer_updates_write_nothing,
);

/// Update `modified` of subscription `sub` of Polar customer `pc_1`, known
/// by that id alone unless `external_id` is given.
fn by_provider_id(sub: &str, external_id: &str, modified: u64) -> ApplySubscriptionRequest {
    ApplySubscriptionRequest {
        subscription_id: sub.into(),
        customer: Some(Customer {
            external_id: external_id.into(),
            provider_customer_id: "pc_1".into(),
            email: "buyer@example.test".into(),
            name: "Buyer".into(),
        }),
        ..update("prod_free", SubscriptionStatus::Active, modified)
    }
}

async fn all_tenants(server: &InProcess) -> Vec<Tenant> {
    server
        .billing()
        .list_tenants(server.admin(tollgate::grpc::pb::ListTenantsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .tenants
}

async fn a_customer_without_external_id_is_found_by_its_provider_id(db: TestDb) {
    let (server, _, _) = start(db).await;
    let outcome = apply(&server, by_provider_id("sub_1", "", 1)).await;
    assert_eq!(outcome.unwrap(), ApplyOutcome::Applied as i32);
    let first = all_tenants(&server).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].external_id, "", "no external id was given");
    // Another subscription of the same customer, then the customer gaining
    // an external id at the provider: still the same tenant, which takes
    // the external id.
    apply(&server, by_provider_id("sub_2", "", 2))
        .await
        .unwrap();
    apply(&server, by_provider_id("sub_2", "cus_1", 3))
        .await
        .unwrap();
    let after = all_tenants(&server).await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].id, first[0].id);
    assert_eq!(after[0].external_id, "cus_1");
    // Never by email: another customer with the same email is another tenant.
    let other = ApplySubscriptionRequest {
        subscription_id: "sub_3".into(),
        customer: Some(Customer {
            provider_customer_id: "pc_2".into(),
            email: "buyer@example.test".into(),
            ..Customer::default()
        }),
        ..update("prod_free", SubscriptionStatus::Active, 1)
    };
    apply(&server, other).await.unwrap();
    assert_eq!(all_tenants(&server).await.len(), 2);
}

async fn a_new_customers_concurrent_subscriptions_make_one_tenant(db: TestDb) {
    let (server, _, _) = start(db).await;
    let server = std::sync::Arc::new(server);
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let server = server.clone();
            tokio::spawn(async move {
                apply(&server, by_provider_id(&format!("sub_{i}"), "", 1))
                    .await
                    .unwrap()
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), ApplyOutcome::Applied as i32);
    }
    let tenants = all_tenants(&server).await;
    assert_eq!(tenants.len(), 1, "one tenant for one customer: {tenants:?}");
}

fn customer_update(email: &str, modified: u64) -> ApplyCustomerRequest {
    ApplyCustomerRequest {
        provider: "polar".into(),
        customer: Some(Customer {
            external_id: String::new(),
            provider_customer_id: "pc_1".into(),
            email: email.into(),
            name: format!("Name at {modified}"),
        }),
        modified_at: Some(at(Duration::from_secs(modified))),
    }
}

async fn apply_customer(server: &InProcess, r: ApplyCustomerRequest) -> Result<i32, tonic::Status> {
    server
        .billing()
        .apply_customer(server.admin(r))
        .await
        .map(|r| r.into_inner().outcome)
}

async fn customer_updates_follow_their_modification_time(db: TestDb) {
    let (server, _, _) = start(db).await;
    let unknown = apply_customer(&server, customer_update("a@example.test", 10))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    apply(&server, by_provider_id("sub_1", "", 1))
        .await
        .unwrap();
    let outcome = apply_customer(&server, customer_update("new@example.test", 10)).await;
    assert_eq!(outcome.unwrap(), ApplyOutcome::Applied as i32);
    let t = &all_tenants(&server).await[0];
    assert_eq!(
        (t.email.as_str(), t.name.as_str()),
        ("new@example.test", "Name at 10")
    );
    // The same update again (a redelivery), then an older one arriving late.
    let again = apply_customer(&server, customer_update("new@example.test", 10)).await;
    assert_eq!(again.unwrap(), ApplyOutcome::Unchanged as i32);
    let older = apply_customer(&server, customer_update("old@example.test", 5)).await;
    assert_eq!(older.unwrap(), ApplyOutcome::Stale as i32);
    let t = &all_tenants(&server).await[0];
    assert_eq!(
        (t.email.as_str(), t.name.as_str()),
        ("new@example.test", "Name at 10")
    );
    let newer = apply_customer(&server, customer_update("newer@example.test", 11)).await;
    assert_eq!(newer.unwrap(), ApplyOutcome::Applied as i32);
    assert_eq!(all_tenants(&server).await[0].email, "newer@example.test");
}

async fn bad_customer_updates_write_nothing(db: TestDb) {
    let (server, _, _) = start(db).await;
    apply(&server, by_provider_id("sub_1", "", 1))
        .await
        .unwrap();
    let before = all_tenants(&server).await;
    let cases = [
        (
            ApplyCustomerRequest {
                provider: String::new(),
                ..customer_update("a@example.test", 10)
            },
            "provider",
        ),
        (
            ApplyCustomerRequest {
                customer: None,
                ..customer_update("a@example.test", 10)
            },
            "customer",
        ),
        (
            ApplyCustomerRequest {
                customer: Some(Customer {
                    external_id: "cus_1".into(),
                    ..Customer::default()
                }),
                ..customer_update("a@example.test", 10)
            },
            "customer.provider_customer_id",
        ),
        (customer_update("not an email", 10), "customer.email"),
        (
            ApplyCustomerRequest {
                modified_at: None,
                ..customer_update("a@example.test", 10)
            },
            "modified_at",
        ),
    ];
    for (request, field) in cases {
        let status = apply_customer(&server, request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().contains(field), "{field}: {status:?}");
    }
    assert_eq!(all_tenants(&server).await, before);
}
