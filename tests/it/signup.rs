//! Self-service signup through the gRPC API, on both storage backends: a
//! tenant and its first key at once, a trial that Verify honours until it
//! ends, and bad input refused without a write.
use std::time::{Duration, SystemTime};

use prost_types::FieldMask;
use tollgate::grpc::pb::{
    ArchivePlanRequest, CreatePlanRequest, KeyEnvironment, ListTenantsRequest, Plan, SignupRequest,
    SignupResponse, Tenant, TenantStatus, UpdateTenantRequest, VerifyCode, VerifyRequest,
    verify_client::VerifyClient,
};
use tonic::Code;

use crate::helpers::{InProcess, TestDb, valid_plan};

async fn start(db: TestDb) -> InProcess {
    let server = InProcess::start(db).await;
    for (slug, trial_days) in [("trial", 14), ("paid", 0)] {
        server
            .plans()
            .create_plan(server.admin(CreatePlanRequest {
                plan: Some(Plan {
                    trial_days,
                    ..valid_plan(slug)
                }),
            }))
            .await
            .unwrap();
    }
    server
}

fn request(plan_slug: &str) -> SignupRequest {
    SignupRequest {
        email: "founder@startup.test".into(),
        company: "Startup".into(),
        plan_slug: plan_slug.into(),
        environment: KeyEnvironment::Unspecified as i32,
        name: "Ada".into(),
    }
}

async fn signup(server: &InProcess, r: SignupRequest) -> Result<SignupResponse, tonic::Status> {
    server
        .billing()
        .signup(server.admin(r))
        .await
        .map(tonic::Response::into_inner)
}

async fn verify(server: &InProcess, secret: &str) -> i32 {
    VerifyClient::new(server.channel())
        .verify(server.verify(VerifyRequest {
            key: secret.into(),
            resource: "chat_requests".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .code
}

async fn tenant_count(server: &InProcess) -> usize {
    server
        .billing()
        .list_tenants(server.admin(ListTenantsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .tenants
        .len()
}

crate::conformance!(
    a_trial_verifies_until_it_ends,
    a_plan_without_trial_is_active,
    bad_signups_write_nothing,
);

async fn a_trial_verifies_until_it_ends(db: TestDb) {
    let server = start(db).await;
    let before = SystemTime::now();
    let r = signup(&server, request("trial")).await.unwrap();
    let tenant = r.tenant.unwrap();
    assert_eq!(tenant.status, TenantStatus::Trialing as i32);
    assert_eq!(tenant.email, "founder@startup.test");
    let trial_end = SystemTime::try_from(tenant.trial_end.unwrap()).unwrap();
    let days = trial_end.duration_since(before).unwrap().as_secs_f64() / 86_400.0;
    assert!((13.99..14.01).contains(&days), "trial of {days} days");
    let key = r.key.unwrap();
    assert_eq!(key.tenant_id, tenant.id);
    assert!(r.secret.starts_with("tg_live_"), "{}", r.secret);
    assert_eq!(verify(&server, &r.secret).await, VerifyCode::Valid as i32);

    // Bring the trial's end close, then let it pass.
    let end = SystemTime::now() + Duration::from_millis(3_000);
    server
        .billing()
        .update_tenant(server.admin(UpdateTenantRequest {
            tenant: Some(Tenant {
                id: tenant.id.clone(),
                trial_end: Some(end.into()),
                ..Tenant::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["trial_end".into()],
            }),
        }))
        .await
        .unwrap();
    assert_eq!(verify(&server, &r.secret).await, VerifyCode::Valid as i32);
    tokio::time::sleep(end.duration_since(SystemTime::now()).unwrap_or_default()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        verify(&server, &r.secret).await,
        VerifyCode::TenantInactive as i32
    );
}

async fn a_plan_without_trial_is_active(db: TestDb) {
    let server = start(db).await;
    let r = signup(
        &server,
        SignupRequest {
            environment: KeyEnvironment::Test as i32,
            ..request("paid")
        },
    )
    .await
    .unwrap();
    let tenant = r.tenant.unwrap();
    assert_eq!(tenant.status, TenantStatus::Active as i32);
    assert_eq!(tenant.trial_end, None);
    assert!(r.secret.starts_with("tg_test_"), "{}", r.secret);
    assert_eq!(verify(&server, &r.secret).await, VerifyCode::Valid as i32);
}

async fn bad_signups_write_nothing(db: TestDb) {
    let server = start(db).await;
    let archived = server
        .plans()
        .create_plan(server.admin(CreatePlanRequest {
            plan: Some(valid_plan("old")),
        }))
        .await
        .unwrap()
        .into_inner();
    server
        .plans()
        .archive_plan(server.admin(ArchivePlanRequest {
            id: archived.id.clone(),
        }))
        .await
        .unwrap();
    let cases = [
        (
            SignupRequest {
                email: String::new(),
                ..request("trial")
            },
            Code::InvalidArgument,
            "email",
        ),
        (
            SignupRequest {
                email: "not-an-address".into(),
                ..request("trial")
            },
            Code::InvalidArgument,
            "email",
        ),
        (
            SignupRequest {
                company: " ".into(),
                ..request("trial")
            },
            Code::InvalidArgument,
            "company",
        ),
        (request(""), Code::InvalidArgument, "plan_slug"),
        (request("Not A Slug"), Code::InvalidArgument, "plan_slug"),
        (
            SignupRequest {
                environment: 9,
                ..request("trial")
            },
            Code::InvalidArgument,
            "environment",
        ),
        (request("nosuchplan"), Code::NotFound, "plan"),
        (request("old"), Code::FailedPrecondition, "archived"),
    ];
    for (r, code, mention) in cases {
        let status = signup(&server, r).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(mention), "{status:?}");
    }
    assert_eq!(tenant_count(&server).await, 0, "no tenant was written");
}
