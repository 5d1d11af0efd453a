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

crate::conformance!(
    plans_round_trip,
    duplicate_slug_is_rejected,
    replace_plan_is_compare_and_set,
    list_plans_pages_in_id_order,
    list_plans_hides_archived,
    product_mappings,
    tenants_round_trip,
    duplicate_external_id_is_rejected,
    list_tenants_filters_and_pages,
    replace_tenant_is_compare_and_set,
    keys_round_trip_and_find_by_secret,
    list_keys_is_per_tenant,
    replace_key_is_compare_and_set,
    rotate_key_keeps_old_secret_for_grace,
    rotate_key_without_grace,
    stale_rotate_writes_nothing,
    create_key_for_missing_tenant_writes_nothing,
    credentials,
    ensure_credential_is_idempotent,
    concurrent_replace_plan_has_one_winner,
    concurrent_rotate_key_has_one_winner,
    concurrent_create_plan_same_slug_has_one_winner,
);

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

// ------------------------------------------------------------------ plans

async fn plans_round_trip(db: TestDb) {
    let store = db.store().await;

    let monthly = plan("pro");
    store.create_plan(&monthly).await.expect("create");
    assert_eq!(
        store.get_plan(monthly.id).await.unwrap().as_ref(),
        Some(&monthly)
    );
    assert_eq!(
        store
            .get_plan_by_slug(&monthly.slug)
            .await
            .unwrap()
            .as_ref(),
        Some(&monthly)
    );

    // The other quota reset, an archived flag, no quotas or features, another
    // currency and interval: every column survives the trip.
    let mut yearly = plan("enterprise-2");
    yearly.spec = PlanSpec {
        display_name: "Enterprise (yearly) — ünïcode".to_owned(),
        price: Price::parse(0, "JPY").expect("price"),
        billing_interval: BillingInterval::Year,
        trial_days: 0,
        rate_limit: RateLimit::parse(1_000_000_000_000, 1).expect("rate limit"),
        quotas: vec![],
        features: vec![],
        quota_reset: QuotaReset::BillingPeriod,
    };
    yearly.archived = true;
    yearly.updated_at = at(yearly.created_at, 1);
    store.create_plan(&yearly).await.expect("create");
    assert_eq!(
        store.get_plan(yearly.id).await.unwrap().as_ref(),
        Some(&yearly)
    );
    assert_eq!(
        store.get_plan_by_slug(&yearly.slug).await.unwrap().as_ref(),
        Some(&yearly)
    );
    // The first plan is still itself.
    assert_eq!(
        store.get_plan(monthly.id).await.unwrap().as_ref(),
        Some(&monthly)
    );

    assert_eq!(store.get_plan(PlanId::generate()).await.unwrap(), None);
    assert_eq!(store.get_plan_by_slug(&slug("nope")).await.unwrap(), None);
}

async fn duplicate_slug_is_rejected(db: TestDb) {
    let store = db.store().await;
    let first = plan("pro");
    store.create_plan(&first).await.expect("create");

    let mut second = plan("pro");
    second.spec.display_name = "Impostor".to_owned();
    second.spec.price = Price::parse(1, "EUR").unwrap();
    let res = store.create_plan(&second).await;
    assert!(matches!(res, Err(Error::AlreadyExists(_))), "{res:?}");

    assert_eq!(store.get_plan(second.id).await.unwrap(), None);
    assert_eq!(
        store.get_plan(first.id).await.unwrap().as_ref(),
        Some(&first)
    );
    assert_eq!(
        store.get_plan_by_slug(&first.slug).await.unwrap().as_ref(),
        Some(&first)
    );
}

async fn replace_plan_is_compare_and_set(db: TestDb) {
    let store = db.store().await;
    let original = plan("pro");
    store.create_plan(&original).await.expect("create");

    let mut changed = original.clone();
    changed.spec.display_name = "Pro (2025)".to_owned();
    changed.spec.price = Price::parse(2_900, "EUR").unwrap();
    changed.spec.quota_reset = QuotaReset::BillingPeriod;
    changed.spec.quotas.pop();
    changed.spec.features.reverse();
    changed.archived = true;
    changed.updated_at = at(original.updated_at, 1_000);
    assert!(
        store
            .replace_plan(&changed, original.updated_at)
            .await
            .unwrap()
    );
    assert_eq!(
        store.get_plan(original.id).await.unwrap().as_ref(),
        Some(&changed)
    );

    // Stale: the stored stamp is now changed.updated_at.
    let mut stale = original.clone();
    stale.spec.display_name = "Lost update".to_owned();
    stale.updated_at = at(original.updated_at, 2_000);
    assert!(
        !store
            .replace_plan(&stale, original.updated_at)
            .await
            .unwrap()
    );
    assert_eq!(
        store.get_plan(original.id).await.unwrap().as_ref(),
        Some(&changed)
    );

    // An expected stamp from the future is no better.
    assert!(
        !store
            .replace_plan(&stale, at(changed.updated_at, 1))
            .await
            .unwrap()
    );
    assert_eq!(
        store.get_plan(original.id).await.unwrap().as_ref(),
        Some(&changed)
    );

    // A plan that was never stored is not created by replace.
    let ghost = plan("ghost");
    assert!(!store.replace_plan(&ghost, ghost.updated_at).await.unwrap());
    assert_eq!(store.get_plan(ghost.id).await.unwrap(), None);

    // The right stamp again works, back to CalendarMonth.
    let mut again = changed.clone();
    again.spec.quota_reset = QuotaReset::calendar_month("", 28).unwrap();
    again.archived = false;
    again.updated_at = at(changed.updated_at, 1);
    assert!(
        store
            .replace_plan(&again, changed.updated_at)
            .await
            .unwrap()
    );
    assert_eq!(
        store.get_plan_by_slug(&again.slug).await.unwrap().as_ref(),
        Some(&again)
    );
}

