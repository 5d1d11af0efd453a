//! Bad input through the gRPC API: every invalid request is refused with the
//! exact code, INVALID_ARGUMENT ones with `google.rpc.BadRequest` details that
//! name the offending field, and nothing invalid is ever written. Bad
//! credentials are refused before any handler runs.
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use prost_types::{Duration as PbDuration, FieldMask, Timestamp as PbTimestamp};
use tollgate::grpc::pb::{self, get_plan_request::Lookup, quota_reset::Schedule};
use tonic::{Code, Response, Status};
use tonic_types::StatusExt;

use crate::helpers::{InProcess, TestDb, valid_plan};

crate::conformance!(
    invalid_requests_write_nothing,
    duplicate_quotas_name_the_repeated_resource,
    page_tokens_only_work_where_issued,
    invalid_key_changes_write_nothing,
    bad_credentials_are_refused,
);

const DAY: i64 = 24 * 3600;

/// What is wrong, how to spoil a valid plan so, and the fields to blame.
type BadPlan = (&'static str, fn(&mut pb::Plan), &'static [&'static str]);

fn calendar_month(day: i32) -> Option<pb::QuotaReset> {
    Some(pb::QuotaReset {
        schedule: Some(Schedule::CalendarMonth(pb::quota_reset::CalendarMonth {
            day,
        })),
    })
}

/// `{:?}` of a value, cut short: a failing assertion on a 1 MB message
/// should not print the whole of it.
fn short(value: &impl std::fmt::Debug) -> String {
    let s = format!("{value:?}");
    if s.len() > 600 {
        let head: String = s.chars().take(600).collect();
        format!("{head}… ({} bytes)", s.len())
    } else {
        s
    }
}

/// The call failed with `code`.
#[track_caller]
fn expect_code<T: std::fmt::Debug>(
    what: &str,
    result: Result<Response<T>, Status>,
    code: Code,
) -> Status {
    match result {
        Ok(r) => panic!("{what}: expected {code:?}, got OK {}", short(r.get_ref())),
        Err(status) => {
            assert_eq!(
                status.code(),
                code,
                "{what}: wrong code; status {}",
                short(&status)
            );
            status
        }
    }
}

/// The call failed with INVALID_ARGUMENT, and the `BadRequest` details name
/// exactly `fields` (every other field of these requests is valid).
#[track_caller]
fn expect_invalid<T: std::fmt::Debug>(
    what: &str,
    result: Result<Response<T>, Status>,
    fields: &[&str],
) {
    let status = expect_code(what, result, Code::InvalidArgument);
    let details = status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("{what}: no BadRequest details in {}", short(&status)));
    let mut got: Vec<&str> = details
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    got.sort_unstable();
    let mut want = fields.to_vec();
    want.sort_unstable();
    assert_eq!(
        got, want,
        "{what}: violations {:?}",
        details.field_violations
    );
    assert!(
        details
            .field_violations
            .iter()
            .all(|v| !v.description.is_empty()),
        "{what}: every violation says why: {:?}",
        details.field_violations
    );
}

fn create_plan_req(plan: pb::Plan) -> pb::CreatePlanRequest {
    pb::CreatePlanRequest { plan: Some(plan) }
}

async fn setup_plan_and_tenant(server: &InProcess) -> (pb::Plan, pb::Tenant) {
    let plan = server
        .plans()
        .create_plan(server.admin(create_plan_req(valid_plan("pro"))))
        .await
        .expect("the valid plan")
        .into_inner();
    let tenant = server
        .billing()
        .create_tenant(server.admin(pb::CreateTenantRequest {
            tenant: Some(pb::Tenant {
                external_id: "cus_1".into(),
                email: "ada@example.com".into(),
                plan_id: plan.id.clone(),
                ..Default::default()
            }),
        }))
        .await
        .expect("the valid tenant")
        .into_inner();
    (plan, tenant)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

async fn invalid_requests_write_nothing(db: TestDb) {
    let server = InProcess::start(db).await;
    let (plan, tenant) = setup_plan_and_tenant(&server).await;

    // ---- CreatePlan: one spoiled field at a time ------------------------
    let bad_plans: [BadPlan; 11] = [
        ("empty slug", |p| p.slug.clear(), &["plan.slug"]),
        ("uppercase slug", |p| p.slug = "Pro".into(), &["plan.slug"]),
        (
            "negative price",
            |p| p.price.as_mut().unwrap().amount_minor = -1,
            &["plan.price.amount_minor"],
        ),
        (
            "unknown currency",
            |p| p.price.as_mut().unwrap().currency = "XYZ".into(),
            &["plan.price.currency"],
        ),
        (
            "1 MB display_name",
            |p| p.display_name = "a".repeat(1_048_576),
            &["plan.display_name"],
        ),
        (
            "quota reset on day 31",
            |p| p.quota_reset = calendar_month(31),
            &["plan.quota_reset.calendar_month.day"],
        ),
        (
            "quota reset on day 0",
            |p| p.quota_reset = calendar_month(0),
            &["plan.quota_reset.calendar_month.day"],
        ),
        ("missing price", |p| p.price = None, &["plan.price"]),
        (
            "quota without overage policy",
            |p| {
                p.quotas[0].overage_policy = pb::OveragePolicy::Unspecified as i32;
                p.quotas[0].overage_unit_price_micros = 0;
            },
            &["plan.quotas[0].overage_policy"],
        ),
        (
            "a malformed quota resource",
            |p| p.quotas[0].resource = "Chat Requests".into(),
            &["plan.quotas[0].resource"],
        ),
        (
            "missing quota_reset",
            |p| p.quota_reset = None,
            &["plan.quota_reset"],
        ),
    ];
    for (i, (what, spoil, fields)) in bad_plans.into_iter().enumerate() {
        let mut p = valid_plan(&format!("bad-{i}"));
        spoil(&mut p);
        let result = server
            .plans()
            .create_plan(server.admin(create_plan_req(p)))
            .await;
        expect_invalid(&format!("CreatePlan with {what}"), result, fields);
    }
    expect_invalid(
        "CreatePlan without a plan",
        server
            .plans()
            .create_plan(server.admin(pb::CreatePlanRequest { plan: None }))
            .await,
        &["plan"],
    );

    // ---- ListPlans: page sizes and forged tokens --------------------------
    for (what, page_size) in [("page_size 1e9", 1_000_000_000), ("negative", -1)] {
        expect_invalid(
            &format!("ListPlans with {what}"),
            server
                .plans()
                .list_plans(server.admin(pb::ListPlansRequest {
                    page_size,
                    ..Default::default()
                }))
                .await,
            &["page_size"],
        );
    }
    let random_token = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 40]>());
    for token in [
        random_token.as_str(),
        "not a token!",
        "AAAAAAAAAAAAAAAAAAAA",
    ] {
        expect_invalid(
            &format!("ListPlans with forged page_token {token:?}"),
            server
                .plans()
                .list_plans(server.admin(pb::ListPlansRequest {
                    page_token: token.into(),
                    show_archived: true,
                    ..Default::default()
                }))
                .await,
            &["page_token"],
        );
    }

    // ---- CreateTenant ------------------------------------------------------
    let tenant_on = |plan_id: &str, email: &str| pb::CreateTenantRequest {
        tenant: Some(pb::Tenant {
            plan_id: plan_id.into(),
            email: email.into(),
            ..Default::default()
        }),
    };
    let unknown_plan = format!("plan_{}", "0".repeat(32));
    expect_code(
        "CreateTenant on an unknown plan",
        server
            .billing()
            .create_tenant(server.admin(tenant_on(&unknown_plan, "")))
            .await,
        Code::NotFound,
    );
    expect_invalid(
        "CreateTenant with a malformed plan id",
        server
            .billing()
            .create_tenant(server.admin(tenant_on("nope", "")))
            .await,
        &["tenant.plan_id"],
    );
    expect_invalid(
        "CreateTenant without a plan id",
        server
            .billing()
            .create_tenant(server.admin(tenant_on("", "")))
            .await,
        &["tenant.plan_id"],
    );
    for email in ["not-an-email", "a@b@c", "@example.com", "ada @example.com"] {
        expect_invalid(
            &format!("CreateTenant with email {email:?}"),
            server
                .billing()
                .create_tenant(server.admin(tenant_on(&plan.id, email)))
                .await,
            &["tenant.email"],
        );
    }

    // ---- CreateKey ---------------------------------------------------------
    let key_for = |tenant_id: &str, expire_time: Option<PbTimestamp>| pb::CreateKeyRequest {
        key: Some(pb::Key {
            tenant_id: tenant_id.into(),
            name: "ci".into(),
            expire_time,
            ..Default::default()
        }),
    };
    expect_code(
        "CreateKey for an unknown tenant",
        server
            .keys()
            .create_key(server.admin(key_for(&format!("ten_{}", "0".repeat(32)), None)))
            .await,
        Code::NotFound,
    );
    let an_hour_ago = PbTimestamp {
        seconds: unix_now() - 3600,
        nanos: 0,
    };
    expect_invalid(
        "CreateKey expiring in the past",
        server
            .keys()
            .create_key(server.admin(key_for(&tenant.id, Some(an_hour_ago))))
            .await,
        &["key.expire_time"],
    );

    // ---- UpdatePlan / GetPlan ---------------------------------------------
    let renamed = pb::Plan {
        display_name: "Renamed".into(),
        ..plan.clone()
    };
    expect_invalid(
        "UpdatePlan without update_mask",
        server
            .plans()
            .update_plan(server.admin(pb::UpdatePlanRequest {
                plan: Some(renamed.clone()),
                update_mask: None,
            }))
            .await,
        &["update_mask"],
    );
    expect_invalid(
        "UpdatePlan with an empty update_mask",
        server
            .plans()
            .update_plan(server.admin(pb::UpdatePlanRequest {
                plan: Some(renamed.clone()),
                update_mask: Some(FieldMask { paths: vec![] }),
            }))
            .await,
        &["update_mask"],
    );
    expect_invalid(
        "UpdatePlan of the slug",
        server
            .plans()
            .update_plan(server.admin(pb::UpdatePlanRequest {
                plan: Some(pb::Plan {
                    slug: "other".into(),
                    ..renamed.clone()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["display_name".into(), "slug".into()],
                }),
            }))
            .await,
        &["update_mask"],
    );
    expect_invalid(
        "GetPlan with neither id nor slug",
        server
            .plans()
            .get_plan(server.admin(pb::GetPlanRequest { lookup: None }))
            .await,
        &["lookup"],
    );
    expect_invalid(
        "GetPlan with a malformed id",
        server
            .plans()
            .get_plan(server.admin(pb::GetPlanRequest {
                lookup: Some(Lookup::Id("nope".into())),
            }))
            .await,
        &["id"],
    );

    // ---- RotateKey -----------------------------------------------------------
    expect_invalid(
        "RotateKey with a 31-day grace period",
        server
            .keys()
            .rotate_key(server.admin(pb::RotateKeyRequest {
                id: format!("key_{}", "0".repeat(32)),
                grace_period: Some(PbDuration {
                    seconds: 31 * DAY,
                    nanos: 0,
                }),
            }))
            .await,
        &["grace_period"],
    );

    // ---- nothing was written ---------------------------------------------
    let plans = server
        .plans()
        .list_plans(server.admin(pb::ListPlansRequest {
            show_archived: true,
            ..Default::default()
        }))
        .await
        .expect("ListPlans")
        .into_inner();
    assert_eq!(
        plans.plans,
        vec![plan.clone()],
        "only the valid plan exists, unchanged"
    );
    assert!(plans.next_page_token.is_empty());
    let tenants = server
        .billing()
        .list_tenants(server.admin(pb::ListTenantsRequest::default()))
        .await
        .expect("ListTenants")
        .into_inner();
    assert_eq!(
        tenants.tenants,
        vec![tenant.clone()],
        "only the valid tenant exists, unchanged"
    );
    let keys = server
        .keys()
        .list_keys(server.admin(pb::ListKeysRequest {
            tenant_id: tenant.id.clone(),
            ..Default::default()
        }))
        .await
        .expect("ListKeys")
        .into_inner();
    assert_eq!(keys.keys, vec![], "no key was created");
}

