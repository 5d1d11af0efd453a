//! Writes racing each other: one wins, the others change nothing.
use super::{keys::rotated, *};

crate::conformance!(
    concurrent_replace_plan_has_one_winner,
    concurrent_rotate_key_has_one_winner,
    concurrent_create_plan_same_slug_has_one_winner,
);

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