async fn list_plans_pages_in_id_order(db: TestDb) {
    let store = db.store().await;
    let mut plans = Vec::new();
    for s in ["e", "d", "c", "b", "a"] {
        let p = plan(&format!("plan-{s}"));
        store.create_plan(&p).await.expect("create");
        plans.push(p);
    }
    plans.sort_by_key(|p| p.id.to_string());

    let filter = "show_archived=false";
    let pages = all_pages(
        2,
        filter,
        |p: &Plan| p.id.to_string(),
        |req| {
            let store = store.clone();
            async move { store.list_plans(false, &req).await }
        },
    )
    .await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![2, 2, 1]);
    let listed: Vec<Plan> = pages.into_iter().flatten().collect();
    assert_eq!(listed, plans, "every plan once, in id order, stored values");

    // One page holding them all has no next token.
    let req = first_page(5, filter);
    let rows = store.list_plans(false, &req).await.unwrap();
    let page = Page::from_rows(&req, rows, |p| p.id.to_string());
    assert_eq!(page.items, plans);
    assert_eq!(page.next_page_token, "");

    // A cursor past the last id: nothing.
    let last = plans.last().unwrap();
    let probe = Page::from_rows(
        &first_page(1, filter),
        vec![last.clone(), last.clone()],
        |p| p.id.to_string(),
    );
    let after_last = PageRequest::parse(1, &probe.next_page_token, filter.to_owned()).unwrap();
    assert_eq!(
        after_last.after.as_deref(),
        Some(last.id.to_string().as_str())
    );
    assert_eq!(store.list_plans(false, &after_last).await.unwrap(), vec![]);
}

async fn list_plans_hides_archived(db: TestDb) {
    let store = db.store().await;
    let mut plans = Vec::new();
    for i in 0..5 {
        let p = plan(&format!("plan-{i}"));
        store.create_plan(&p).await.expect("create");
        plans.push(p);
    }
    plans.sort_by_key(|p| p.id.to_string());
    // Archive the 2nd and 4th.
    for i in [1, 3] {
        let mut archived = plans[i].clone();
        archived.archived = true;
        archived.updated_at = at(plans[i].updated_at, 1);
        assert!(
            store
                .replace_plan(&archived, plans[i].updated_at)
                .await
                .unwrap()
        );
        plans[i] = archived;
    }
    let active: Vec<Plan> = plans.iter().filter(|p| !p.archived).cloned().collect();
    assert_eq!(active.len(), 3);

    let hidden = all_pages(
        2,
        "archived=false",
        |p: &Plan| p.id.to_string(),
        |req| {
            let store = store.clone();
            async move { store.list_plans(false, &req).await }
        },
    )
    .await;
    assert_eq!(hidden.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 1]);
    assert_eq!(hidden.into_iter().flatten().collect::<Vec<_>>(), active);

    let shown = all_pages(
        2,
        "archived=true",
        |p: &Plan| p.id.to_string(),
        |req| {
            let store = store.clone();
            async move { store.list_plans(true, &req).await }
        },
    )
    .await;
    assert_eq!(
        shown.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![2, 2, 1]
    );
    assert_eq!(shown.into_iter().flatten().collect::<Vec<_>>(), plans);

    // Archived plans are still readable one by one.
    assert_eq!(
        store.get_plan(plans[1].id).await.unwrap().as_ref(),
        Some(&plans[1])
    );
}

// ------------------------------------------------------- product mappings