/// The second quota for a resource is named by its own path,
/// `plan.quotas[1].resource`, like every other quota field.
async fn duplicate_quotas_name_the_repeated_resource(db: TestDb) {
    let server = InProcess::start(db).await;
    let (_, tenant) = setup_plan_and_tenant(&server).await;
    let mut p = valid_plan("twice");
    let again = pb::Quota {
        included_units: 5,
        overage_policy: pb::OveragePolicy::HardCap as i32,
        overage_unit_price_micros: 0,
        ..p.quotas[0].clone()
    };
    p.quotas.push(again.clone());
    expect_invalid(
        "CreatePlan with two quotas for one resource",
        server
            .plans()
            .create_plan(server.admin(create_plan_req(p)))
            .await,
        &["plan.quotas[1].resource"],
    );
    let mut quota_overrides = valid_plan("x").quotas;
    quota_overrides.push(again);
    expect_invalid(
        "CreateKey with two quota overrides for one resource",
        server
            .keys()
            .create_key(server.admin(pb::CreateKeyRequest {
                key: Some(pb::Key {
                    tenant_id: tenant.id.clone(),
                    name: "ci".into(),
                    quota_overrides,
                    ..Default::default()
                }),
            }))
            .await,
        &["key.quota_overrides[1].resource"],
    );
}

