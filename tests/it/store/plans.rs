//! Plans and the provider products mapped to them.
use super::*;

crate::conformance!(
    plans_round_trip,
    duplicate_slug_is_rejected,
    replace_plan_is_compare_and_set,
    list_plans_pages_in_id_order,
    list_plans_hides_archived,
    product_mappings,
);

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
