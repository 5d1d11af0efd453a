//! The revenue summary through the gRPC API, on both storage backends,
//! against figures computed here by hand.
use tollgate::{
    domain::{ids::TenantId, invoice::month_of, now, plan::Resource},
    grpc::pb::{
        BillingInterval, CreatePlanRequest, CreateTenantRequest, GenerateInvoiceRequest,
        GetRevenueSummaryRequest, GetRevenueSummaryResponse, Money, OveragePolicy, Plan, Price,
        Quota, Tenant, TenantStatus, UpdateTenantRequest,
    },
    store::{UsageStore, UsageTotal},
};
use tonic::Code;

use crate::helpers::{InProcess, TestDb, valid_plan};

async fn plan(server: &InProcess, slug: &str, minor: i64, currency: &str, yearly: bool) -> String {
    server
        .plans()
        .create_plan(server.admin(CreatePlanRequest {
            plan: Some(Plan {
                price: Some(Price {
                    amount_minor: minor,
                    currency: currency.into(),
                }),
                billing_interval: if yearly {
                    BillingInterval::Year
                } else {
                    BillingInterval::Month
                } as i32,
                quotas: vec![Quota {
                    resource: "calls".into(),
                    included_units: 100,
                    overage_policy: OveragePolicy::Billed as i32,
                    overage_unit_price_micros: 10_000,
                }],
                ..valid_plan(slug)
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .id
}

async fn tenant(server: &InProcess, external: &str, plan_id: &str, status: TenantStatus) -> String {
    server
        .billing()
        .create_tenant(server.admin(CreateTenantRequest {
            tenant: Some(Tenant {
                external_id: external.into(),
                plan_id: plan_id.into(),
                status: status as i32,
                ..Tenant::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .id
}

async fn summary(
    server: &InProcess,
    period: &str,
) -> Result<GetRevenueSummaryResponse, tonic::Status> {
    summary_in(server, period, "").await
}

async fn summary_in(
    server: &InProcess,
    period: &str,
    currency: &str,
) -> Result<GetRevenueSummaryResponse, tonic::Status> {
    server
        .billing()
        .get_revenue_summary(server.admin(GetRevenueSummaryRequest {
            period: period.into(),
            currency: currency.into(),
        }))
        .await
        .map(tonic::Response::into_inner)
}

fn money(pairs: &[(&str, i64)]) -> Vec<Money> {
    pairs
        .iter()
        .map(|(c, a)| Money {
            currency: (*c).into(),
            amount_minor: *a,
        })
        .collect()
}

fn count(r: &GetRevenueSummaryResponse, status: TenantStatus) -> i64 {
    r.tenants_by_status
        .iter()
        .find(|c| c.status == status as i32)
        .map_or(0, |c| c.tenants)
}

crate::conformance!(mrr_trials_usage_and_revenue, bad_input_is_refused);

async fn mrr_trials_usage_and_revenue(db: TestDb) {
    let server = InProcess::start(db).await;
    let usd_month = plan(&server, "usd-month", 4_900, "USD", false).await;
    let usd_year = plan(&server, "usd-year", 120_000, "USD", true).await;
    let eur_month = plan(&server, "eur-month", 1_000, "EUR", false).await;
    let eur_year = plan(&server, "eur-year", 99_900, "EUR", true).await;
    let a = tenant(&server, "a", &usd_month, TenantStatus::Active).await;
    tenant(&server, "b", &usd_month, TenantStatus::PastDue).await;
    let c = tenant(&server, "c", &usd_year, TenantStatus::Active).await;
    tenant(&server, "d", &eur_month, TenantStatus::Active).await;
    tenant(&server, "e", &eur_year, TenantStatus::Active).await;
    tenant(&server, "f", &usd_month, TenantStatus::Revoked).await;
    let g = tenant(&server, "g", &usd_month, TenantStatus::Trialing).await;

    let r = summary(&server, "").await.unwrap();
    assert_eq!(
        r.period,
        month_of(now()).name,
        "the current month by default"
    );
    // USD: 49.00 + 49.00 (past due still pays) + 1,200.00 / 12; EUR: 10.00 +
    // 999.00 / 12 = 83.25. Revoked and trialing tenants pay nothing.
    assert_eq!(r.mrr, money(&[("EUR", 9_325), ("USD", 19_800)]));
    assert_eq!(count(&r, TenantStatus::Active), 4);
    assert_eq!(count(&r, TenantStatus::PastDue), 1);
    assert_eq!(count(&r, TenantStatus::Revoked), 1);
    assert_eq!(count(&r, TenantStatus::Trialing), 1);
    assert_eq!((r.trials_started, r.trials_converted), (1, 0));

    // The trial converts.
    server
        .billing()
        .update_tenant(server.admin(UpdateTenantRequest {
            tenant: Some(Tenant {
                id: g.clone(),
                status: TenantStatus::Active as i32,
                ..Tenant::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["status".into()],
            }),
        }))
        .await
        .unwrap();

    // Usage this month, and a's invoice: 150 calls over at $0.01.
    let month = month_of(now());
    let store = server.db().store().await;
    for (id, used) in [(&a, 250), (&c, 120)] {
        store
            .upsert_usage(&[UsageTotal {
                tenant_id: TenantId::parse("", id).unwrap(),
                resource: Resource::parse("", "calls").unwrap(),
                period_start: month.period.start,
                period_end: month.period.end,
                used,
            }])
            .await
            .unwrap();
    }
    store.close().await;
    let invoice = server
        .billing()
        .generate_invoice(server.admin(GenerateInvoiceRequest {
            tenant_id: a.clone(),
            period: month.name.clone(),
        }))
        .await
        .unwrap()
        .into_inner();

    let r = summary(&server, &month.name).await.unwrap();
    assert_eq!((r.trials_started, r.trials_converted), (1, 1));
    assert_eq!(r.mrr, money(&[("EUR", 9_325), ("USD", 24_700)]));
    assert_eq!(r.total_calls, 370);
    let by_usage: Vec<(&str, i64)> = r
        .top_by_usage
        .iter()
        .map(|f| (f.external_id.as_str(), f.value))
        .collect();
    assert_eq!(by_usage, [("a", 250), ("c", 120)]);
    assert_eq!(r.overage_revenue, money(&[("USD", 150)]));
    assert_eq!(r.top_by_revenue.len(), 1);
    assert_eq!(r.top_by_revenue[0].tenant_id, a);
    assert_eq!(r.top_by_revenue[0].value, invoice.total_minor);
    assert_eq!(r.top_by_revenue[0].currency, "USD");

    // One currency only.
    let r = summary_in(&server, &month.name, "EUR").await.unwrap();
    assert_eq!(r.mrr, money(&[("EUR", 9_325)]));
    assert!(r.overage_revenue.is_empty() && r.top_by_revenue.is_empty());

    // Another month has its own figures.
    let r = summary(&server, "2020-01").await.unwrap();
    assert_eq!((r.total_calls, r.trials_started), (0, 0));
    assert!(r.top_by_revenue.is_empty());
}

async fn bad_input_is_refused(db: TestDb) {
    let server = InProcess::start(db).await;
    for bad in ["2026-13", "11/2026", "soon"] {
        let status = summary(&server, bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("period"), "{status:?}");
    }
    for bad in ["XXQ", "usd", "DOLLARS"] {
        let status = summary_in(&server, "", bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("currency"), "{status:?}");
    }
}