/// A page token is only good for the list and the filters it came from.
async fn page_tokens_only_work_where_issued(db: TestDb) {
    let server = InProcess::start(db).await;
    let mut plan_ids = Vec::new();
    for slug in ["alpha", "beta"] {
        let plan = server
            .plans()
            .create_plan(server.admin(create_plan_req(valid_plan(slug))))
            .await
            .expect("plan")
            .into_inner();
        plan_ids.push(plan.id);
    }
    for ext in ["cus_1", "cus_2"] {
        server
            .billing()
            .create_tenant(server.admin(pb::CreateTenantRequest {
                tenant: Some(pb::Tenant {
                    external_id: ext.into(),
                    plan_id: plan_ids[0].clone(),
                    ..Default::default()
                }),
            }))
            .await
            .expect("tenant");
    }

    let list_plans = |page_token: &str, show_archived: bool| pb::ListPlansRequest {
        page_size: 1,
        page_token: page_token.into(),
        show_archived,
    };
    let first = server
        .plans()
        .list_plans(server.admin(list_plans("", false)))
        .await
        .expect("first page of plans")
        .into_inner();
    assert_eq!(first.plans.len(), 1);
    let plans_token = first.next_page_token;
    assert!(!plans_token.is_empty(), "two plans, pages of one");

    // The token is good where it came from...
    let second = server
        .plans()
        .list_plans(server.admin(list_plans(&plans_token, false)))
        .await
        .expect("second page with the genuine token")
        .into_inner();
    assert_eq!(second.plans.len(), 1);
    assert_eq!(second.plans[0].id, plan_ids[1]);

    // ...and nowhere else.
    expect_invalid(
        "ListPlans token from show_archived=false used with show_archived=true",
        server
            .plans()
            .list_plans(server.admin(list_plans(&plans_token, true)))
            .await,
        &["page_token"],
    );
    let tenants_token = server
        .billing()
        .list_tenants(server.admin(pb::ListTenantsRequest {
            page_size: 1,
            ..Default::default()
        }))
        .await
        .expect("first page of tenants")
        .into_inner()
        .next_page_token;
    assert!(!tenants_token.is_empty(), "two tenants, pages of one");
    expect_invalid(
        "ListTenants token used on ListPlans",
        server
            .plans()
            .list_plans(server.admin(list_plans(&tenants_token, false)))
            .await,
        &["page_token"],
    );
    expect_invalid(
        "ListPlans token used on ListTenants",
        server
            .billing()
            .list_tenants(server.admin(pb::ListTenantsRequest {
                page_size: 1,
                page_token: plans_token.clone(),
                ..Default::default()
            }))
            .await,
        &["page_token"],
    );
    expect_invalid(
        "ListTenants token used with another plan_id filter",
        server
            .billing()
            .list_tenants(server.admin(pb::ListTenantsRequest {
                page_size: 1,
                page_token: tenants_token.clone(),
                plan_id: plan_ids[0].clone(),
                ..Default::default()
            }))
            .await,
        &["page_token"],
    );
    // A token changed in one character.
    let mut mangled = plans_token.clone().into_bytes();
    let last = mangled.len() - 1;
    mangled[last] = if mangled[last] == b'A' { b'B' } else { b'A' };
    let mangled = String::from_utf8(mangled).expect("ascii");
    expect_invalid(
        "ListPlans with a mangled token",
        server
            .plans()
            .list_plans(server.admin(list_plans(&mangled, false)))
            .await,
        &["page_token"],
    );
}