async fn product_mappings(db: TestDb) {
    let store = db.store().await;
    let pro = plan("pro");
    let team = plan("team");
    store.create_plan(&pro).await.unwrap();
    store.create_plan(&team).await.unwrap();

    let monthly = mapping("prod_pro_monthly", pro.id);
    let yearly = mapping("prod_pro_yearly", pro.id);
    let team_m = mapping("prod_team", team.id);
    store.map_product(&monthly).await.expect("map");
    store
        .map_product(&yearly)
        .await
        .expect("two products to one plan");
    store.map_product(&team_m).await.expect("map");

    // The same product again, even to another plan: taken.
    let res = store
        .map_product(&mapping("prod_pro_monthly", team.id))
        .await;
    assert!(matches!(res, Err(Error::AlreadyExists(_))), "{res:?}");

    // A mapping to a plan that does not exist is refused.
    let res = store
        .map_product(&mapping("prod_orphan", PlanId::generate()))
        .await;
    assert!(res.is_err(), "mapping to a missing plan: {res:?}");

    let for_pro = store
        .list_product_mappings(Some(pro.id), &first_page(0, "pro"))
        .await
        .unwrap();
    assert_eq!(for_pro, vec![monthly.clone(), yearly.clone()]);
    let for_team = store
        .list_product_mappings(Some(team.id), &first_page(0, "team"))
        .await
        .unwrap();
    assert_eq!(for_team, vec![team_m.clone()]);
    let all = store
        .list_product_mappings(None, &first_page(0, ""))
        .await
        .unwrap();
    assert_eq!(all, vec![monthly.clone(), yearly.clone(), team_m.clone()]);

    // Paged one at a time by the natural key.
    let paged = all_pages(
        1,
        "all",
        |m: &ProductMapping| format!("{}/{}", m.provider.as_str(), m.product_id.as_str()),
        |req| {
            let store = store.clone();
            async move { store.list_product_mappings(None, &req).await }
        },
    )
    .await;
    assert_eq!(
        paged.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![1, 1, 1]
    );
    assert_eq!(paged.into_iter().flatten().collect::<Vec<_>>(), all);

    let removed = store
        .unmap_product(Provider::Polar, &monthly.product_id)
        .await
        .unwrap();
    assert_eq!(removed, Some(monthly.clone()));
    assert_eq!(
        store
            .unmap_product(Provider::Polar, &monthly.product_id)
            .await
            .unwrap(),
        None
    );
    let unknown = ProductId::parse("", "prod_never").unwrap();
    assert_eq!(
        store
            .unmap_product(Provider::Polar, &unknown)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .list_product_mappings(Some(pro.id), &first_page(0, "pro"))
            .await
            .unwrap(),
        vec![yearly.clone()]
    );

    // Once unmapped, the product can be mapped again, to another plan.
    let moved = mapping("prod_pro_monthly", team.id);
    store.map_product(&moved).await.expect("remap");
    assert_eq!(
        store
            .list_product_mappings(Some(team.id), &first_page(0, "team"))
            .await
            .unwrap(),
        vec![moved, team_m]
    );
}

// ---------------------------------------------------------------- tenants

async fn tenants_round_trip(db: TestDb) {
    let store = db.store().await;
    let p = plan("pro");
    store.create_plan(&p).await.unwrap();

    let full = tenant(p.id, Some("cus_123"));
    store.create_tenant(&full).await.expect("create");
    assert_eq!(
        store.get_tenant(full.id).await.unwrap().as_ref(),
        Some(&full)
    );
    let ext = full.profile.external_id.clone().unwrap();
    assert_eq!(
        store
            .get_tenant_by_external_id(&ext)
            .await
            .unwrap()
            .as_ref(),
        Some(&full)
    );

    // Every optional field empty.
    let t = now();
    let bare = Tenant {
        id: TenantId::generate(),
        profile: TenantProfile::default(),
        plan_id: p.id,
        status: TenantStatus::PastDue,
        trial_end: None,
        billing_period: None,
        trial_started_at: None,
        converted_at: None,
        created_at: t,
        updated_at: at(t, 7),
    };
    store.create_tenant(&bare).await.expect("create");
    assert_eq!(
        store.get_tenant(bare.id).await.unwrap().as_ref(),
        Some(&bare)
    );

    assert_eq!(store.get_tenant(TenantId::generate()).await.unwrap(), None);
    let unknown = ExternalId::parse("", "cus_unknown").unwrap();
    assert_eq!(
        store.get_tenant_by_external_id(&unknown).await.unwrap(),
        None
    );

    // A tenant on a plan that does not exist is refused.
    let res = store.create_tenant(&tenant(PlanId::generate(), None)).await;
    assert!(res.is_err(), "tenant on a missing plan: {res:?}");
}

async fn duplicate_external_id_is_rejected(db: TestDb) {
    let store = db.store().await;
    let p = plan("pro");
    store.create_plan(&p).await.unwrap();

    let first = tenant(p.id, Some("cus_1"));
    store.create_tenant(&first).await.expect("create");
    let mut second = tenant(p.id, Some("cus_1"));
    second.profile.name = "Impostor".to_owned();
    let res = store.create_tenant(&second).await;
    assert!(matches!(res, Err(Error::AlreadyExists(_))), "{res:?}");
    assert_eq!(store.get_tenant(second.id).await.unwrap(), None);
    let ext = first.profile.external_id.clone().unwrap();
    assert_eq!(
        store
            .get_tenant_by_external_id(&ext)
            .await
            .unwrap()
            .as_ref(),
        Some(&first)
    );

    // No external id is not a value: any number of tenants may lack one.
    let a = tenant(p.id, None);
    let b = tenant(p.id, None);
    store
        .create_tenant(&a)
        .await
        .expect("first without external id");
    store
        .create_tenant(&b)
        .await
        .expect("second without external id");
    assert_eq!(store.get_tenant(a.id).await.unwrap().as_ref(), Some(&a));
    assert_eq!(store.get_tenant(b.id).await.unwrap().as_ref(), Some(&b));
}

