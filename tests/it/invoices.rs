//! Invoices through the gRPC API, on both storage backends, against figures
//! computed here by hand: billed overage from durable usage, plan prices
//! prorated to the second across a plan change, drafts rebuilt in place,
//! finalized invoices frozen, and bad input refused without a write.
use std::time::Duration;

use tollgate::{
    domain::{ids::TenantId, invoice::month_of, now, plan::Resource},
    grpc::pb::{
        ChangePlanRequest, CreatePlanRequest, CreateTenantRequest, FinalizeInvoiceRequest,
        GenerateInvoiceRequest, GetInvoiceRequest, Invoice, InvoiceLineKind, InvoiceStatus,
        ListInvoicesRequest, OveragePolicy, Plan, Price, Quota, Tenant,
    },
    store::{UsageStore, UsageTotal},
};
use tonic::Code;

use crate::helpers::{InProcess, TestDb, valid_plan};

/// A plan at `price_minor` cents a month with 50,000 included calls billed
/// at `unit_micros` each past that; its id.
async fn plan(server: &InProcess, slug: &str, price_minor: i64, unit_micros: i64) -> String {
    server
        .plans()
        .create_plan(server.admin(CreatePlanRequest {
            plan: Some(Plan {
                price: Some(Price {
                    amount_minor: price_minor,
                    currency: "USD".into(),
                }),
                quotas: vec![Quota {
                    resource: "calls".into(),
                    included_units: 50_000,
                    overage_policy: OveragePolicy::Billed as i32,
                    overage_unit_price_micros: unit_micros,
                }],
                ..valid_plan(slug)
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .id
}

async fn tenant(server: &InProcess, plan_id: &str) -> String {
    server
        .billing()
        .create_tenant(server.admin(CreateTenantRequest {
            tenant: Some(Tenant {
                plan_id: plan_id.into(),
                ..Tenant::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .id
}

/// Durable usage of `calls` this month, as the flusher writes it.
async fn used(server: &InProcess, tenant_id: &str, calls: i64) {
    let month = month_of(now());
    let store = server.db().store().await;
    store
        .upsert_usage(&[UsageTotal {
            tenant_id: TenantId::parse("", tenant_id).unwrap(),
            resource: Resource::parse("", "calls").unwrap(),
            period_start: month.period.start,
            period_end: month.period.end,
            used: calls,
        }])
        .await
        .unwrap();
    store.close().await;
}

async fn generate(
    server: &InProcess,
    tenant_id: &str,
    period: &str,
) -> Result<Invoice, tonic::Status> {
    server
        .billing()
        .generate_invoice(server.admin(GenerateInvoiceRequest {
            tenant_id: tenant_id.into(),
            period: period.into(),
        }))
        .await
        .map(tonic::Response::into_inner)
}

fn this_month() -> String {
    month_of(now()).name
}

fn seconds(t: &Option<prost_types::Timestamp>) -> i64 {
    t.as_ref().unwrap().seconds
}

/// `n / d` rounded half-up, as the issue asks.
fn half_up(n: i128, d: i128) -> i64 {
    ((2 * n + d) / (2 * d)) as i64
}

crate::conformance!(
    overage_is_billed_from_durable_usage,
    a_plan_change_prorates_to_the_second,
    drafts_are_rebuilt_and_finalized_invoices_frozen,
    bad_input_writes_nothing,
);

async fn overage_is_billed_from_durable_usage(db: TestDb) {
    let server = InProcess::start(db).await;
    let cheap = plan(&server, "tenth", 0, 1_000).await;
    let t = tenant(&server, &cheap).await;
    used(&server, &t, 173_457).await;
    let invoice = generate(&server, &t, &this_month()).await.unwrap();
    assert_eq!(invoice.currency, "USD");
    assert_eq!(invoice.status, InvoiceStatus::Draft as i32);
    let overage: Vec<_> = invoice
        .lines
        .iter()
        .filter(|l| l.kind == InvoiceLineKind::Overage as i32)
        .collect();
    assert_eq!(overage.len(), 1);
    assert_eq!(overage[0].resource, "calls");
    assert_eq!(
        overage[0].quantity, 123_457,
        "units past the 50,000 included"
    );
    assert_eq!(
        overage[0].amount_minor, 12_346,
        "$123.457 rounds to $123.46"
    );
    assert_eq!(invoice.total_minor, 12_346, "a free plan's base line is 0");

    // $0.0005 a call, 1,001 calls over: $0.5005 → $0.50.
    let half = plan(&server, "twentieth", 0, 500).await;
    let t = tenant(&server, &half).await;
    used(&server, &t, 51_001).await;
    let invoice = generate(&server, &t, &this_month()).await.unwrap();
    assert_eq!(invoice.total_minor, 50);
}

async fn a_plan_change_prorates_to_the_second(db: TestDb) {
    let server = InProcess::start(db).await;
    let basic = plan(&server, "basic", 4_900, 1_000).await;
    let pro = plan(&server, "pro", 19_900, 1_000).await;
    let t = tenant(&server, &basic).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    server
        .billing()
        .change_plan(server.admin(ChangePlanRequest {
            tenant_id: t.clone(),
            plan_id: pro.clone(),
        }))
        .await
        .unwrap();
    let invoice = generate(&server, &t, &this_month()).await.unwrap();
    let month = month_of(now()).period;
    let month_seconds = i128::from((month.end - month.start).whole_seconds());
    let lines: Vec<_> = invoice
        .lines
        .iter()
        .filter(|l| l.kind == InvoiceLineKind::Plan as i32)
        .collect();
    assert_eq!(lines.len(), 2, "one line per plan");
    assert_eq!(
        (lines[0].plan_id.as_str(), lines[1].plan_id.as_str()),
        (basic.as_str(), pro.as_str())
    );
    assert_eq!(lines[0].end_time, lines[1].start_time, "the switch");
    assert_eq!(seconds(&lines[1].end_time), month.end.unix_timestamp());
    for (line, price) in [(lines[0], 4_900), (lines[1], 19_900)] {
        let micros = |t: &Option<prost_types::Timestamp>| {
            let t = t.as_ref().unwrap();
            i128::from(t.seconds) * 1_000_000 + i128::from(t.nanos / 1_000)
        };
        let held = (micros(&line.end_time) - micros(&line.start_time)) / 1_000_000;
        assert_eq!(i128::from(line.quantity), held, "seconds on the plan");
        assert_eq!(line.amount_minor, half_up(price * held, month_seconds));
    }
    assert!(lines[0].quantity >= 1, "about a second on basic");
    assert_eq!(
        invoice.total_minor,
        lines[0].amount_minor + lines[1].amount_minor
    );
}

async fn drafts_are_rebuilt_and_finalized_invoices_frozen(db: TestDb) {
    let server = InProcess::start(db).await;
    let p = plan(&server, "tenth", 0, 1_000).await;
    let t = tenant(&server, &p).await;
    used(&server, &t, 50_010).await;
    let first = generate(&server, &t, &this_month()).await.unwrap();
    assert_eq!(first.total_minor, 1);
    used(&server, &t, 51_000).await;
    let second = generate(&server, &t, &this_month()).await.unwrap();
    assert_eq!(second.id, first.id, "the same draft, rebuilt");
    assert_eq!(second.total_minor, 100);
    let listed = server
        .billing()
        .list_invoices(server.admin(ListInvoicesRequest {
            tenant_id: t.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .invoices;
    assert_eq!(listed.len(), 1);

    let finalized = server
        .billing()
        .finalize_invoice(server.admin(FinalizeInvoiceRequest {
            id: first.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(finalized.status, InvoiceStatus::Finalized as i32);
    assert!(finalized.finalize_time.is_some());
    used(&server, &t, 60_000).await;
    let status = generate(&server, &t, &this_month()).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let read = server
        .billing()
        .get_invoice(server.admin(GetInvoiceRequest {
            id: first.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.total_minor, 100, "frozen");
    assert_eq!(read.lines, finalized.lines);
}

async fn bad_input_writes_nothing(db: TestDb) {
    let server = InProcess::start(db).await;
    let p = plan(&server, "tenth", 0, 1_000).await;
    let t = tenant(&server, &p).await;
    let unknown = format!("ten_{}", uuid::Uuid::now_v7().simple());
    for (tenant_id, period, code, field) in [
        ("", this_month(), Code::InvalidArgument, "tenant_id"),
        ("ten_nope", this_month(), Code::InvalidArgument, "tenant_id"),
        (
            t.as_str(),
            "2026-13".to_owned(),
            Code::InvalidArgument,
            "period",
        ),
        (
            t.as_str(),
            "November".to_owned(),
            Code::InvalidArgument,
            "period",
        ),
        (t.as_str(), String::new(), Code::InvalidArgument, "period"),
        (unknown.as_str(), this_month(), Code::NotFound, "tenant"),
        (
            t.as_str(),
            "1999-01".to_owned(),
            Code::FailedPrecondition,
            "1999-01",
        ),
    ] {
        let status = generate(&server, tenant_id, &period).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(field), "{field}: {status:?}");
    }
    for id in ["", "inv_nope"] {
        let status = server
            .billing()
            .finalize_invoice(server.admin(FinalizeInvoiceRequest { id: id.into() }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    let missing = format!("inv_{}", uuid::Uuid::now_v7().simple());
    let status = server
        .billing()
        .get_invoice(server.admin(GetInvoiceRequest { id: missing }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let listed = server
        .billing()
        .list_invoices(server.admin(ListInvoicesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .invoices;
    assert!(listed.is_empty(), "nothing was written");
}