/// Refused changes to an existing key leave it exactly as it was.
async fn invalid_key_changes_write_nothing(db: TestDb) {
    let server = InProcess::start(db).await;
    let (_, tenant) = setup_plan_and_tenant(&server).await;
    let created = server
        .keys()
        .create_key(server.admin(pb::CreateKeyRequest {
            key: Some(pb::Key {
                tenant_id: tenant.id.clone(),
                name: "ci".into(),
                ..Default::default()
            }),
        }))
        .await
        .expect("CreateKey")
        .into_inner();
    let key = created.key.expect("key");

    let rotate = |grace: PbDuration| pb::RotateKeyRequest {
        id: key.id.clone(),
        grace_period: Some(grace),
    };
    for (what, grace) in [
        (
            "31 days",
            PbDuration {
                seconds: 31 * DAY,
                nanos: 0,
            },
        ),
        (
            "30 days and a nanosecond",
            PbDuration {
                seconds: 30 * DAY,
                nanos: 1,
            },
        ),
        (
            "a negative duration",
            PbDuration {
                seconds: -1,
                nanos: 0,
            },
        ),
    ] {
        expect_invalid(
            &format!("RotateKey with a grace period of {what}"),
            server.keys().rotate_key(server.admin(rotate(grace))).await,
            &["grace_period"],
        );
    }
    expect_invalid(
        "UpdateKey expiring in the past",
        server
            .keys()
            .update_key(server.admin(pb::UpdateKeyRequest {
                key: Some(pb::Key {
                    expire_time: Some(PbTimestamp {
                        seconds: unix_now() - 60,
                        nanos: 0,
                    }),
                    ..key.clone()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["expire_time".into()],
                }),
            }))
            .await,
        &["key.expire_time"],
    );
    expect_invalid(
        "UpdateKey without update_mask",
        server
            .keys()
            .update_key(server.admin(pb::UpdateKeyRequest {
                key: Some(pb::Key {
                    name: "renamed".into(),
                    ..key.clone()
                }),
                update_mask: None,
            }))
            .await,
        &["update_mask"],
    );
    expect_invalid(
        "UpdateKey of the environment",
        server
            .keys()
            .update_key(server.admin(pb::UpdateKeyRequest {
                key: Some(pb::Key {
                    environment: pb::KeyEnvironment::Test as i32,
                    ..key.clone()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["environment".into()],
                }),
            }))
            .await,
        &["update_mask"],
    );

    let now = server
        .keys()
        .get_key(server.admin(pb::GetKeyRequest { id: key.id.clone() }))
        .await
        .expect("GetKey")
        .into_inner();
    assert_eq!(
        now, key,
        "the key is unchanged: same prefix, same update_time"
    );
}

