//! Every request decoder and domain parser a caller's bytes reach: the
//! first byte picks a request type, the rest is decoded as its protobuf and
//! run through the edge's conversion into domain values (and, for
//! timestamps, the period arithmetic that once panicked on year 9999), or
//! read as a Polar webhook body, a secret or a page token. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tollgate::{
    domain::{
        credits::EntryKind,
        from_micros,
        page::PageRequest,
        plan::{BillingInterval, QuotaReset},
        secret::{SecretHash, shape},
        verify::{VerifyInput, quota_period},
    },
    grpc::{convert, credentials, pb},
    polar::event,
};

fn decode<M: Message + Default>(body: &[u8]) -> Option<M> {
    M::decode(body).ok()
}

/// Every period containing `at`, for every kind of reset and interval.
fn periods(at: &prost_types::Timestamp, anchor: &prost_types::Timestamp) {
    let (Ok(at), Ok(anchor)) = (
        convert::from_timestamp("at", at),
        convert::from_timestamp("anchor", anchor),
    ) else {
        return;
    };
    for reset in [
        QuotaReset::CalendarMonth { day: 1 },
        QuotaReset::CalendarMonth { day: 28 },
        QuotaReset::BillingPeriod,
    ] {
        for interval in [BillingInterval::Month, BillingInterval::Year] {
            let period = quota_period(reset, interval, anchor.min(at), at);
            assert!(
                period.start <= at && at < period.end,
                "{period:?} holds {at}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 16 {
        0 => {
            if let Some(r) = decode::<pb::CreatePlanRequest>(body) {
                let _ = convert::new_plan(r);
            }
        }
        1 => {
            if let Some(r) = decode::<pb::UpdatePlanRequest>(body) {
                let _ = convert::plan_patch(r);
            }
        }
        2 => {
            if let Some(r) = decode::<pb::CreateTenantRequest>(body) {
                let _ = convert::new_tenant(r);
            }
        }
        3 => {
            if let Some(r) = decode::<pb::UpdateTenantRequest>(body) {
                let _ = convert::tenant_patch(r);
            }
        }
        4 => {
            if let Some(r) = decode::<pb::CreateKeyRequest>(body) {
                let _ = convert::new_key(r);
            }
        }
        5 => {
            if let Some(r) = decode::<pb::UpdateKeyRequest>(body) {
                let _ = convert::key_patch(r);
            }
        }
        6 => {
            if let Some(r) = decode::<pb::GrantCreditsRequest>(body) {
                let _ = convert::credit_change(
                    EntryKind::Grant,
                    &r.tenant_id,
                    &r.credit_type,
                    r.amount,
                    &r.idempotency_key,
                    r.expire_time.as_ref(),
                );
            }
        }
        7 => {
            if let Some(r) = decode::<pb::SignupRequest>(body) {
                let _ = convert::signup(r);
            }
        }
        8 => {
            if let Some(r) = decode::<pb::ApplyCustomerRequest>(body) {
                let _ = convert::customer_update(r);
            }
        }
        9 => {
            if let Some(r) = decode::<pb::ApplySubscriptionRequest>(body) {
                let _ = convert::subscription_update(r);
            }
        }
        10 => {
            if let Some(r) = decode::<pb::CreateCredentialRequest>(body) {
                let _ = credentials::new_credential(&r);
            }
        }
        11 => {
            if let Some(r) = decode::<pb::VerifyRequest>(body) {
                let _ = VerifyInput::parse(
                    r.key,
                    &r.resource,
                    r.units,
                    r.required_features,
                    &r.credit_type,
                    r.credit_units,
                );
            }
        }
        12 => {
            let _ = event::read(body, "evt_fuzz");
        }
        13 => {
            if let Some(r) = decode::<pb::GetUsageRequest>(body) {
                let at = r.at.unwrap_or_default();
                let anchor = prost_types::Timestamp {
                    seconds: i64::from_le_bytes(
                        r.tenant_id
                            .as_bytes()
                            .get(..8)
                            .and_then(|b| b.try_into().ok())
                            .unwrap_or_default(),
                    ),
                    nanos: 0,
                };
                periods(&at, &anchor);
                periods(&at, &at);
            }
        }
        14 => {
            if let Some(r) = decode::<pb::ListKeysRequest>(body) {
                let _ = PageRequest::parse(r.page_size, &r.page_token, r.tenant_id);
            }
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(body) {
                for prefix in ["tg_live_", "tg_test_", "tgc_"] {
                    let _ = shape(text, prefix);
                }
                let _ = SecretHash::of(text);
                let _ = from_micros(i64::from_le_bytes(
                    body.get(..8)
                        .and_then(|b| b.try_into().ok())
                        .unwrap_or_default(),
                ));
            }
        }
    }
});