async fn list_tenants_filters_and_pages(db: TestDb) {
    let store = db.store().await;
    let pro = plan("pro");
    let team = plan("team");
    store.create_plan(&pro).await.unwrap();
    store.create_plan(&team).await.unwrap();

    let mut all = Vec::new();
    for (i, (plan_id, status)) in [
        (pro.id, TenantStatus::Active),
        (team.id, TenantStatus::Active),
        (pro.id, TenantStatus::Trialing),
        (pro.id, TenantStatus::Active),
        (team.id, TenantStatus::Canceled),
        (pro.id, TenantStatus::Revoked),
    ]
    .into_iter()
    .enumerate()
    {
        let mut t = tenant(plan_id, Some(&format!("cus_{i}")));
        t.status = status;
        store.create_tenant(&t).await.unwrap();
        all.push(t);
    }
    all.sort_by_key(|t| t.id.to_string());
    let expect = |f: &dyn Fn(&Tenant) -> bool| -> Vec<Tenant> {
        all.iter().filter(|t| f(t)).cloned().collect()
    };

    let list = |filter: TenantFilter, name: &'static str| {
        let store = store.clone();
        async move {
            all_pages(
                2,
                name,
                |t: &Tenant| t.id.to_string(),
                move |req| {
                    let store = store.clone();
                    let filter = filter.clone();
                    async move { store.list_tenants(&filter, &req).await }
                },
            )
            .await
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
        }
    };

    assert_eq!(list(TenantFilter::default(), "all").await, all);
    assert_eq!(
        list(
            TenantFilter {
                plan_id: Some(pro.id),
                status: None
            },
            "plan=pro"
        )
        .await,
        expect(&|t| t.plan_id == pro.id)
    );
    assert_eq!(
        list(
            TenantFilter {
                plan_id: None,
                status: Some(TenantStatus::Active)
            },
            "status=active"
        )
        .await,
        expect(&|t| t.status == TenantStatus::Active)
    );
    let both = list(
        TenantFilter {
            plan_id: Some(pro.id),
            status: Some(TenantStatus::Active),
        },
        "plan=pro,status=active",
    )
    .await;
    assert_eq!(both.len(), 2);
    assert_eq!(
        both,
        expect(&|t| t.plan_id == pro.id && t.status == TenantStatus::Active)
    );
    assert_eq!(
        list(
            TenantFilter {
                plan_id: Some(team.id),
                status: Some(TenantStatus::PastDue)
            },
            "none"
        )
        .await,
        vec![]
    );
    assert_eq!(
        list(
            TenantFilter {
                plan_id: Some(PlanId::generate()),
                status: None
            },
            "ghost"
        )
        .await,
        vec![]
    );
}

async fn replace_tenant_is_compare_and_set(db: TestDb) {
    let store = db.store().await;
    let pro = plan("pro");
    let team = plan("team");
    store.create_plan(&pro).await.unwrap();
    store.create_plan(&team).await.unwrap();

    let original = tenant(pro.id, Some("cus_1"));
    let other = tenant(pro.id, Some("cus_2"));
    store.create_tenant(&original).await.unwrap();
    store.create_tenant(&other).await.unwrap();

    let mut changed = original.clone();
    changed.profile.external_id = Some(ExternalId::parse("", "cus_1b").unwrap());
    changed.profile.email = None;
    changed.profile.name = "Ada King".to_owned();
    changed.profile.metadata = metadata(&[("tier", "platinum")]);
    changed.plan_id = team.id;
    changed.status = TenantStatus::Active;
    changed.trial_end = None;
    changed.updated_at = at(original.updated_at, 500);
    assert!(
        store
            .replace_tenant(&changed, original.updated_at)
            .await
            .unwrap()
    );
    assert_eq!(
        store.get_tenant(original.id).await.unwrap().as_ref(),
        Some(&changed)
    );
    let old_ext = original.profile.external_id.clone().unwrap();
    assert_eq!(
        store.get_tenant_by_external_id(&old_ext).await.unwrap(),
        None
    );
    let new_ext = changed.profile.external_id.clone().unwrap();
    assert_eq!(
        store
            .get_tenant_by_external_id(&new_ext)
            .await
            .unwrap()
            .as_ref(),
        Some(&changed)
    );

    // Stale stamp: nothing changes.
    let mut stale = original.clone();
    stale.status = TenantStatus::Revoked;
    stale.updated_at = at(original.updated_at, 900);
    assert!(
        !store
            .replace_tenant(&stale, original.updated_at)
            .await
            .unwrap()
    );
    assert_eq!(
        store.get_tenant(original.id).await.unwrap().as_ref(),
        Some(&changed)
    );

    // Taking another tenant's external id: AlreadyExists, nothing changes.
    let mut thief = changed.clone();
    thief.profile.external_id = other.profile.external_id.clone();
    thief.updated_at = at(changed.updated_at, 1);
    let res = store.replace_tenant(&thief, changed.updated_at).await;
    assert!(matches!(res, Err(Error::AlreadyExists(_))), "{res:?}");
    assert_eq!(
        store.get_tenant(original.id).await.unwrap().as_ref(),
        Some(&changed)
    );
    assert_eq!(
        store.get_tenant(other.id).await.unwrap().as_ref(),
        Some(&other)
    );

    // The stamp was not consumed by the failed write; dropping the external
    // id (NULL) works and frees it.
    let mut anonymous = changed.clone();
    anonymous.profile.external_id = None;
    anonymous.updated_at = at(changed.updated_at, 2);
    assert!(
        store
            .replace_tenant(&anonymous, changed.updated_at)
            .await
            .unwrap()
    );
    assert_eq!(
        store.get_tenant(original.id).await.unwrap().as_ref(),
        Some(&anonymous)
    );
    assert_eq!(
        store.get_tenant_by_external_id(&new_ext).await.unwrap(),
        None
    );
}

