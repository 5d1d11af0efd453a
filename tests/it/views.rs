//! Verify's views: BASIC (the default) answers the decision, the ids and the
//! rate-limit and quota blocks; FULL adds the plan's features and the
//! headers to forward. The view is presentation only: both views of the
//! same state answer the same decision.
use tollgate::grpc::pb::{VerifyCode, VerifyView, verify_client::VerifyClient};

use crate::{
    helpers::{InProcess, TestDb},
    verify::{call, code, full, setup, verify},
};

#[tokio::test]
async fn views_choose_what_the_answer_carries() {
    let server = InProcess::start(TestDb::sqlite().await).await;
    let (secret, key_id) = setup(&server, 600, 20, 100).await;

    let basic = verify(&server, call(&secret, Some(0), &["model:gpt-4o"])).await;
    assert_eq!(code(&basic), VerifyCode::Valid);
    assert_eq!(basic.key_id, key_id);
    assert!(basic.tenant_id.starts_with("ten_"));
    assert!(!basic.plan_slug.is_empty());
    assert_eq!(basic.http_status, 200);
    assert!(basic.rate_limit.is_some() && basic.quota.is_some());
    assert!(basic.features.is_empty(), "{:?}", basic.features);
    assert!(basic.headers.is_empty(), "{:?}", basic.headers);
    let mut explicit = call(&secret, Some(0), &[]);
    explicit.view = VerifyView::Basic as i32;
    assert!(verify(&server, explicit).await.headers.is_empty());

    let whole = verify(&server, full(call(&secret, Some(0), &["model:gpt-4o"]))).await;
    assert_eq!(code(&whole), VerifyCode::Valid);
    assert_eq!(whole.features, ["model:gpt-4o"]);
    assert_eq!(whole.headers["X-RateLimit-Limit"], "20");
    assert_eq!(whole.headers["X-Quota-Limit"], "100");
    // The same decision and blocks, in a larger answer.
    assert_eq!(
        (
            whole.key_id.as_str(),
            whole.rate_limit.as_ref().unwrap().limit
        ),
        (
            basic.key_id.as_str(),
            basic.rate_limit.as_ref().unwrap().limit
        )
    );
    use prost::Message;
    assert!(
        whole.encoded_len() > 2 * basic.encoded_len(),
        "{} vs {} bytes",
        whole.encoded_len(),
        basic.encoded_len()
    );

    // A denial shows its headers (Retry-After) only in FULL too.
    let denied = verify(&server, full(call("tg_live_nosuchkey", None, &[]))).await;
    assert_eq!(code(&denied), VerifyCode::KeyNotFound);
    assert!(denied.features.is_empty());

    let mut unknown = call(&secret, None, &[]);
    unknown.view = 7;
    let error = VerifyClient::new(server.channel())
        .verify(server.verify(unknown))
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(error.message().contains("view"), "{}", error.message());
}
