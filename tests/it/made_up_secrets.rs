//! Made-up secrets cost nothing: every key and credential issued carries a
//! checksum, so one made up (or mistyped) is refused with no cache or SQL
//! work, where 100,000 unknown keys used to cost a SQL transaction each.
//! Keys issued before checksums still verify, unless the operator refuses
//! them (`unchecked_secrets = "refuse"`), and then made-up keys of any shape
//! are free. Unknown bearer tokens are remembered as unknown.
use tollgate::{
    domain::{
        ids::KeyId,
        now,
        secret::{SecretHash, UncheckedSecrets},
    },
    grpc::pb::{self, VerifyCode, verify_client::VerifyClient},
    store::CatalogStore,
};

use crate::{
    helpers::{InProcess, SqlCount, TestDb, valid_plan, with_token},
    verify::call,
};

/// A key issued the way keys were before checksums: the prefix and 32
/// bytes in base58.
fn old_style_secret() -> String {
    format!(
        "tg_live_{}",
        bs58::encode(rand::random::<[u8; 32]>()).into_string()
    )
}

/// A server on PostgreSQL (whose statements the count sees) that neither
/// flushes nor reloads keys during the test, with a key issued now and one from before
/// checksums; their secrets.
async fn start(unchecked: UncheckedSecrets) -> (InProcess, String, String) {
    let server = InProcess::start_with(TestDb::postgres().await, None, |c| {
        c.unchecked_secrets = unchecked;
        c.usage_flush_millis = 3_600_000;
        c.usage_sweep_seconds = 3_600;
        // Only what a test does reads SQL: no key or credential reloaded
        // on a timer.
        c.key_cache_seconds = 3_600;
        c.credential_cache_seconds = 3_600;
    })
    .await;
    let plan = server
        .plans()
        .create_plan(server.admin(pb::CreatePlanRequest {
            plan: Some(valid_plan("made-up")),
        }))
        .await
        .unwrap()
        .into_inner();
    let tenant = server
        .billing()
        .create_tenant(server.admin(pb::CreateTenantRequest {
            tenant: Some(pb::Tenant {
                external_id: "made-up".into(),
                plan_id: plan.id,
                ..Default::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    let mut secrets = Vec::new();
    for name in ["now", "before"] {
        let created = server
            .keys()
            .create_key(server.admin(pb::CreateKeyRequest {
                key: Some(pb::Key {
                    tenant_id: tenant.id.clone(),
                    name: name.into(),
                    ..Default::default()
                }),
            }))
            .await
            .unwrap()
            .into_inner();
        secrets.push((created.secret, created.key.unwrap().id));
    }
    // The second key's secret replaced by one of the old shape, as a key
    // issued before checksums has.
    let old = old_style_secret();
    let store = server.db().store().await;
    let id = KeyId::parse("id", &secrets[1].1).unwrap();
    let key = store.get_key(id).await.unwrap().unwrap();
    assert!(
        store
            .rotate_key(&key, key.updated_at, SecretHash::of(&old), now())
            .await
            .unwrap()
    );
    store.close().await;
    let new = secrets.swap_remove(0).0;
    (server, new, old)
}

async fn verify(server: &InProcess, secret: &str) -> VerifyCode {
    let answer = VerifyClient::new(server.channel())
        .verify(server.verify(call(secret, None, &[])))
        .await
        .unwrap()
        .into_inner();
    VerifyCode::try_from(answer.code).unwrap()
}

/// `secret` with its last character changed: its checksum no longer holds.
fn mistyped(secret: &str) -> String {
    let (head, last) = secret.split_at(secret.len() - 1);
    format!("{head}{}", if last == "2" { '3' } else { '2' })
}

/// Made up with the checksum's length but random: 1 in 2^32 would hold.
fn made_up(i: usize) -> String {
    let body: String = (0..50)
        .map(|j| {
            let alphabet = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
            alphabet[(i * 31 + j * 7 + (i >> 3) * j) % alphabet.len()] as char
        })
        .collect();
    format!("tg_live_{body}")
}

#[tokio::test]
async fn made_up_keys_are_refused_with_no_sql() {
    let (count, _guard) = SqlCount::install();
    let (server, new, old) = start(UncheckedSecrets::Accept).await;
    SqlCount::rebuild_interest();
    count.take();
    assert_eq!(verify(&server, &new).await, VerifyCode::Valid);
    assert!(
        count.take() > 0,
        "the first Verify reads the key: the count is live"
    );
    // 1,000 made up with a checksum that does not hold, a mistyped real
    // one, and junk of every other shape: refused, not one statement.
    let mut refused = vec![mistyped(&new), "tg_live_".into(), "not a key".into()];
    refused.extend((0..1_000).map(made_up));
    refused.push(format!("tg_test_{}", &new["tg_live_".len()..]));
    for secret in &refused {
        assert_eq!(
            verify(&server, secret).await,
            VerifyCode::KeyNotFound,
            "{secret}"
        );
    }
    assert_eq!(count.take(), 0, "made-up keys cost no SQL");
    // Keys issued before checksums still verify (looked up once).
    assert_eq!(verify(&server, &old).await, VerifyCode::Valid);
    assert!(count.take() > 0);
    assert_eq!(verify(&server, &old).await, VerifyCode::Valid);
    assert_eq!(count.take(), 0, "and cached like any other");
}

#[tokio::test]
async fn refusing_unchecked_keys_makes_every_made_up_key_free() {
    let (count, _guard) = SqlCount::install();
    let (server, new, old) = start(UncheckedSecrets::Refuse).await;
    SqlCount::rebuild_interest();
    count.take();
    assert_eq!(verify(&server, &new).await, VerifyCode::Valid);
    assert!(count.take() > 0, "the count is live");
    for _ in 0..200 {
        assert_eq!(
            verify(&server, &old_style_secret()).await,
            VerifyCode::KeyNotFound
        );
    }
    assert_eq!(verify(&server, &old).await, VerifyCode::KeyNotFound);
    assert_eq!(count.take(), 0, "old-shaped keys are refused unread");
}

#[tokio::test]
async fn made_up_bearer_tokens_cost_no_sql_and_unknown_ones_one() {
    let (count, _guard) = SqlCount::install();
    let (server, new, _) = start(UncheckedSecrets::Accept).await;
    SqlCount::rebuild_interest();
    count.take();
    let with = |token: &str| {
        let mut client = VerifyClient::new(server.channel());
        let request = with_token(call(&new, None, &[]), token);
        async move { client.verify(request).await.map(drop) }
    };
    assert!(with(&server.verify_token).await.is_ok());
    count.take();
    // A credential token with a checksum that does not hold: refused unread.
    for i in 0..200 {
        let forged = format!("tgc_{}", &made_up(i)["tg_live_".len()..]);
        let status = with(&forged).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    }
    assert_eq!(count.take(), 0, "forged tokens cost no SQL");
    // Any other unknown token (an operator's TOLLGATE_ADMIN_TOKEN may be any
    // text) is looked up once, then remembered as unknown.
    let status = with("someone's guess").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(count.take() > 0, "looked up");
    for _ in 0..50 {
        assert!(with("someone's guess").await.is_err());
    }
    assert_eq!(count.take(), 0, "remembered as unknown");
}

/// 12,000 unknown tokens (more than the credential cache holds) go by,
/// each looked up once; the credential in use stays cached all along (the
/// cache emptied itself when full, so the next call read SQL again).
#[tokio::test]
async fn a_flood_of_unknown_tokens_does_not_evict_the_credential_in_use() {
    let (count, _guard) = SqlCount::install();
    let (server, new, _) = start(UncheckedSecrets::Accept).await;
    SqlCount::rebuild_interest();
    let mut client = VerifyClient::new(server.channel());
    let mut with = async |token: &str| {
        client
            .verify(with_token(call(&new, None, &[]), token))
            .await
            .map(drop)
    };
    assert!(with(&server.verify_token).await.is_ok());
    for i in 0..12_000 {
        assert!(with(&format!("guess {i}")).await.is_err());
        if i % 100 == 99 {
            count.take();
            assert!(with(&server.verify_token).await.is_ok());
            assert_eq!(
                count.take(),
                0,
                "the credential in use is still cached at {i}"
            );
        }
    }
}