fn with_authorization<T>(message: T, value: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut()
        .insert("authorization", value.parse().expect("ascii value"));
    req
}

async fn bad_credentials_are_refused(db: TestDb) {
    let server = InProcess::start(db).await;
    let (plan, tenant) = setup_plan_and_tenant(&server).await;
    let list = pb::ListPlansRequest::default;

    expect_code(
        "no authorization metadata",
        server.plans().list_plans(tonic::Request::new(list())).await,
        Code::Unauthenticated,
    );
    let forged = format!(
        "tgc_{}",
        bs58::encode(rand::random::<[u8; 32]>()).into_string()
    );
    for value in [
        format!("Bearer {forged}"),
        "Bearer tgc_forged".to_owned(),
        "Basic xyz".to_owned(),
        format!("Basic {}", server.admin_token),
        "Bearer".to_owned(),
        "Bearer    ".to_owned(),
        server.admin_token.clone(),
    ] {
        expect_code(
            &format!("authorization {value:?}"),
            server
                .plans()
                .list_plans(with_authorization(list(), &value))
                .await,
            Code::Unauthenticated,
        );
    }

    // A forged credential writes nothing either.
    expect_code(
        "CreatePlan with a forged credential",
        server
            .plans()
            .create_plan(with_authorization(
                create_plan_req(valid_plan("forged")),
                &format!("Bearer {forged}"),
            ))
            .await,
        Code::Unauthenticated,
    );

    // The verify scope reaches none of the admin services.
    expect_code(
        "verify credential on ListPlans",
        server.plans().list_plans(server.verify(list())).await,
        Code::PermissionDenied,
    );
    expect_code(
        "verify credential on CreatePlan",
        server
            .plans()
            .create_plan(server.verify(create_plan_req(valid_plan("by-verify"))))
            .await,
        Code::PermissionDenied,
    );
    expect_code(
        "verify credential on ListTenants",
        server
            .billing()
            .list_tenants(server.verify(pb::ListTenantsRequest::default()))
            .await,
        Code::PermissionDenied,
    );
    expect_code(
        "verify credential on CreateKey",
        server
            .keys()
            .create_key(server.verify(pb::CreateKeyRequest {
                key: Some(pb::Key {
                    tenant_id: tenant.id.clone(),
                    name: "sneaky".into(),
                    ..Default::default()
                }),
            }))
            .await,
        Code::PermissionDenied,
    );

    // A tenant's API key is no credential, in either environment.
    for environment in [pb::KeyEnvironment::Live, pb::KeyEnvironment::Test] {
        let secret = server
            .keys()
            .create_key(server.admin(pb::CreateKeyRequest {
                key: Some(pb::Key {
                    tenant_id: tenant.id.clone(),
                    name: format!("{environment:?}"),
                    environment: environment as i32,
                    ..Default::default()
                }),
            }))
            .await
            .expect("CreateKey")
            .into_inner()
            .secret;
        expect_code(
            &format!("{environment:?} API key secret as bearer"),
            server
                .plans()
                .list_plans(with_authorization(list(), &format!("Bearer {secret}")))
                .await,
            Code::Unauthenticated,
        );
    }

    // The real credential still works, and saw only the one plan.
    let plans = server
        .plans()
        .list_plans(server.admin(pb::ListPlansRequest {
            show_archived: true,
            ..Default::default()
        }))
        .await
        .expect("ListPlans with the admin credential")
        .into_inner()
        .plans;
    assert_eq!(plans, vec![plan]);
    // The scheme is case-insensitive.
    server
        .plans()
        .list_plans(with_authorization(
            list(),
            &format!("bearer {}", server.admin_token),
        ))
        .await
        .expect("lowercase bearer scheme");
}
