//! Service credentials.
use super::*;

crate::conformance!(
    credentials,
    seeding_is_idempotent_and_replaces_the_previous_token,
    revoked_and_expiring_credentials_are_listed,
);

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

fn seeded(name: &str) -> Credential {
    Credential {
        seeded: true,
        ..credential(Scope::Admin, name)
    }
}

async fn seeding_is_idempotent_and_replaces_the_previous_token(db: TestDb) {
    let store = db.store().await;
    let made = issue_token();
    let by_hand = credential(Scope::Admin, "by hand");
    store
        .create_credential(&by_hand, made.hash())
        .await
        .unwrap();

    let token = issue_token();
    let first = seeded("seeded");
    assert_eq!(
        store.seed_credential(&first, token.hash()).await.unwrap(),
        vec![]
    );
    // The next start seeds the same token again, under a fresh id: nothing changes.
    for again in [seeded("seeded again"), first.clone()] {
        assert_eq!(
            store.seed_credential(&again, token.hash()).await.unwrap(),
            vec![]
        );
    }
    assert_eq!(store.count_credentials(Scope::Admin).await.unwrap(), 2);
    assert_eq!(
        store.find_credential(token.hash()).await.unwrap().as_ref(),
        Some(&first)
    );

    // A new token: the credential of the old one is revoked in the same
    // transaction; credentials made otherwise are left alone.
    let next_token = issue_token();
    let next = seeded("seeded");
    assert_eq!(
        store
            .seed_credential(&next, next_token.hash())
            .await
            .unwrap(),
        vec![first.id]
    );
    assert_eq!(store.find_credential(token.hash()).await.unwrap(), None);
    assert_eq!(
        store
            .find_credential(next_token.hash())
            .await
            .unwrap()
            .as_ref(),
        Some(&next)
    );
    assert_eq!(
        store.find_credential(made.hash()).await.unwrap().as_ref(),
        Some(&by_hand)
    );
    // Going back to a revoked token does not bring it back.
    let back = seeded("seeded");
    assert_eq!(
        store.seed_credential(&back, token.hash()).await.unwrap(),
        vec![next.id]
    );
    assert_eq!(store.find_credential(token.hash()).await.unwrap(), None);
    assert_eq!(store.count_credentials(Scope::Admin).await.unwrap(), 1);
}

async fn revoked_and_expiring_credentials_are_listed(db: TestDb) {
    let store = db.store().await;
    let t = now();
    let expiring = Credential {
        created_at: t,
        expires_at: Some(t + Duration::days(30)),
        ..credential(Scope::Verify, "gateway")
    };
    let expiring_token = issue_token();
    store
        .create_credential(&expiring, expiring_token.hash())
        .await
        .unwrap();
    let ops = Credential {
        created_at: t + Duration::microseconds(1),
        ..credential(Scope::Admin, "ops")
    };
    let ops_token = issue_token();
    store
        .create_credential(&ops, ops_token.hash())
        .await
        .unwrap();
    assert_eq!(
        store.find_credential(expiring_token.hash()).await.unwrap(),
        Some(expiring.clone()),
        "the expiry round-trips"
    );

    let revoked_at = t + Duration::seconds(5);
    let revoked = store.revoke_credential(ops.id, revoked_at).await.unwrap();
    let expected = Credential {
        revoked_at: Some(revoked_at),
        ..ops.clone()
    };
    assert_eq!(revoked.as_ref(), Some(&expected));
    assert_eq!(store.find_credential(ops_token.hash()).await.unwrap(), None);
    // Revoking again keeps the first revocation time.
    assert_eq!(
        store
            .revoke_credential(ops.id, revoked_at + Duration::seconds(1))
            .await
            .unwrap(),
        Some(expected.clone())
    );
    assert_eq!(
        store
            .revoke_credential(CredentialId::generate(), revoked_at)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.list_credentials().await.unwrap(),
        vec![expiring, expected],
        "oldest first, revoked ones included"
    );
    assert_eq!(store.count_credentials(Scope::Admin).await.unwrap(), 0);
}