// ------------------------------------------------------------------- keys

async fn keys_round_trip_and_find_by_secret(db: TestDb) {
    let store = db.store().await;
    let (_, t) = plan_and_tenant(&store).await;

    let (k, secret) = key(t.id);
    store
        .create_key(&k, secret.hash())
        .await
        .expect("create key");
    assert_eq!(store.get_key(k.id).await.unwrap().as_ref(), Some(&k));
    assert_eq!(
        store
            .find_key_by_secret(secret.hash(), now())
            .await
            .unwrap()
            .as_ref(),
        Some(&k)
    );
    // The hash of the secret, not the secret's text, is the lookup key.
    assert_eq!(
        store
            .find_key_by_secret(SecretHash::of(secret.expose()), now())
            .await
            .unwrap()
            .as_ref(),
        Some(&k)
    );
    // A first secret never expires by itself (the key's own expiry is the
    // caller's business): still found far in the future.
    assert_eq!(
        store
            .find_key_by_secret(secret.hash(), at(now(), 3_600_000_000 * 24 * 3_650))
            .await
            .unwrap()
            .as_ref(),
        Some(&k)
    );

    let wrong = KeyEnvironment::Live.issue_secret();
    assert_eq!(
        store.find_key_by_secret(wrong.hash(), now()).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .find_key_by_secret(SecretHash::of("tg_live_"), now())
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.get_key(KeyId::generate()).await.unwrap(), None);

    // A key with every optional setting empty, revoked and used.
    let secret2 = KeyEnvironment::Test.issue_secret();
    let t0 = now();
    let bare = ApiKey {
        id: KeyId::generate(),
        tenant_id: t.id,
        environment: KeyEnvironment::Test,
        prefix: display_prefix(secret2.expose()),
        settings: KeySettings::default(),
        created_at: t0,
        updated_at: at(t0, 3),
        last_used_at: Some(at(t0, 2)),
        revoked_at: Some(at(t0, 3)),
    };
    store
        .create_key(&bare, secret2.hash())
        .await
        .expect("create");
    assert_eq!(store.get_key(bare.id).await.unwrap().as_ref(), Some(&bare));
    assert_eq!(
        store
            .find_key_by_secret(secret2.hash(), now())
            .await
            .unwrap()
            .as_ref(),
        Some(&bare)
    );
    // Each secret finds its own key.
    assert_eq!(
        store
            .find_key_by_secret(secret.hash(), now())
            .await
            .unwrap()
            .as_ref(),
        Some(&k)
    );

    // A secret hash belongs to one key only.
    let (dup, _) = key(t.id);
    let res = store.create_key(&dup, secret.hash()).await;
    assert!(res.is_err(), "a second key with the same secret: {res:?}");
    assert_eq!(
        store.get_key(dup.id).await.unwrap(),
        None,
        "nothing half-written"
    );
}

async fn list_keys_is_per_tenant(db: TestDb) {
    let store = db.store().await;
    let (p, mine) = plan_and_tenant(&store).await;
    let theirs = tenant(p.id, Some("cus_other"));
    store.create_tenant(&theirs).await.unwrap();
    let idle = tenant(p.id, None);
    store.create_tenant(&idle).await.unwrap();

    let mut my_keys = Vec::new();
    for _ in 0..3 {
        let (k, s) = key(mine.id);
        store.create_key(&k, s.hash()).await.unwrap();
        my_keys.push(k);
    }
    let (their_key, their_secret) = key(theirs.id);
    store
        .create_key(&their_key, their_secret.hash())
        .await
        .unwrap();
    my_keys.sort_by_key(|k| k.id.to_string());

    let pages = all_pages(
        2,
        "mine",
        |k: &ApiKey| k.id.to_string(),
        |req| {
            let store = store.clone();
            async move { store.list_keys(mine.id, &req).await }
        },
    )
    .await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 1]);
    assert_eq!(pages.into_iter().flatten().collect::<Vec<_>>(), my_keys);

    assert_eq!(
        store
            .list_keys(theirs.id, &first_page(0, ""))
            .await
            .unwrap(),
        vec![their_key]
    );
    assert_eq!(
        store.list_keys(idle.id, &first_page(0, "")).await.unwrap(),
        vec![]
    );
    assert_eq!(
        store
            .list_keys(TenantId::generate(), &first_page(0, ""))
            .await
            .unwrap(),
        vec![]
    );
}

