//! The catalog's rules through the gRPC API: uniqueness, archived plans,
//! trials, key secrets, masked updates, product mappings and pagination.
use std::collections::{HashMap, HashSet};

use prost_types::{Duration as PbDuration, FieldMask, Timestamp as PbTimestamp};
use tollgate::grpc::pb::{self, get_tenant_request, quota_reset::Schedule};
use tonic::{Code, Response, Status};

use crate::helpers::{InProcess, TestDb, valid_plan};

crate::conformance!(
    duplicates_already_exist,
    archived_plans_take_no_one_new,
    archiving_twice_is_a_no_op,
    trial_days_make_trialing_tenants,
    key_secrets_are_shown_once,
    revoked_keys_stay_revoked,
    rotating_changes_secret_and_prefix,
    updates_change_only_masked_fields,
    product_mappings,
    tenant_pages_see_each_tenant_once,
);

fn plan_spec(slug: &str, trial_days: i32) -> pb::Plan {
    pb::Plan {
        trial_days,
        ..valid_plan(slug)
    }
}

async fn create_plan(server: &InProcess, slug: &str, trial_days: i32) -> pb::Plan {
    server
        .plans()
        .create_plan(server.admin(pb::CreatePlanRequest {
            plan: Some(plan_spec(slug, trial_days)),
        }))
        .await
        .unwrap_or_else(|e| panic!("creating plan {slug}: {e:?}"))
        .into_inner()
}

fn tenant_spec(plan_id: &str, external_id: &str) -> pb::CreateTenantRequest {
    pb::CreateTenantRequest {
        tenant: Some(pb::Tenant {
            external_id: external_id.into(),
            plan_id: plan_id.into(),
            ..Default::default()
        }),
    }
}

async fn create_tenant(server: &InProcess, plan_id: &str, external_id: &str) -> pb::Tenant {
    server
        .billing()
        .create_tenant(server.admin(tenant_spec(plan_id, external_id)))
        .await
        .unwrap_or_else(|e| panic!("creating tenant {external_id}: {e:?}"))
        .into_inner()
}

async fn create_key(
    server: &InProcess,
    tenant_id: &str,
    environment: pb::KeyEnvironment,
) -> (pb::Key, String) {
    let created = server
        .keys()
        .create_key(server.admin(pb::CreateKeyRequest {
            key: Some(pb::Key {
                tenant_id: tenant_id.into(),
                name: "ci".into(),
                environment: environment as i32,
                ..Default::default()
            }),
        }))
        .await
        .expect("CreateKey")
        .into_inner();
    (created.key.expect("key"), created.secret)
}

async fn get_key(server: &InProcess, id: &str) -> pb::Key {
    server
        .keys()
        .get_key(server.admin(pb::GetKeyRequest { id: id.into() }))
        .await
        .expect("GetKey")
        .into_inner()
}

async fn get_tenant(server: &InProcess, id: &str) -> pb::Tenant {
    server
        .billing()
        .get_tenant(server.admin(pb::GetTenantRequest {
            lookup: Some(get_tenant_request::Lookup::Id(id.into())),
        }))
        .await
        .expect("GetTenant")
        .into_inner()
}

async fn list_plan_ids(server: &InProcess, show_archived: bool) -> Vec<String> {
    server
        .plans()
        .list_plans(server.admin(pb::ListPlansRequest {
            show_archived,
            ..Default::default()
        }))
        .await
        .expect("ListPlans")
        .into_inner()
        .plans
        .into_iter()
        .map(|p| p.id)
        .collect()
}

async fn list_tenant_ids(server: &InProcess) -> Vec<String> {
    server
        .billing()
        .list_tenants(server.admin(pb::ListTenantsRequest::default()))
        .await
        .expect("ListTenants")
        .into_inner()
        .tenants
        .into_iter()
        .map(|t| t.id)
        .collect()
}

/// The call failed with `code`.
#[track_caller]
fn expect_code<T: std::fmt::Debug>(what: &str, result: Result<Response<T>, Status>, code: Code) {
    match result {
        Ok(r) => panic!("{what}: expected {code:?}, got OK {:?}", r.get_ref()),
        Err(status) => assert_eq!(status.code(), code, "{what}: {status:?}"),
    }
}

