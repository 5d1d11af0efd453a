//! The storage conformance suite: every case runs on every backend
//! (PostgreSQL and SQLite), each on a fresh database of its own, against the
//! `CatalogStore` and `CredentialStore` contracts in `src/store/mod.rs`.
use time::Duration;
use tollgate::{
    domain::{
        Error, Timestamp,
        credential::{Credential, Scope, issue_token},
        ids::{CredentialId, KeyId, PlanId, TenantId},
        key::{ApiKey, KeyEnvironment, KeySettings, display_prefix},
        now,
        page::{Page, PageRequest},
        plan::{
            BillingInterval, Feature, Overage, Plan, PlanSpec, Price, ProductId, ProductMapping,
            Provider, Quota, QuotaReset, RateLimit, Slug,
        },
        secret::{IssuedSecret, SecretHash},
        tenant::{Email, ExternalId, Tenant, TenantProfile, TenantStatus},
        text::Metadata,
    },
    store::{CatalogStore, CredentialStore, TenantFilter, sql::SqlStore},
};

use crate::helpers::TestDb;

mod concurrent;
mod credentials;
mod keys;
mod plans;
mod tenants;

// ---------------------------------------------------------------- builders

fn at(t: Timestamp, micros: i64) -> Timestamp {
    t + Duration::microseconds(micros)
}

fn slug(s: &str) -> Slug {
    Slug::parse("slug", s).expect("valid slug")
}

fn metadata(entries: &[(&str, &str)]) -> Metadata {
    Metadata::parse(
        "metadata",
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    )
    .expect("valid metadata")
}

fn spec(name: &str) -> PlanSpec {
    PlanSpec {
        display_name: name.to_owned(),
        price: Price::parse(1_900, "USD").expect("price"),
        billing_interval: BillingInterval::Month,
        trial_days: 14,
        rate_limit: RateLimit::parse(600, 50).expect("rate limit"),
        quotas: vec![
            Quota::parse(
                "chat_requests",
                10_000,
                Some(Overage::Billed {
                    unit_price_micros: 2_500,
                }),
            )
            .expect("quota"),
            Quota::parse("storage.gb", 5, Some(Overage::HardCap)).expect("quota"),
        ],
        features: Feature::parse_list(
            "features",
            &[
                "model:gpt-4o".to_owned(),
                "sso".to_owned(),
                "z-last".to_owned(),
            ],
        )
        .expect("features"),
        quota_reset: QuotaReset::calendar_month("quota_reset_day", 15).expect("reset day"),
    }
}

fn plan(slug_str: &str) -> Plan {
    let t = now();
    Plan {
        id: PlanId::generate(),
        slug: slug(slug_str),
        spec: spec(&format!("Plan {slug_str}")),
        archived: false,
        created_at: t,
        updated_at: t,
    }
}

fn tenant(plan: PlanId, external: Option<&str>) -> Tenant {
    let t = now();
    Tenant {
        id: TenantId::generate(),
        profile: TenantProfile {
            external_id: external.map(|e| ExternalId::parse("external_id", e).expect("ext id")),
            email: Some(Email::parse("email", "ada@example.com").expect("email")),
            name: "Ada Lovelace".to_owned(),
            company: "Analytical Engines Ltd".to_owned(),
            metadata: metadata(&[("tier", "gold"), ("région", "eu-west")]),
        },
        plan_id: plan,
        status: TenantStatus::Trialing,
        trial_end: Some(t + Duration::days(14)),
        billing_period: Some(tollgate::domain::verify::Period {
            start: t,
            end: t + Duration::days(30),
        }),
        trial_started_at: Some(t),
        converted_at: None,
        created_at: t,
        updated_at: t,
    }
}

fn key(tenant: TenantId) -> (ApiKey, IssuedSecret) {
    let secret = KeyEnvironment::Live.issue_secret();
    let t = now();
    let key = ApiKey {
        id: KeyId::generate(),
        tenant_id: tenant,
        environment: KeyEnvironment::Live,
        prefix: display_prefix(secret.expose()),
        settings: KeySettings {
            name: "ci runner".to_owned(),
            disabled: false,
            expires_at: Some(t + Duration::days(90)),
            rate_limit_override: Some(RateLimit::parse(120, 10).expect("rate limit")),
            quota_overrides: vec![
                Quota::parse("chat_requests", 50, Some(Overage::HardCap)).expect("quota"),
            ],
            metadata: metadata(&[("owner", "platform")]),
        },
        created_at: t,
        updated_at: t,
        last_used_at: None,
        revoked_at: None,
    };
    (key, secret)
}

fn credential(scope: Scope, name: &str) -> Credential {
    Credential {
        id: CredentialId::generate(),
        name: name.to_owned(),
        scope,
        created_at: now(),
        expires_at: None,
        revoked_at: None,
        seeded: false,
    }
}

fn mapping(product: &str, plan: PlanId) -> ProductMapping {
    ProductMapping {
        provider: Provider::Polar,
        product_id: ProductId::parse("product_id", product).expect("product id"),
        plan_id: plan,
        created_at: now(),
    }
}

fn first_page(size: i32, filter: &str) -> PageRequest {
    PageRequest::parse(size, "", filter.to_owned()).expect("page request")
}

/// Walks every page of a list, the way the gRPC layer does: the last id of
/// each page, in a token checked against the same filter, starts the next.
/// Returns the pages' items, one Vec per page.
async fn all_pages<T, F, Fut>(
    size: i32,
    filter: &str,
    id: impl Fn(&T) -> String,
    mut fetch: F,
) -> Vec<Vec<T>>
where
    F: FnMut(PageRequest) -> Fut,
    Fut: std::future::Future<Output = tollgate::domain::Result<Vec<T>>>,
{
    let mut request = first_page(size, filter);
    let mut pages = Vec::new();
    loop {
        let rows = fetch(request.clone()).await.expect("listing a page");
        assert!(
            rows.len() as i64 <= request.fetch_limit(),
            "a page returned {} rows for a fetch limit of {}",
            rows.len(),
            request.fetch_limit()
        );
        let page = Page::from_rows(&request, rows, &id);
        pages.push(page.items);
        if page.next_page_token.is_empty() {
            return pages;
        }
        assert!(pages.len() <= 100, "paging does not terminate");
        request = PageRequest::parse(size, &page.next_page_token, filter.to_owned())
            .expect("the returned token is valid for the same filter");
    }
}

/// Creates a plan and a tenant on it, for the cases about keys.
pub(crate) async fn plan_and_tenant(store: &SqlStore) -> (Plan, Tenant) {
    let p = plan("pro");
    store.create_plan(&p).await.expect("create plan");
    let t = tenant(p.id, Some("cus_1"));
    store.create_tenant(&t).await.expect("create tenant");
    (p, t)
}
