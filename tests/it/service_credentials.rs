//! Service credentials (#13, finding 4): listed and revoked over gRPC and
//! from the command line, a revocation refused at once by the replica that
//! made it and within 100 ms by the others, expiry, and the admin token
//! from the environment replacing the one it set before.
use std::time::{Duration, Instant};

use tollgate::grpc::pb::{
    self, CreateCredentialRequest, CredentialScope, CredentialStatus, ListCredentialsRequest,
    RevokeCredentialRequest, keys_client::KeysClient, verify_client::VerifyClient,
};
use tonic::{Code, transport::Channel};

use crate::{
    helpers::{InProcess, Server, TestDb, run_tollgate, tollgate, with_token},
    replicas::{Cluster, channel},
    verify::call,
};

/// A call that needs a verify-scope credential: `Ok` when `token` is accepted
/// (the made-up key's own verdict does not matter here).
async fn accepted(channel: &Channel, token: &str) -> Result<(), tonic::Status> {
    VerifyClient::new(channel.clone())
        .verify(with_token(call("tg_live_madeup", None, &[]), token))
        .await
        .map(drop)
}

async fn create(
    channel: &Channel,
    admin: &str,
    scope: CredentialScope,
    expire_time: Option<prost_types::Timestamp>,
) -> (pb::Credential, String) {
    let created = KeysClient::new(channel.clone())
        .create_credential(with_token(
            CreateCredentialRequest {
                name: "gateway".into(),
                scope: scope as i32,
                expire_time,
            },
            admin,
        ))
        .await
        .expect("CreateCredential")
        .into_inner();
    (created.credential.expect("credential"), created.token)
}

async fn list(channel: &Channel, admin: &str) -> Vec<pb::Credential> {
    KeysClient::new(channel.clone())
        .list_credentials(with_token(ListCredentialsRequest {}, admin))
        .await
        .expect("ListCredentials")
        .into_inner()
        .credentials
}

fn status(c: &pb::Credential) -> CredentialStatus {
    CredentialStatus::try_from(c.status).unwrap()
}

/// Polls until `token` is refused on `channel`; how long that took.
async fn refused_within(channel: &Channel, token: &str, limit: Duration) -> Duration {
    let since = Instant::now();
    loop {
        match accepted(channel, token).await {
            Ok(()) => assert!(
                since.elapsed() <= limit,
                "the revoked credential is still accepted after {:?}",
                since.elapsed()
            ),
            Err(status) => {
                assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
                return since.elapsed();
            }
        }
    }
}