fn micros(t: &Option<PbTimestamp>) -> i64 {
    let t = t.as_ref().expect("timestamp set");
    t.seconds * 1_000_000 + i64::from(t.nanos) / 1_000
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

async fn duplicates_already_exist(db: TestDb) {
    let server = InProcess::start(db).await;
    let pro = create_plan(&server, "pro", 0).await;
    let mut other = plan_spec("pro", 7);
    other.display_name = "Another pro".into();
    expect_code(
        "CreatePlan with a slug in use",
        server
            .plans()
            .create_plan(server.admin(pb::CreatePlanRequest { plan: Some(other) }))
            .await,
        Code::AlreadyExists,
    );
    assert_eq!(list_plan_ids(&server, true).await, vec![pro.id.clone()]);

    let first = create_tenant(&server, &pro.id, "cus_1").await;
    expect_code(
        "CreateTenant with an external id in use",
        server
            .billing()
            .create_tenant(server.admin(tenant_spec(&pro.id, "cus_1")))
            .await,
        Code::AlreadyExists,
    );
    // Tenants without an external id do not collide with each other.
    let second = create_tenant(&server, &pro.id, "").await;
    let third = create_tenant(&server, &pro.id, "").await;
    expect_code(
        "UpdateTenant to an external id in use",
        server
            .billing()
            .update_tenant(server.admin(pb::UpdateTenantRequest {
                tenant: Some(pb::Tenant {
                    external_id: "cus_1".into(),
                    ..second.clone()
                }),
                update_mask: mask(&["external_id"]),
            }))
            .await,
        Code::AlreadyExists,
    );
    assert_eq!(get_tenant(&server, &second.id).await, second);
    assert_eq!(
        list_tenant_ids(&server).await,
        vec![first.id, second.id, third.id]
    );

    // One product maps to one plan only.
    let yearly = create_plan(&server, "pro-yearly", 0).await;
    let map = |plan_id: &str| pb::MapProductRequest {
        provider: "polar".into(),
        product_id: "prod_pro".into(),
        plan_id: plan_id.into(),
    };
    server
        .plans()
        .map_product(server.admin(map(&pro.id)))
        .await
        .expect("MapProduct");
    for plan_id in [&pro.id, &yearly.id] {
        expect_code(
            "MapProduct of a mapped product",
            server.plans().map_product(server.admin(map(plan_id))).await,
            Code::AlreadyExists,
        );
    }
}

async fn archived_plans_take_no_one_new(db: TestDb) {
    let server = InProcess::start(db).await;
    let old = create_plan(&server, "old", 0).await;
    let current = create_plan(&server, "current", 0).await;
    let on_old = create_tenant(&server, &old.id, "cus_old").await;
    let on_current = create_tenant(&server, &current.id, "cus_current").await;
    server
        .plans()
        .map_product(server.admin(pb::MapProductRequest {
            provider: "polar".into(),
            product_id: "prod_old".into(),
            plan_id: old.id.clone(),
        }))
        .await
        .expect("MapProduct before archiving");

    let archived = server
        .plans()
        .archive_plan(server.admin(pb::ArchivePlanRequest { id: old.id.clone() }))
        .await
        .expect("ArchivePlan")
        .into_inner();
    assert!(archived.archived);
    assert_eq!(
        pb::Plan {
            archived: false,
            update_time: old.update_time,
            ..archived.clone()
        },
        old,
        "archiving changes nothing else"
    );

    expect_code(
        "CreateTenant on an archived plan",
        server
            .billing()
            .create_tenant(server.admin(tenant_spec(&old.id, "cus_new")))
            .await,
        Code::FailedPrecondition,
    );
    expect_code(
        "ChangePlan to an archived plan",
        server
            .billing()
            .change_plan(server.admin(pb::ChangePlanRequest {
                tenant_id: on_current.id.clone(),
                plan_id: old.id.clone(),
            }))
            .await,
        Code::FailedPrecondition,
    );
    expect_code(
        "MapProduct to an archived plan",
        server
            .plans()
            .map_product(server.admin(pb::MapProductRequest {
                provider: "polar".into(),
                product_id: "prod_new".into(),
                plan_id: old.id.clone(),
            }))
            .await,
        Code::FailedPrecondition,
    );

    // Nothing was written by the refused calls; those already on it stay.
    assert_eq!(get_tenant(&server, &on_current.id).await, on_current);
    assert_eq!(get_tenant(&server, &on_old.id).await, on_old);
    assert_eq!(
        list_tenant_ids(&server).await,
        vec![on_old.id.clone(), on_current.id.clone()]
    );
    let mappings = server
        .plans()
        .list_product_mappings(server.admin(pb::ListProductMappingsRequest::default()))
        .await
        .expect("ListProductMappings")
        .into_inner()
        .mappings;
    assert_eq!(
        mappings
            .iter()
            .map(|m| (m.product_id.as_str(), m.plan_id.as_str()))
            .collect::<Vec<_>>(),
        vec![("prod_old", old.id.as_str())],
        "the mapping made before archiving stays; none was added"
    );
    // A tenant on an archived plan can still be changed and moved off it.
    let moved = server
        .billing()
        .change_plan(server.admin(pb::ChangePlanRequest {
            tenant_id: on_old.id.clone(),
            plan_id: current.id.clone(),
        }))
        .await
        .expect("ChangePlan off the archived plan")
        .into_inner();
    assert_eq!(moved.plan_id, current.id);
    expect_code(
        "ChangePlan back onto the archived plan",
        server
            .billing()
            .change_plan(server.admin(pb::ChangePlanRequest {
                tenant_id: on_old.id.clone(),
                plan_id: old.id.clone(),
            }))
            .await,
        Code::FailedPrecondition,
    );

    // Hidden from ListPlans unless asked for; still found by GetPlan.
    assert_eq!(
        list_plan_ids(&server, false).await,
        vec![current.id.clone()]
    );
    assert_eq!(
        list_plan_ids(&server, true).await,
        vec![old.id.clone(), current.id.clone()]
    );
    let got = server
        .plans()
        .get_plan(server.admin(pb::GetPlanRequest {
            lookup: Some(pb::get_plan_request::Lookup::Slug("old".into())),
        }))
        .await
        .expect("GetPlan of an archived plan")
        .into_inner();
    assert_eq!(got, archived);
}

/// "Archiving twice is a no-op" (plans.proto): the second call changes nothing,
/// not even `update_time`.
async fn archiving_twice_is_a_no_op(db: TestDb) {
    let server = InProcess::start(db).await;
    let plan = create_plan(&server, "old", 0).await;
    let archive = || pb::ArchivePlanRequest {
        id: plan.id.clone(),
    };
    let first = server
        .plans()
        .archive_plan(server.admin(archive()))
        .await
        .expect("first ArchivePlan")
        .into_inner();
    let second = server
        .plans()
        .archive_plan(server.admin(archive()))
        .await
        .expect("second ArchivePlan")
        .into_inner();
    assert!(second.archived);
    assert_eq!(second, first, "the second ArchivePlan changed the plan");
}

async fn trial_days_make_trialing_tenants(db: TestDb) {
    let server = InProcess::start(db).await;
    let trial = create_plan(&server, "trial", 14).await;
    assert_eq!(trial.trial_days, 14);
    let tenant = create_tenant(&server, &trial.id, "cus_trial").await;
    assert_eq!(tenant.status, pb::TenantStatus::Trialing as i32);
    let expected = micros(&tenant.create_time) + 14 * 24 * 3600 * 1_000_000;
    let delta = (micros(&tenant.trial_end) - expected).abs();
    assert!(
        delta <= 1_000_000,
        "trial_end {:?} is not create_time {:?} + 14 days",
        tenant.trial_end,
        tenant.create_time
    );
    assert_eq!(get_tenant(&server, &tenant.id).await, tenant, "as stored");

    let paid = create_plan(&server, "paid", 0).await;
    let tenant = create_tenant(&server, &paid.id, "cus_paid").await;
    assert_eq!(tenant.status, pb::TenantStatus::Active as i32);
    assert_eq!(tenant.trial_end, None);
    assert_eq!(get_tenant(&server, &tenant.id).await, tenant, "as stored");
}

#[track_caller]
fn assert_secret_shape(secret: &str, key: &pb::Key, env_prefix: &str) {
    let body = secret
        .strip_prefix(env_prefix)
        .unwrap_or_else(|| panic!("secret should start with {env_prefix}"));
    // 44 base58 characters of 32 random bytes, then 6 of a checksum.
    assert_eq!(body.len(), 50, "{secret:?}");
    let bytes = bs58::decode(&body[..44])
        .into_vec()
        .expect("base58 after the prefix");
    assert!(bytes.len() >= 32, "32 random bytes (and leading padding)");
    assert_eq!(
        tollgate::domain::secret::shape(secret, env_prefix),
        tollgate::domain::secret::Shape::Checked
    );
    assert!(
        key.prefix.starts_with(env_prefix) && key.prefix.len() > env_prefix.len(),
        "prefix {:?} shows the environment and some of the secret",
        key.prefix
    );
    assert!(
        secret.starts_with(&key.prefix),
        "the key's prefix is the start of its secret"
    );
    assert!(
        key.prefix.len() < secret.len() / 2,
        "the prefix gives away little of the secret"
    );
}

/// Neither the secret nor its random part shows anywhere in `value`.
#[track_caller]
fn assert_no_secret(what: &str, value: &impl std::fmt::Debug, secret: &str) {
    let text = format!("{value:?}");
    let body = &secret[8..];
    assert!(
        !text.contains(secret) && !text.contains(body),
        "{what} contains the secret"
    );
}

async fn key_secrets_are_shown_once(db: TestDb) {
    let server = InProcess::start(db).await;
    let plan = create_plan(&server, "pro", 0).await;
    let tenant = create_tenant(&server, &plan.id, "cus_1").await;

    let (live, live_secret) =
        create_key(&server, &tenant.id, pb::KeyEnvironment::Unspecified).await;
    assert_eq!(live.environment, pb::KeyEnvironment::Live as i32);
    assert_eq!(live.status, pb::KeyStatus::Active as i32);
    assert_secret_shape(&live_secret, &live, "tg_live_");
    let (test, test_secret) = create_key(&server, &tenant.id, pb::KeyEnvironment::Test).await;
    assert_eq!(test.environment, pb::KeyEnvironment::Test as i32);
    assert_secret_shape(&test_secret, &test, "tg_test_");
    assert_ne!(live_secret[8..], test_secret[8..]);

    for (key, secret) in [(&live, &live_secret), (&test, &test_secret)] {
        let got = server
            .keys()
            .get_key(server.admin(pb::GetKeyRequest { id: key.id.clone() }))
            .await
            .expect("GetKey");
        assert_no_secret("GetKey", &got, secret);
        assert_eq!(&got.into_inner(), key);
        let updated = server
            .keys()
            .update_key(server.admin(pb::UpdateKeyRequest {
                key: Some(pb::Key {
                    name: "renamed".into(),
                    ..key.clone()
                }),
                update_mask: mask(&["name"]),
            }))
            .await
            .expect("UpdateKey");
        assert_no_secret("UpdateKey", &updated, secret);
    }
    let listed = server
        .keys()
        .list_keys(server.admin(pb::ListKeysRequest {
            tenant_id: tenant.id.clone(),
            ..Default::default()
        }))
        .await
        .expect("ListKeys");
    for secret in [&live_secret, &test_secret] {
        assert_no_secret("ListKeys", &listed, secret);
    }
    let ids: Vec<_> = listed.get_ref().keys.iter().map(|k| k.id.clone()).collect();
    assert_eq!(ids, vec![live.id.clone(), test.id.clone()]);
    let revoked = server
        .keys()
        .revoke_key(server.admin(pb::RevokeKeyRequest {
            id: live.id.clone(),
        }))
        .await
        .expect("RevokeKey");
    assert_no_secret("RevokeKey", &revoked, &live_secret);
}

async fn revoked_keys_stay_revoked(db: TestDb) {
    let server = InProcess::start(db).await;
    let plan = create_plan(&server, "pro", 0).await;
    let tenant = create_tenant(&server, &plan.id, "cus_1").await;
    let (key, _) = create_key(&server, &tenant.id, pb::KeyEnvironment::Live).await;
    assert_eq!(key.revoke_time, None);

    let revoke = || pb::RevokeKeyRequest { id: key.id.clone() };
    let first = server
        .keys()
        .revoke_key(server.admin(revoke()))
        .await
        .expect("first RevokeKey")
        .into_inner();
    assert_eq!(first.status, pb::KeyStatus::Revoked as i32);
    assert_eq!(
        first.revoke_time, first.update_time,
        "revoked when it was last changed"
    );
    assert!(
        (
            first.revoke_time.unwrap().seconds,
            first.revoke_time.unwrap().nanos
        ) > (
            first.create_time.unwrap().seconds,
            first.create_time.unwrap().nanos
        ),
        "revoked after it was created"
    );
    let second = server
        .keys()
        .revoke_key(server.admin(revoke()))
        .await
        .expect("second RevokeKey")
        .into_inner();
    assert_eq!(second, first, "revoking again changes nothing");
    assert_eq!(get_key(&server, &key.id).await, first);

    expect_code(
        "RotateKey of a revoked key",
        server
            .keys()
            .rotate_key(server.admin(pb::RotateKeyRequest {
                id: key.id.clone(),
                grace_period: None,
            }))
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(get_key(&server, &key.id).await, first, "prefix kept");

    // Un-revoking is impossible: status is output only, and a masked update
    // of the other fields leaves it revoked.
    let updated = server
        .keys()
        .update_key(server.admin(pb::UpdateKeyRequest {
            key: Some(pb::Key {
                name: "renamed".into(),
                status: pb::KeyStatus::Active as i32,
                revoke_time: None,
                ..first.clone()
            }),
            update_mask: mask(&["name", "disabled"]),
        }))
        .await
        .expect("UpdateKey of a revoked key")
        .into_inner();
    assert_eq!(updated.status, pb::KeyStatus::Revoked as i32);
    assert_eq!(updated.revoke_time, first.revoke_time);
    expect_code(
        "RevokeKey of an unknown key",
        server
            .keys()
            .revoke_key(server.admin(pb::RevokeKeyRequest {
                id: format!("key_{}", "0".repeat(32)),
            }))
            .await,
        Code::NotFound,
    );
}

async fn rotating_changes_secret_and_prefix(db: TestDb) {
    let server = InProcess::start(db).await;
    let plan = create_plan(&server, "pro", 0).await;
    let tenant = create_tenant(&server, &plan.id, "cus_1").await;
    for (environment, env_prefix) in [
        (pb::KeyEnvironment::Live, "tg_live_"),
        (pb::KeyEnvironment::Test, "tg_test_"),
    ] {
        let (key, secret) = create_key(&server, &tenant.id, environment).await;
        let rotated = server
            .keys()
            .rotate_key(server.admin(pb::RotateKeyRequest {
                id: key.id.clone(),
                grace_period: Some(PbDuration {
                    seconds: 3600,
                    nanos: 0,
                }),
            }))
            .await
            .expect("RotateKey")
            .into_inner();
        let new_key = rotated.key.expect("key");
        let new_secret = rotated.secret;
        assert_ne!(new_secret, secret, "a new secret");
        assert_ne!(new_key.prefix, key.prefix, "a new prefix");
        assert_secret_shape(&new_secret, &new_key, env_prefix);
        assert_eq!(new_key.id, key.id, "the same key");
        assert_eq!(new_key.environment, environment as i32);
        assert_eq!(new_key.status, pb::KeyStatus::Active as i32);
        assert!(micros(&new_key.update_time) > micros(&key.update_time));

        let got = get_key(&server, &key.id).await;
        assert_eq!(got, new_key, "the new prefix is stored");
        assert_no_secret("GetKey after RotateKey", &got, &new_secret);
        assert_no_secret("GetKey after RotateKey", &got, &secret);

        // The maximum grace period is accepted.
        let again = server
            .keys()
            .rotate_key(server.admin(pb::RotateKeyRequest {
                id: key.id.clone(),
                grace_period: Some(PbDuration {
                    seconds: 30 * 24 * 3600,
                    nanos: 0,
                }),
            }))
            .await
            .expect("RotateKey with a 30-day grace period")
            .into_inner();
        assert_ne!(again.secret, new_secret);
        assert_ne!(again.key.expect("key").prefix, new_key.prefix);
    }
    expect_code(
        "RotateKey of an unknown key",
        server
            .keys()
            .rotate_key(server.admin(pb::RotateKeyRequest {
                id: format!("key_{}", "0".repeat(32)),
                grace_period: None,
            }))
            .await,
        Code::NotFound,
    );
}

async fn updates_change_only_masked_fields(db: TestDb) {
    let server = InProcess::start(db).await;

    // ---- plans ---------------------------------------------------------------
    let plan = create_plan(&server, "pro", 0).await;
    let other = create_plan(&server, "other", 0).await;
    // A message in which every field differs from the stored plan.
    let everything_else = pb::Plan {
        id: plan.id.clone(),
        slug: "renamed-slug".into(),
        display_name: "Renamed".into(),
        price: Some(pb::Price {
            amount_minor: 9_900,
            currency: "EUR".into(),
        }),
        billing_interval: pb::BillingInterval::Year as i32,
        trial_days: 30,
        rate_limit: Some(pb::RateLimit {
            requests_per_minute: 60,
            burst: 5,
        }),
        quotas: vec![pb::Quota {
            resource: "embeddings".into(),
            included_units: 1,
            overage_policy: pb::OveragePolicy::HardCap as i32,
            overage_unit_price_micros: 0,
        }],
        features: vec!["model:o3".into()],
        quota_reset: Some(pb::QuotaReset {
            schedule: Some(Schedule::BillingPeriod(pb::quota_reset::BillingPeriod {})),
        }),
        archived: true,
        create_time: Some(PbTimestamp {
            seconds: 1,
            nanos: 0,
        }),
        update_time: Some(PbTimestamp {
            seconds: 1,
            nanos: 0,
        }),
    };
    let updated = server
        .plans()
        .update_plan(server.admin(pb::UpdatePlanRequest {
            plan: Some(everything_else.clone()),
            update_mask: mask(&["display_name"]),
        }))
        .await
        .expect("UpdatePlan display_name")
        .into_inner();
    assert_eq!(
        updated,
        pb::Plan {
            display_name: "Renamed".into(),
            update_time: updated.update_time,
            ..plan.clone()
        }
    );
    assert!(micros(&updated.update_time) > micros(&plan.update_time));
    let updated2 = server
        .plans()
        .update_plan(server.admin(pb::UpdatePlanRequest {
            plan: Some(everything_else.clone()),
            update_mask: mask(&["price", "quotas", "trial_days"]),
        }))
        .await
        .expect("UpdatePlan price, quotas, trial_days")
        .into_inner();
    assert_eq!(
        updated2,
        pb::Plan {
            price: everything_else.price.clone(),
            quotas: everything_else.quotas.clone(),
            trial_days: 30,
            update_time: updated2.update_time,
            ..updated.clone()
        }
    );
    let got = server
        .plans()
        .get_plan(server.admin(pb::GetPlanRequest {
            lookup: Some(pb::get_plan_request::Lookup::Id(plan.id.clone())),
        }))
        .await
        .expect("GetPlan")
        .into_inner();
    assert_eq!(got, updated2, "as stored");
    let others = server
        .plans()
        .get_plan(server.admin(pb::GetPlanRequest {
            lookup: Some(pb::get_plan_request::Lookup::Id(other.id.clone())),
        }))
        .await
        .expect("GetPlan of the other plan")
        .into_inner();
    assert_eq!(others, other, "the other plan is untouched");

    // ---- tenants ---------------------------------------------------------------
    let mut tenant_req = tenant_spec(&plan.id, "cus_1");
    if let Some(t) = tenant_req.tenant.as_mut() {
        t.email = "ada@example.com".into();
        t.name = "Ada".into();
        t.company = "Analytical Engines".into();
        t.metadata = HashMap::from([("tier".into(), "gold".into())]);
    }
    let tenant = server
        .billing()
        .create_tenant(server.admin(tenant_req))
        .await
        .expect("CreateTenant")
        .into_inner();
    let everything_else = pb::Tenant {
        id: tenant.id.clone(),
        external_id: "cus_2".into(),
        email: "grace@example.com".into(),
        name: "Grace".into(),
        company: "Navy".into(),
        plan_id: other.id.clone(),
        status: pb::TenantStatus::Revoked as i32,
        trial_end: Some(PbTimestamp {
            seconds: 4_000_000_000,
            nanos: 0,
        }),
        metadata: HashMap::from([("tier".into(), "silver".into())]),
        create_time: None,
        update_time: None,
        current_period_start: None,
        current_period_end: None,
    };
    let updated = server
        .billing()
        .update_tenant(server.admin(pb::UpdateTenantRequest {
            tenant: Some(everything_else.clone()),
            update_mask: mask(&["name"]),
        }))
        .await
        .expect("UpdateTenant name")
        .into_inner();
    assert_eq!(
        updated,
        pb::Tenant {
            name: "Grace".into(),
            update_time: updated.update_time,
            ..tenant.clone()
        }
    );
    let updated2 = server
        .billing()
        .update_tenant(server.admin(pb::UpdateTenantRequest {
            tenant: Some(everything_else.clone()),
            update_mask: mask(&["email", "metadata", "status"]),
        }))
        .await
        .expect("UpdateTenant email, metadata, status")
        .into_inner();
    assert_eq!(
        updated2,
        pb::Tenant {
            email: "grace@example.com".into(),
            metadata: everything_else.metadata.clone(),
            status: pb::TenantStatus::Revoked as i32,
            update_time: updated2.update_time,
            ..updated.clone()
        }
    );
    assert_eq!(
        updated2.plan_id, plan.id,
        "the plan changes only by ChangePlan"
    );
    assert_eq!(get_tenant(&server, &tenant.id).await, updated2, "as stored");
    expect_code(
        "UpdateTenant of plan_id",
        server
            .billing()
            .update_tenant(server.admin(pb::UpdateTenantRequest {
                tenant: Some(everything_else.clone()),
                update_mask: mask(&["plan_id"]),
            }))
            .await,
        Code::InvalidArgument,
    );

    // ---- keys ------------------------------------------------------------------
    let in_a_day = PbTimestamp {
        seconds: micros(&tenant.create_time) / 1_000_000 + 24 * 3600,
        nanos: 0,
    };
    let created = server
        .keys()
        .create_key(server.admin(pb::CreateKeyRequest {
            key: Some(pb::Key {
                tenant_id: tenant.id.clone(),
                name: "ci".into(),
                expire_time: Some(in_a_day),
                rate_limit_override: Some(pb::RateLimit {
                    requests_per_minute: 6,
                    burst: 1,
                }),
                metadata: HashMap::from([("team".into(), "infra".into())]),
                ..Default::default()
            }),
        }))
        .await
        .expect("CreateKey")
        .into_inner();
    let key = created.key.expect("key");
    let everything_else = pb::Key {
        id: key.id.clone(),
        tenant_id: other.id.clone(),
        name: "renamed".into(),
        environment: pb::KeyEnvironment::Test as i32,
        prefix: "tg_test_XXXX".into(),
        status: pb::KeyStatus::Revoked as i32,
        disabled: true,
        expire_time: None,
        rate_limit_override: None,
        quota_overrides: plan_spec("x", 0).quotas,
        metadata: HashMap::new(),
        create_time: None,
        update_time: None,
        last_used_time: None,
        revoke_time: Some(PbTimestamp {
            seconds: 1,
            nanos: 0,
        }),
    };
    let updated = server
        .keys()
        .update_key(server.admin(pb::UpdateKeyRequest {
            key: Some(everything_else.clone()),
            update_mask: mask(&["disabled"]),
        }))
        .await
        .expect("UpdateKey disabled")
        .into_inner();
    assert_eq!(
        updated,
        pb::Key {
            disabled: true,
            update_time: updated.update_time,
            ..key.clone()
        }
    );
    // A masked field left unset clears it.
    let updated2 = server
        .keys()
        .update_key(server.admin(pb::UpdateKeyRequest {
            key: Some(everything_else.clone()),
            update_mask: mask(&["expire_time", "rate_limit_override", "name"]),
        }))
        .await
        .expect("UpdateKey expire_time, rate_limit_override, name")
        .into_inner();
    assert_eq!(
        updated2,
        pb::Key {
            name: "renamed".into(),
            expire_time: None,
            rate_limit_override: None,
            update_time: updated2.update_time,
            ..updated.clone()
        }
    );
    assert_eq!(updated2.metadata, key.metadata, "metadata was not masked");
    assert_eq!(get_key(&server, &key.id).await, updated2, "as stored");
}

async fn product_mappings(db: TestDb) {
    let server = InProcess::start(db).await;
    let pro = create_plan(&server, "pro", 0).await;
    let team = create_plan(&server, "team", 0).await;
    let map = |product_id: &str, plan_id: &str| pb::MapProductRequest {
        provider: "polar".into(),
        product_id: product_id.into(),
        plan_id: plan_id.into(),
    };
    for (product, plan_id) in [
        ("prod_pro_monthly", &pro.id),
        ("prod_pro_yearly", &pro.id),
        ("prod_team", &team.id),
    ] {
        let mapping = server
            .plans()
            .map_product(server.admin(map(product, plan_id)))
            .await
            .expect("MapProduct")
            .into_inner();
        assert_eq!(
            (mapping.provider.as_str(), mapping.product_id.as_str()),
            ("polar", product)
        );
        assert_eq!(&mapping.plan_id, plan_id);
        assert!(mapping.create_time.is_some());
    }
    expect_code(
        "MapProduct to an unknown plan",
        server
            .plans()
            .map_product(server.admin(map("prod_x", &format!("plan_{}", "0".repeat(32)))))
            .await,
        Code::NotFound,
    );

    let list = |plan_id: &str| pb::ListProductMappingsRequest {
        plan_id: plan_id.into(),
        ..Default::default()
    };
    let of = |plan_id: &str| {
        let req = list(plan_id);
        let server = &server;
        async move {
            let mut products: Vec<(String, String)> = server
                .plans()
                .list_product_mappings(server.admin(req))
                .await
                .expect("ListProductMappings")
                .into_inner()
                .mappings
                .into_iter()
                .map(|m| (m.product_id, m.plan_id))
                .collect();
            products.sort();
            products
        }
    };
    let pair = |product: &str, plan: &pb::Plan| (product.to_owned(), plan.id.clone());
    assert_eq!(
        of(&pro.id).await,
        vec![
            pair("prod_pro_monthly", &pro),
            pair("prod_pro_yearly", &pro)
        ]
    );
    assert_eq!(of(&team.id).await, vec![pair("prod_team", &team)]);
    assert_eq!(of("").await.len(), 3, "unfiltered lists all");

    let unmap = |product_id: &str| pb::UnmapProductRequest {
        provider: "polar".into(),
        product_id: product_id.into(),
    };
    expect_code(
        "UnmapProduct of an unknown product",
        server
            .plans()
            .unmap_product(server.admin(unmap("prod_unknown")))
            .await,
        Code::NotFound,
    );
    let removed = server
        .plans()
        .unmap_product(server.admin(unmap("prod_pro_monthly")))
        .await
        .expect("UnmapProduct")
        .into_inner()
        .mapping
        .expect("the removed mapping");
    assert_eq!(removed.product_id, "prod_pro_monthly");
    assert_eq!(removed.plan_id, pro.id);
    assert_eq!(of(&pro.id).await, vec![pair("prod_pro_yearly", &pro)]);
    expect_code(
        "UnmapProduct twice",
        server
            .plans()
            .unmap_product(server.admin(unmap("prod_pro_monthly")))
            .await,
        Code::NotFound,
    );
    // Unmapped, the product can be mapped again, to another plan.
    server
        .plans()
        .map_product(server.admin(map("prod_pro_monthly", &team.id)))
        .await
        .expect("MapProduct after UnmapProduct");
    assert_eq!(
        of(&team.id).await,
        vec![pair("prod_pro_monthly", &team), pair("prod_team", &team)]
    );
}

async fn tenant_pages_see_each_tenant_once(db: TestDb) {
    let server = InProcess::start(db).await;
    let plan = create_plan(&server, "pro", 0).await;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(
            create_tenant(&server, &plan.id, &format!("cus_{i}"))
                .await
                .id,
        );
    }

    let mut seen = Vec::new();
    let mut page_sizes = Vec::new();
    let mut token = String::new();
    loop {
        let page = server
            .billing()
            .list_tenants(server.admin(pb::ListTenantsRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            }))
            .await
            .expect("ListTenants")
            .into_inner();
        page_sizes.push(page.tenants.len());
        seen.extend(page.tenants.into_iter().map(|t| t.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(page_sizes.len() < 10, "pagination does not end");
    }
    assert_eq!(page_sizes, vec![2, 2, 1]);
    assert_eq!(seen, created, "each tenant once, oldest first");
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        5,
        "no tenant twice"
    );
}
