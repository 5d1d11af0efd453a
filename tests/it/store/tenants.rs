//! Tenants.
use super::*;

crate::conformance!(
    tenants_round_trip,
    duplicate_external_id_is_rejected,
    list_tenants_filters_and_pages,
    replace_tenant_is_compare_and_set,
);

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
