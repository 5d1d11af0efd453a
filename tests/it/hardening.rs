//! Smaller hardening findings, each reproduced first: an oversized message
//! answers RESOURCE_EXHAUSTED (it was OUT_OF_RANGE), names and companies of
//! whitespace alone are refused like empty required ones (they were
//! stored), and the server follows `RUST_LOG` when `TOLLGATE_LOG_FILTER` is
//! unset (it ignored it).
use tollgate::grpc::pb::{self, verify_client::VerifyClient};
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{InProcess, Server, TestDb, tollgate, valid_plan};

crate::conformance!(blank_names_and_companies_are_refused_and_write_nothing);

#[tokio::test]
async fn an_oversized_message_is_resource_exhausted() {
    let server = InProcess::start(TestDb::sqlite().await).await;
    // Past the 4 MiB a message may have.
    let request = pb::VerifyRequest {
        key: "x".repeat(5 << 20),
        ..Default::default()
    };
    let status = VerifyClient::new(server.channel())
        .max_encoding_message_size(usize::MAX)
        .verify(server.verify(request))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");
    // A message under the limit is still read, and refused by its field.
    let status = VerifyClient::new(server.channel())
        .verify(server.verify(pb::VerifyRequest {
            key: "x".repeat(1 << 20),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("key"), "{status:?}");
}

async fn blank_names_and_companies_are_refused_and_write_nothing(db: TestDb) {
    let server = InProcess::start(db).await;
    let plan = server
        .plans()
        .create_plan(server.admin(pb::CreatePlanRequest {
            plan: Some(valid_plan("blank")),
        }))
        .await
        .unwrap()
        .into_inner();
    let tenant = |name: &str, company: &str| pb::CreateTenantRequest {
        tenant: Some(pb::Tenant {
            external_id: "blank".into(),
            plan_id: plan.id.clone(),
            name: name.into(),
            company: company.into(),
            ..Default::default()
        }),
    };
    let fields = |status: &tonic::Status| -> Vec<String> {
        status
            .get_details_bad_request()
            .map(|d| d.field_violations.into_iter().map(|v| v.field).collect())
            .unwrap_or_default()
    };
    for (name, company, blamed) in [
        ("   ", "", vec!["tenant.name"]),
        ("", "\u{2003}\t", vec!["tenant.company"]),
        (" ", " ", vec!["tenant.name", "tenant.company"]),
    ] {
        let status = server
            .billing()
            .create_tenant(server.admin(tenant(name, company)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(fields(&status), blamed, "{status:?}");
    }
    let listed = server
        .billing()
        .list_tenants(server.admin(pb::ListTenantsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.tenants.is_empty(), "nothing written: {listed:?}");

    // Empty still means none, and a name with spaces around it is a name.
    let created = server
        .billing()
        .create_tenant(server.admin(tenant(" Ada ", "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (created.name.as_str(), created.company.as_str()),
        (" Ada ", "")
    );
    // An update to whitespace alone is refused too.
    let status = server
        .billing()
        .update_tenant(server.admin(pb::UpdateTenantRequest {
            tenant: Some(pb::Tenant {
                id: created.id.clone(),
                company: "  ".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["company".into()],
            }),
        }))
        .await
        .unwrap_err();
    assert_eq!(fields(&status), ["tenant.company"], "{status:?}");
    // Signup: a blank company is refused as an empty one is, a blank name
    // as whitespace alone.
    for (company, name, blamed) in [("  ", "", "company"), ("Acme", "\t", "name")] {
        let status = server
            .billing()
            .signup(server.admin(pb::SignupRequest {
                email: "blank@example.test".into(),
                company: company.into(),
                plan_slug: "blank".into(),
                name: name.into(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(fields(&status), [blamed], "{status:?}");
    }
}

/// The levels of the log lines a server wrote up to serving, with `env`.
fn levels_with(db: &TestDb, env: &[(&str, &str)]) -> Vec<String> {
    let mut cmd = tollgate();
    cmd.envs(env.iter().copied());
    let server = Server::spawn(cmd, &["--database-url", db.url()]);
    let levels = server
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["level"].as_str().map(str::to_owned))
        .collect();
    drop(server);
    levels
}

#[tokio::test]
async fn rust_log_sets_the_filter_unless_tollgate_log_filter_does() {
    let db = TestDb::sqlite().await;
    let debug = |levels: &[String]| levels.iter().any(|l| l == "DEBUG");
    let plain = levels_with(&db, &[]);
    assert!(!debug(&plain), "info by default: {plain:?}");
    let rust_log = levels_with(&db, &[("RUST_LOG", "debug")]);
    assert!(debug(&rust_log), "RUST_LOG=debug: {rust_log:?}");
    let both = levels_with(
        &db,
        &[("RUST_LOG", "debug"), ("TOLLGATE_LOG_FILTER", "info")],
    );
    assert!(!debug(&both), "TOLLGATE_LOG_FILTER wins: {both:?}");
}
