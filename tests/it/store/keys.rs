//! API keys and their secrets.
use super::*;

crate::conformance!(
    keys_round_trip_and_find_by_secret,
    list_keys_is_per_tenant,
    replace_key_is_compare_and_set,
    rotate_key_keeps_old_secret_for_grace,
    rotate_key_without_grace,
    stale_rotate_writes_nothing,
    create_key_for_missing_tenant_writes_nothing,
);

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
pub(super) fn rotated(key: &ApiKey, secret: &IssuedSecret, updated_at: Timestamp) -> ApiKey {
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