#[tokio::test]
async fn a_revoked_credential_is_refused_at_once_and_listed_as_revoked() {
    // The default 30 s credential cache: before, a revoked token kept
    // working for that long.
    let server = InProcess::start(TestDb::postgres().await).await;
    let ch = server.channel();
    let (credential, token) = create(&ch, &server.admin_token, CredentialScope::Verify, None).await;
    assert_eq!(status(&credential), CredentialStatus::Active);
    assert!(token.starts_with("tgc_"), "{token}");
    for _ in 0..3 {
        accepted(&ch, &token).await.expect("a new credential works");
    }
    let listed = list(&ch, &server.admin_token).await;
    assert!(
        listed.iter().any(|c| c == &credential),
        "ListCredentials shows it: {listed:?}"
    );
    assert!(
        listed.iter().all(|c| !format!("{c:?}").contains(&token)),
        "no token is ever listed"
    );

    let revoke = |id: String| {
        let mut keys = KeysClient::new(ch.clone());
        let request = server.admin(RevokeCredentialRequest { id });
        async move { keys.revoke_credential(request).await }
    };
    let revoked = revoke(credential.id.clone()).await.unwrap().into_inner();
    assert_eq!(status(&revoked), CredentialStatus::Revoked);
    assert!(revoked.revoke_time.is_some());
    let status_of_call = accepted(&ch, &token).await.unwrap_err();
    assert_eq!(status_of_call.code(), Code::Unauthenticated);
    // Revoking again changes nothing.
    let again = revoke(credential.id.clone()).await.unwrap().into_inner();
    assert_eq!(again, revoked);
    let listed = list(&ch, &server.admin_token).await;
    assert!(listed.contains(&revoked), "{listed:?}");

    // Bad requests name their field.
    let unknown = revoke("cred_0193a5b2c3d47e8f9a0b1c2d3e4f5a6b".into())
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    let malformed = revoke("key_123".into()).await.unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert!(malformed.message().contains("id"), "{malformed:?}");
    // A verify-scope credential may not manage credentials.
    let denied = KeysClient::new(ch.clone())
        .list_credentials(server.verify(ListCredentialsRequest {}))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn a_credential_stops_working_when_it_expires() {
    let server = InProcess::start(TestDb::postgres().await).await;
    let ch = server.channel();
    let keys = || KeysClient::new(ch.clone());
    let now = std::time::SystemTime::now();
    let at = |t: std::time::SystemTime| prost_types::Timestamp::from(t);

    let bad = keys()
        .create_credential(server.admin(CreateCredentialRequest {
            name: "late".into(),
            scope: CredentialScope::Verify as i32,
            expire_time: Some(at(now - Duration::from_secs(1))),
        }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("expire_time"), "{bad:?}");
    let bad = keys()
        .create_credential(server.admin(CreateCredentialRequest {
            name: "no scope".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("scope"), "{bad:?}");

    let expires = now + Duration::from_secs(2);
    let (credential, token) = create(
        &ch,
        &server.admin_token,
        CredentialScope::Verify,
        Some(at(expires)),
    )
    .await;
    assert!(credential.expire_time.is_some());
    accepted(&ch, &token).await.expect("works until it expires");
    tokio::time::sleep(
        expires
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
            + Duration::from_millis(50),
    )
    .await;
    let refused = accepted(&ch, &token).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(refused.message().contains("expired"), "{refused:?}");
    let listed = list(&ch, &server.admin_token).await;
    let shown = listed.iter().find(|c| c.id == credential.id).unwrap();
    assert_eq!(status(shown), CredentialStatus::Expired);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_through_one_replica_reaches_the_others_within_100ms() {
    let cluster = Cluster::new().await;
    let a = cluster.replica(&[]);
    let b = cluster.replica(&[]);
    let (ca, cb) = (channel(&a).await, channel(&b).await);
    let (credential, token) = create(&ca, &cluster.token, CredentialScope::Verify, None).await;
    for _ in 0..3 {
        accepted(&cb, &token)
            .await
            .expect("B caches the credential");
    }
    KeysClient::new(ca)
        .revoke_credential(with_token(
            RevokeCredentialRequest { id: credential.id },
            &cluster.token,
        ))
        .await
        .unwrap();
    let took = refused_within(&cb, &token, Duration::from_millis(100)).await;
    eprintln!("replica B refused the revoked credential {took:?} after RevokeCredential on A");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_lists_and_revokes_credentials_and_tells_the_servers() {
    let cluster = Cluster::new().await;
    let server = cluster.replica(&[]);
    let ch = channel(&server).await;
    let cli = |args: &[&str]| {
        tollgate()
            .args(["--database-url", cluster.db.url()])
            .envs(cluster.redis_env())
            .args(args)
            .output()
            .expect("running tollgate")
    };
    let out = cli(&[
        "admin",
        "create-credential",
        "--scope",
        "verify",
        "--name",
        "edge gateway",
        "--expire-time",
        "2100-01-01T00:00:00Z",
    ]);
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    accepted(&ch, &token)
        .await
        .expect("the new credential works");

    let listed = run_tollgate(&cluster.db, &["admin", "list-credentials"]);
    let line = listed
        .lines()
        .find(|l| l.ends_with("\tedge gateway"))
        .unwrap_or_else(|| panic!("listed: {listed}"));
    let fields: Vec<&str> = line.split('\t').collect();
    assert_eq!(fields[1..3], ["verify", "active"], "{line}");
    assert_eq!(fields[4], "2100-01-01T00:00:00Z", "{line}");
    assert!(!listed.contains(&token), "no token is listed");

    let out = cli(&["admin", "revoke-credential", fields[0]]);
    assert!(out.status.success(), "{out:?}");
    let took = refused_within(&ch, &token, Duration::from_millis(100)).await;
    eprintln!("the server refused the credential {took:?} after revoke-credential exited");
    let listed = run_tollgate(&cluster.db, &["admin", "list-credentials"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(fields[0]) && l.contains("\trevoked\t")),
        "{listed}"
    );

    for (args, says) in [
        (vec!["admin", "revoke-credential", "nonsense"], "ID"),
        (
            vec![
                "admin",
                "revoke-credential",
                "cred_0193a5b2c3d47e8f9a0b1c2d3e4f5a6b",
            ],
            "not found",
        ),
        (
            vec![
                "admin",
                "create-credential",
                "--scope",
                "verify",
                "--expire-time",
                "yesterday",
            ],
            "RFC 3339",
        ),
        (
            vec![
                "admin",
                "create-credential",
                "--scope",
                "admin",
                "--expire-time",
                "2001-01-01T00:00:00Z",
            ],
            "expire_time",
        ),
    ] {
        let out = cli(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_admin_token_replaces_the_one_set_before_on_every_replica() {
    let cluster = Cluster::new().await;
    let first = format!("first-admin-token-{}", uuid::Uuid::now_v7().simple());
    let second = format!("second-admin-token-{}", uuid::Uuid::now_v7().simple());
    let old = cluster.replica(&[("TOLLGATE_ADMIN_TOKEN", &first)]);
    let old_ch = channel(&old).await;
    list(&old_ch, &first).await;

    // A replica started with the new token (a rollout's first new pod).
    let new = cluster.replica(&[("TOLLGATE_ADMIN_TOKEN", &second)]);
    let new_ch = channel(&new).await;
    let listed = list(&new_ch, &second).await;
    let seeded: Vec<_> = listed.iter().filter(|c| c.from_admin_token).collect();
    assert_eq!(seeded.len(), 2, "{listed:?}");
    assert_eq!(status(seeded[0]), CredentialStatus::Revoked);
    assert_eq!(status(seeded[1]), CredentialStatus::Active);
    // The old token is refused everywhere, the replica still running on it
    // included (told through the change channel); the new one is accepted
    // there too.
    for ch in [&new_ch, &old_ch] {
        refused_within(ch, &first, Duration::from_millis(100)).await;
        list(ch, &second).await;
    }
    // Starting again on the same token changes nothing.
    old.stop();
    let again = cluster.replica(&[("TOLLGATE_ADMIN_TOKEN", &second)]);
    assert_eq!(
        list(&channel(&again).await, &second).await.len(),
        listed.len()
    );
    // A server that is not given the setting leaves the credentials alone.
    let without = Server::start(&["--database-url", cluster.db.url()]);
    list(&channel(&without).await, &second).await;
}