async fn replace_key_is_compare_and_set(db: TestDb) {
    let store = db.store().await;
    let (_, t) = plan_and_tenant(&store).await;
    let (original, secret) = key(t.id);
    store.create_key(&original, secret.hash()).await.unwrap();

    let mut changed = original.clone();
    changed.settings = KeySettings {
        name: "renamed".to_owned(),
        disabled: true,
        expires_at: None,
        rate_limit_override: None,
        quota_overrides: vec![],
        metadata: metadata(&[("owner", "data"), ("env", "staging")]),
    };
    changed.last_used_at = Some(at(original.updated_at, 5));
    changed.updated_at = at(original.updated_at, 10);
    assert!(
        store
            .replace_key(&changed, original.updated_at)
            .await
            .unwrap()
    );
    assert_eq!(
        store.get_key(original.id).await.unwrap().as_ref(),
        Some(&changed)
    );
    // The secret still finds the key, now as changed.
    assert_eq!(
        store
            .find_key_by_secret(secret.hash(), now())
            .await
            .unwrap()
            .as_ref(),
        Some(&changed)
    );

    let mut stale = original.clone();
    stale.revoked_at = Some(now());
    stale.updated_at = at(original.updated_at, 20);
    assert!(
        !store
            .replace_key(&stale, original.updated_at)
            .await
            .unwrap()
    );
    assert_eq!(
        store.get_key(original.id).await.unwrap().as_ref(),
        Some(&changed)
    );

    let mut revoked = changed.clone();
    revoked.revoked_at = Some(at(changed.updated_at, 1));
    revoked.updated_at = at(changed.updated_at, 1);
    assert!(
        store
            .replace_key(&revoked, changed.updated_at)
            .await
            .unwrap()
    );
    assert_eq!(
        store.get_key(original.id).await.unwrap().as_ref(),
        Some(&revoked)
    );

    let (ghost, _) = key(t.id);
    assert!(!store.replace_key(&ghost, ghost.updated_at).await.unwrap());
    assert_eq!(store.get_key(ghost.id).await.unwrap(), None);
}

/// The key as `rotate_key` callers build it: a new prefix and stamp.
fn rotated(key: &ApiKey, secret: &IssuedSecret, updated_at: Timestamp) -> ApiKey {
    let mut k = key.clone();
    k.prefix = display_prefix(secret.expose());
    k.updated_at = updated_at;
    k
}

async fn rotate_key_keeps_old_secret_for_grace(db: TestDb) {
    let store = db.store().await;
    let (_, t) = plan_and_tenant(&store).await;
    let (k, old) = key(t.id);
    store.create_key(&k, old.hash()).await.unwrap();

    let new = KeyEnvironment::Live.issue_secret();
    let t1 = at(k.updated_at, 1_000_000);
    let until = at(t1, 60_000_000);
    let k1 = rotated(&k, &new, t1);
    assert!(
        store
            .rotate_key(&k1, k.updated_at, new.hash(), until)
            .await
            .unwrap()
    );
    assert_eq!(store.get_key(k.id).await.unwrap().as_ref(), Some(&k1));

    let find = |s: SecretHash, when: Timestamp| {
        let store = store.clone();
        async move { store.find_key_by_secret(s, when).await.unwrap() }
    };
    // The new secret works from the rotation on, and does not expire.
    assert_eq!(find(new.hash(), t1).await.as_ref(), Some(&k1));
    assert_eq!(
        find(new.hash(), at(until, 86_400_000_000)).await.as_ref(),
        Some(&k1)
    );
    // The old one works until, and not at, old_valid_until; it finds the
    // rotated key.
    assert_eq!(find(old.hash(), t1).await.as_ref(), Some(&k1));
    assert_eq!(find(old.hash(), at(until, -1)).await.as_ref(), Some(&k1));
    assert_eq!(find(old.hash(), until).await, None);
    assert_eq!(find(old.hash(), at(until, 1)).await, None);
    assert_eq!(find(old.hash(), at(until, 86_400_000_000)).await, None);

    // Rotating again with a longer grace never lengthens the first secret's
    // life; the second secret now expires at the new limit.
    let newer = KeyEnvironment::Live.issue_secret();
    let t2 = at(t1, 1_000_000);
    let until2 = at(until, 3_600_000_000);
    let k2 = rotated(&k1, &newer, t2);
    assert!(
        store
            .rotate_key(&k2, k1.updated_at, newer.hash(), until2)
            .await
            .unwrap()
    );
    assert_eq!(find(old.hash(), at(until, -1)).await.as_ref(), Some(&k2));
    assert_eq!(find(old.hash(), until).await, None, "grace was lengthened");
    assert_eq!(find(new.hash(), at(until2, -1)).await.as_ref(), Some(&k2));
    assert_eq!(find(new.hash(), until2).await, None);
    assert_eq!(find(newer.hash(), at(until2, 1)).await.as_ref(), Some(&k2));

    // A third rotation with a shorter grace shortens everything older.
    let newest = KeyEnvironment::Live.issue_secret();
    let t3 = at(t2, 1_000_000);
    let k3 = rotated(&k2, &newest, t3);
    assert!(
        store
            .rotate_key(&k3, k2.updated_at, newest.hash(), at(t3, 10))
            .await
            .unwrap()
    );
    assert_eq!(find(new.hash(), at(t3, 9)).await.as_ref(), Some(&k3));
    assert_eq!(find(new.hash(), at(t3, 10)).await, None);
    assert_eq!(find(newer.hash(), at(t3, 10)).await, None);
    assert_eq!(find(newest.hash(), at(t3, 10)).await.as_ref(), Some(&k3));
}

