//! `tollgate.v1.Verify`: the hot path. Denials are answers, not errors.
use prometheus_client::metrics::counter::Counter;
use tonic::{Request, Response, Status};

use super::{
    convert::timestamp,
    pb::{self, verify_server},
};
use crate::{
    domain::{
        Error,
        error::FieldViolation,
        verify::{VerifyCode, VerifyInput, headers},
    },
    telemetry::metrics::ServerMetrics,
    verifier::{Verdict, Verifier},
};

pub struct VerifyService {
    verifier: std::sync::Arc<Verifier>,
    /// `tollgate_verify_decisions_total`, by the answer's proto code.
    decisions: Vec<Counter>,
}

impl VerifyService {
    pub fn new(verifier: std::sync::Arc<Verifier>, metrics: &ServerMetrics) -> Self {
        let decisions = (0..=pb::VerifyCode::InsufficientCredits as i32)
            .map(|n| match pb::VerifyCode::try_from(n) {
                // Never answered: a counter of its own, not shown.
                Ok(pb::VerifyCode::Unspecified) | Err(_) => Counter::default(),
                Ok(code) => metrics.decision(code.as_str_name()),
            })
            .collect();
        Self {
            verifier,
            decisions,
        }
    }
}

fn code_to_pb(code: VerifyCode) -> pb::VerifyCode {
    match code {
        VerifyCode::Valid => pb::VerifyCode::Valid,
        VerifyCode::KeyNotFound => pb::VerifyCode::KeyNotFound,
        VerifyCode::KeyRevoked => pb::VerifyCode::KeyRevoked,
        VerifyCode::KeyExpired => pb::VerifyCode::KeyExpired,
        VerifyCode::KeyDisabled => pb::VerifyCode::KeyDisabled,
        VerifyCode::TenantInactive => pb::VerifyCode::TenantInactive,
        VerifyCode::FeatureNotInPlan => pb::VerifyCode::FeatureNotInPlan,
        VerifyCode::RateLimited => pb::VerifyCode::RateLimited,
        VerifyCode::QuotaExceeded => pb::VerifyCode::QuotaExceeded,
        VerifyCode::InsufficientCredits => pb::VerifyCode::InsufficientCredits,
    }
}

/// How much of the answer the caller asked for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum View {
    Basic,
    Full,
}

fn view(view: i32) -> Result<View, FieldViolation> {
    match pb::VerifyView::try_from(view) {
        Ok(pb::VerifyView::Unspecified | pb::VerifyView::Basic) => Ok(View::Basic),
        Ok(pb::VerifyView::Full) => Ok(View::Full),
        Err(_) => Err(FieldViolation::new(
            "view",
            "must be VERIFY_VIEW_BASIC or VERIFY_VIEW_FULL",
        )),
    }
}

/// The answer, with the features and the headers only in the FULL view:
/// building the headers costs more than the rest of a denied call.
fn verdict_to_pb(v: Verdict, view: View) -> pb::VerifyResponse {
    let at_micros = crate::domain::to_micros(v.at);
    let in_micros = |m: i64| crate::domain::from_micros(at_micros + m).map(timestamp);
    let matched = v.matched.as_deref();
    let (features, headers) = match (view, matched) {
        (View::Full, Some(m)) => (
            m.plan()
                .spec
                .features
                .iter()
                .map(|f| f.as_str().to_owned())
                .collect(),
            headers(
                v.code,
                v.rate,
                v.quota.as_ref().map(|q| (q.limit, q.used, q.period)),
                v.at,
            ),
        ),
        _ => Default::default(),
    };
    pb::VerifyResponse {
        valid: v.code == VerifyCode::Valid,
        code: code_to_pb(v.code) as i32,
        key_id: matched.map(|m| m.key().id.to_string()).unwrap_or_default(),
        tenant_id: matched
            .map(|m| m.tenant().id.to_string())
            .unwrap_or_default(),
        external_id: matched
            .and_then(|m| m.tenant().external_id.as_ref())
            .map(|x| x.as_str().to_owned())
            .unwrap_or_default(),
        plan_slug: matched
            .map(|m| m.plan().slug.to_string())
            .unwrap_or_default(),
        features,
        rate_limit: v.rate.map(|(limit, b)| pb::RateLimitStatus {
            limit: limit.burst,
            remaining: b.tokens.floor() as i64,
            reset_at: in_micros(b.full_in_micros),
            retry_after_ms: (b.retry_after_micros + 999) / 1000,
        }),
        quota: v.quota.map(|q| pb::QuotaStatus {
            overage_units: q.overage,
            resource: q.resource,
            limit: q.limit,
            used: q.used,
            remaining: (q.limit - q.used).max(0),
            reset_at: Some(timestamp(q.period.end)),
        }),
        http_status: i32::from(v.code.http_status()),
        headers,
        credits: v
            .credits
            .map(|(credit_type, balance, required)| pb::CreditStatus {
                credit_type: credit_type.as_str().to_owned(),
                balance,
                required,
            }),
    }
}

#[tonic::async_trait]
impl verify_server::Verify for VerifyService {
    async fn verify(
        &self,
        req: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let req = req.into_inner();
        let view = view(req.view);
        let input = VerifyInput::parse(
            req.key,
            &req.resource,
            req.units,
            req.required_features,
            &req.credit_type,
            req.credit_units,
        );
        let (input, view) = match (input, view) {
            (Ok(input), Ok(view)) => (input, view),
            (input, view) => {
                let mut violations = input.err().unwrap_or_default();
                violations.extend(view.err());
                return Err(Error::InvalidArgument(violations).into());
            }
        };
        let verdict = self.verifier.verify(&input).await?;
        let answer = verdict_to_pb(verdict, view);
        if let Some(counter) = self.decisions.get(answer.code as usize) {
            counter.inc();
        }
        Ok(Response::new(answer))
    }
}
