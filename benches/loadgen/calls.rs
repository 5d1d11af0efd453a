//! The calls the load generator makes: a no-op, Verify, and a Touch that
//! loads a key's entitlements without taking from its lease.
use std::sync::Arc;

use tollgate::grpc::pb::{VerifyCode, VerifyRequest, VerifyView, verify_client::VerifyClient};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::target::authed;

#[derive(Clone)]
pub enum Call {
    Noop,
    Verify {
        /// Each call takes one at random (one only: a hot tenant).
        secrets: Arc<[String]>,
        view: VerifyView,
        expect: VerifyCode,
        whole: bool,
    },
    /// A Verify refused at the feature check, before the limiter: it loads
    /// the key's entitlements (the server forgets them after
    /// `key_cache_seconds`, 5 by default) and leaves its lease alone.
    Touch(String),
}

impl Call {
    pub fn verify(secrets: Vec<String>, view: VerifyView, expect: VerifyCode, whole: bool) -> Self {
        Call::Verify {
            secrets: secrets.into(),
            view,
            expect,
            whole,
        }
    }
}

/// What the load generator reads of a Verify answer unless `--full-decode`:
/// `valid` and `code`; prost skips the rest unparsed. The client shares the
/// machine's two cores with the server, so its decoding would otherwise be
/// charged to the server's throughput. The answer's size is still printed.
#[derive(Clone, PartialEq, prost::Message)]
struct Verdict {
    #[prost(bool, tag = "1")]
    valid: bool,
    #[prost(int32, tag = "2")]
    code: i32,
}

/// The encoded size of one Verify answer, decoded whole.
pub async fn answer_size(call: &Call, channel: &Channel, token: &str) -> usize {
    use prost::Message;
    let Call::Verify { secrets, view, .. } = call else {
        return 0;
    };
    VerifyClient::new(channel.clone())
        .verify(authed(
            VerifyRequest {
                key: secrets[0].clone(),
                resource: "calls".into(),
                units: Some(0),
                view: *view as i32,
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
        .encoded_len()
}

/// One call on `channel`; panics on a wrong answer, so a figure is never
/// measured on wrong answers.
pub async fn one(call: &Call, channel: &Channel, token: &str) {
    if let Err(status) = attempt(call, channel, token).await {
        panic!("{status}");
    }
}

/// One call; a failed call (overload, time budget) is an error, a wrong
/// answer a panic.
pub async fn attempt(call: &Call, channel: &Channel, token: &str) -> Result<(), tonic::Status> {
    match call {
        Call::Noop => {
            // With the same credential header as Verify: every call to the
            // service carries one, so the no-op carries it too.
            HealthClient::new(channel.clone())
                .check(authed(HealthCheckRequest::default(), token))
                .await?;
        }
        Call::Verify {
            secrets,
            view,
            expect,
            whole,
        } => {
            let request = VerifyRequest {
                key: secrets[rand::random_range(0..secrets.len())].clone(),
                resource: "calls".into(),
                view: *view as i32,
                ..Default::default()
            };
            let code = verify(request, channel, token, *whole).await?;
            assert_eq!(code, *expect as i32, "unexpected Verify answer");
        }
        Call::Touch(secret) => {
            let request = VerifyRequest {
                key: secret.clone(),
                resource: "calls".into(),
                required_features: vec!["bench:absent".into()],
                ..Default::default()
            };
            let code = verify(request, channel, token, false).await?;
            assert_eq!(
                code,
                VerifyCode::FeatureNotInPlan as i32,
                "unexpected Verify answer"
            );
        }
    }
    Ok(())
}

/// A Verify answer's code, the answer decoded whole or not.
async fn verify(
    request: VerifyRequest,
    channel: &Channel,
    token: &str,
    whole: bool,
) -> Result<i32, tonic::Status> {
    let request = authed(request, token);
    if whole {
        return Ok(VerifyClient::new(channel.clone())
            .verify(request)
            .await?
            .into_inner()
            .code);
    }
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    Ok(grpc
        .unary(
            request,
            tonic::codegen::http::uri::PathAndQuery::from_static("/tollgate.v1.Verify/Verify"),
            tonic_prost::ProstCodec::<VerifyRequest, Verdict>::default(),
        )
        .await?
        .into_inner()
        .code)
}