async fn rotate_key_without_grace(db: TestDb) {
    let store = db.store().await;
    let (_, t) = plan_and_tenant(&store).await;
    let (k, old) = key(t.id);
    store.create_key(&k, old.hash()).await.unwrap();

    let new = KeyEnvironment::Live.issue_secret();
    let rotated_at = now().max(at(k.updated_at, 1));
    let k1 = rotated(&k, &new, rotated_at);
    // Grace 0: the old secret is valid until "now", i.e. no longer at now.
    assert!(
        store
            .rotate_key(&k1, k.updated_at, new.hash(), rotated_at)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .find_key_by_secret(old.hash(), rotated_at)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .find_key_by_secret(old.hash(), at(rotated_at, -1))
            .await
            .unwrap()
            .as_ref(),
        Some(&k1)
    );
    assert_eq!(
        store
            .find_key_by_secret(new.hash(), rotated_at)
            .await
            .unwrap()
            .as_ref(),
        Some(&k1)
    );
}

async fn stale_rotate_writes_nothing(db: TestDb) {
    let store = db.store().await;
    let (_, t) = plan_and_tenant(&store).await;
    let (k, old) = key(t.id);
    store.create_key(&k, old.hash()).await.unwrap();

    // Someone else edits the key first.
    let mut edited = k.clone();
    edited.settings.name = "edited".to_owned();
    edited.updated_at = at(k.updated_at, 1);
    assert!(store.replace_key(&edited, k.updated_at).await.unwrap());

    // A rotation based on the old stamp loses, and leaves no trace.
    let new = KeyEnvironment::Live.issue_secret();
    let when = at(k.updated_at, 2);
    let k1 = rotated(&k, &new, when);
    assert!(
        !store
            .rotate_key(&k1, k.updated_at, new.hash(), when)
            .await
            .unwrap()
    );
    assert_eq!(store.get_key(k.id).await.unwrap().as_ref(), Some(&edited));
    assert_eq!(
        store.find_key_by_secret(new.hash(), when).await.unwrap(),
        None,
        "the losing rotation stored its secret"
    );
    // The old secret was not expired either.
    assert_eq!(
        store
            .find_key_by_secret(old.hash(), at(when, 86_400_000_000))
            .await
            .unwrap()
            .as_ref(),
        Some(&edited)
    );

    // The same new secret can then be used by a rotation that wins: it was
    // really not stored.
    let k2 = rotated(&edited, &new, at(edited.updated_at, 1));
    assert!(
        store
            .rotate_key(&k2, edited.updated_at, new.hash(), at(edited.updated_at, 1))
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .find_key_by_secret(new.hash(), at(edited.updated_at, 1))
            .await
            .unwrap()
            .as_ref(),
        Some(&k2)
    );

    // Rotating a key that does not exist: false, and no secret either.
    let (ghost, _) = key(t.id);
    let ghost_secret = KeyEnvironment::Live.issue_secret();
    assert!(
        !store
            .rotate_key(
                &ghost,
                ghost.updated_at,
                ghost_secret.hash(),
                ghost.updated_at
            )
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .find_key_by_secret(ghost_secret.hash(), ghost.updated_at)
            .await
            .unwrap(),
        None
    );
}

async fn create_key_for_missing_tenant_writes_nothing(db: TestDb) {
    let store = db.store().await;
    // A real plan and tenant exist, so the schema is populated; the key names
    // another tenant.
    let _ = plan_and_tenant(&store).await;
    let (k, secret) = key(TenantId::generate());
    let res = store.create_key(&k, secret.hash()).await;
    assert!(
        res.is_err(),
        "a key for a missing tenant was created: {res:?}"
    );
    assert_eq!(store.get_key(k.id).await.unwrap(), None);
    assert_eq!(
        store
            .find_key_by_secret(secret.hash(), now())
            .await
            .unwrap(),
        None,
        "a secret row was left behind"
    );
    assert_eq!(
        store
            .list_keys(k.tenant_id, &first_page(0, ""))
            .await
            .unwrap(),
        vec![]
    );
}

// ------------------------------------------------------------ credentials

async fn credentials(db: TestDb) {
    let store = db.store().await;
    assert_eq!(store.count_credentials(Scope::Admin).await.unwrap(), 0);
    assert_eq!(store.count_credentials(Scope::Verify).await.unwrap(), 0);

    let admin_token = issue_token();
    let admin = credential(Scope::Admin, "ops");
    store
        .create_credential(&admin, admin_token.hash())
        .await
        .unwrap();
    let mut verifiers = Vec::new();
    for i in 0..3 {
        let token = issue_token();
        let c = credential(Scope::Verify, &format!("gateway {i}"));
        store.create_credential(&c, token.hash()).await.unwrap();
        verifiers.push((c, token));
    }

    assert_eq!(
        store
            .find_credential(admin_token.hash())
            .await
            .unwrap()
            .as_ref(),
        Some(&admin)
    );
    for (c, token) in &verifiers {
        assert_eq!(
            store.find_credential(token.hash()).await.unwrap().as_ref(),
            Some(c)
        );
    }
    assert_eq!(
        store.find_credential(issue_token().hash()).await.unwrap(),
        None
    );

    assert_eq!(store.count_credentials(Scope::Admin).await.unwrap(), 1);
    assert_eq!(store.count_credentials(Scope::Verify).await.unwrap(), 3);

    // A token in use already cannot be given to a second credential.
    let dup = credential(Scope::Verify, "copy");
    let res = store.create_credential(&dup, admin_token.hash()).await;
    assert!(matches!(res, Err(Error::AlreadyExists(_))), "{res:?}");
    assert_eq!(
        store
            .find_credential(admin_token.hash())
            .await
            .unwrap()
            .as_ref(),
        Some(&admin)
    );
    assert_eq!(store.count_credentials(Scope::Verify).await.unwrap(), 3);
}

async fn ensure_credential_is_idempotent(db: TestDb) {
    let store = db.store().await;
    let token = issue_token();
    let first = credential(Scope::Admin, "seeded");
    store
        .ensure_credential(&first, token.hash())
        .await
        .expect("seed");
    // The next start seeds the same token again, under a fresh id.
    let second = credential(Scope::Admin, "seeded again");
    store
        .ensure_credential(&second, token.hash())
        .await
        .expect("re-seed");
    store
        .ensure_credential(&first, token.hash())
        .await
        .expect("re-seed");

    assert_eq!(store.count_credentials(Scope::Admin).await.unwrap(), 1);
    assert_eq!(store.count_credentials(Scope::Verify).await.unwrap(), 0);
    assert_eq!(
        store.find_credential(token.hash()).await.unwrap().as_ref(),
        Some(&first)
    );

    // Another token is another credential.
    let other = issue_token();
    let verify = credential(Scope::Verify, "seeded verify");
    store
        .ensure_credential(&verify, other.hash())
        .await
        .unwrap();
    assert_eq!(store.count_credentials(Scope::Admin).await.unwrap(), 1);
    assert_eq!(store.count_credentials(Scope::Verify).await.unwrap(), 1);
    assert_eq!(
        store.find_credential(other.hash()).await.unwrap().as_ref(),
        Some(&verify)
    );
}

// ------------------------------------------------------------ concurrency

async fn concurrent_replace_plan_has_one_winner(db: TestDb) {
    let store = db.store().await;
    let original = plan("pro");
    store.create_plan(&original).await.unwrap();
    let expected = original.updated_at;

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20i64 {
        let store = store.clone();
        let mut candidate = original.clone();
        candidate.spec.display_name = format!("writer {i}");
        candidate.spec.price = Price::parse(100 + i, "USD").unwrap();
        candidate.updated_at = at(expected, i + 1);
        tasks.spawn(async move {
            let won = store
                .replace_plan(&candidate, expected)
                .await
                .expect("replace");
            (candidate, won)
        });
    }
    let mut winners = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (candidate, won) = joined.expect("task");
        if won {
            winners.push(candidate);
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "writers that won: {:?}",
        winners
            .iter()
            .map(|p| &p.spec.display_name)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        store.get_plan(original.id).await.unwrap().as_ref(),
        Some(&winners[0])
    );
}

async fn concurrent_rotate_key_has_one_winner(db: TestDb) {
    let store = db.store().await;
    let (_, t) = plan_and_tenant(&store).await;
    let (k, old) = key(t.id);
    store.create_key(&k, old.hash()).await.unwrap();
    let expected = k.updated_at;
    let until = at(expected, 60_000_000);

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..10i64 {
        let store = store.clone();
        let secret = KeyEnvironment::Live.issue_secret();
        let candidate = rotated(&k, &secret, at(expected, i + 1));
        tasks.spawn(async move {
            let won = store
                .rotate_key(&candidate, expected, secret.hash(), until)
                .await
                .expect("rotate");
            (candidate, secret.hash(), won)
        });
    }
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (candidate, hash, won) = joined.expect("task");
        if won {
            winners.push((candidate, hash));
        } else {
            losers.push(hash);
        }
    }
    assert_eq!(winners.len(), 1, "{} rotations won", winners.len());
    let (winner, winner_hash) = &winners[0];
    assert_eq!(store.get_key(k.id).await.unwrap().as_ref(), Some(winner));
    let when = at(expected, 100);
    assert_eq!(
        store
            .find_key_by_secret(*winner_hash, when)
            .await
            .unwrap()
            .as_ref(),
        Some(winner)
    );
    for hash in losers {
        assert_eq!(
            store.find_key_by_secret(hash, when).await.unwrap(),
            None,
            "a losing rotation stored its secret"
        );
    }
    // The old secret got exactly one grace period.
    assert_eq!(
        store
            .find_key_by_secret(old.hash(), at(until, -1))
            .await
            .unwrap()
            .as_ref(),
        Some(winner)
    );
    assert_eq!(
        store.find_key_by_secret(old.hash(), until).await.unwrap(),
        None
    );
}

async fn concurrent_create_plan_same_slug_has_one_winner(db: TestDb) {
    let store = db.store().await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..10 {
        let store = store.clone();
        let mut candidate = plan("contested");
        candidate.spec.display_name = format!("creator {i}");
        tasks.spawn(async move {
            let res = store.create_plan(&candidate).await;
            (candidate, res)
        });
    }
    let mut winners = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (candidate, res) = joined.expect("task");
        match res {
            Ok(()) => winners.push(candidate),
            Err(Error::AlreadyExists(_)) => {
                assert_eq!(store.get_plan(candidate.id).await.unwrap(), None);
            }
            Err(other) => panic!("a losing create failed otherwise: {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "{} creates won", winners.len());
    assert_eq!(
        store
            .get_plan_by_slug(&slug("contested"))
            .await
            .unwrap()
            .as_ref(),
        Some(&winners[0])
    );
    let listed = store.list_plans(true, &first_page(0, "")).await.unwrap();
    assert_eq!(listed, winners);
}
