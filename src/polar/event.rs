//! Polar's webhook deliveries, and the Tollgate calls they become. Every
//! delivery is `{"type", "timestamp", "api_version", "data"}`; only the fields
//! used here are read, so Polar may add others freely.
use serde::Deserialize;
use time::OffsetDateTime;

use crate::grpc::{convert::timestamp, pb};

/// The provider name Tollgate knows Polar by.
pub const PROVIDER: &str = "polar";

/// A delivery's envelope: its type, and the object it is about.
#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    data: serde_json::Value,
}

/// What a delivery asks of Tollgate.
#[derive(Debug, PartialEq)]
pub enum Action {
    Subscription(pb::ApplySubscriptionRequest),
    Customer(pb::ApplyCustomerRequest),
    /// An event type Tollgate does not follow.
    Ignore {
        kind: String,
    },
}

/// Why a verified delivery cannot be applied: answered 400.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(String);

/// A Polar subscription, as every `subscription.*` event carries it.
#[derive(Debug, Deserialize)]
struct Subscription {
    id: String,
    status: String,
    #[serde(default, with = "time::serde::rfc3339::option")]
    current_period_start: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    current_period_end: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    trial_end: Option<OffsetDateTime>,
    #[serde(default)]
    cancel_at_period_end: bool,
    #[serde(default, with = "time::serde::rfc3339::option")]
    created_at: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    modified_at: Option<OffsetDateTime>,
    product_id: String,
    customer_id: String,
    customer: Option<Customer>,
}

/// A Polar customer: `data` of `customer.*` events, and embedded in a
/// subscription.
#[derive(Debug, Deserialize)]
struct Customer {
    id: String,
    #[serde(default)]
    external_id: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    created_at: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    modified_at: Option<OffsetDateTime>,
}

/// The event types Tollgate follows, as Polar names them.
pub const FOLLOWED: [&str; 12] = [
    "subscription.created",
    "subscription.active",
    "subscription.updated",
    "subscription.canceled",
    "subscription.uncanceled",
    "subscription.past_due",
    "subscription.paused",
    "subscription.resumed",
    "subscription.cycled",
    "subscription.migrated",
    "subscription.revoked",
    "customer.updated",
];

/// An event type as a metric label: one of [`FOLLOWED`], else
/// `subscription.other` or `other`, so labels stay few whatever is sent.
pub fn event_type(kind: &str) -> &'static str {
    match FOLLOWED.iter().find(|k| **k == kind) {
        Some(k) => k,
        None if kind.starts_with("subscription.") => "subscription.other",
        None => "other",
    }
}

/// Reads a verified body: its event type (as [`event_type`] labels it, or
/// `unreadable`), and what to do with it or why it cannot be applied.
/// `event_id` is the delivery's `webhook-id`.
pub fn read(body: &[u8], event_id: &str) -> (&'static str, Result<Action, Malformed>) {
    match serde_json::from_slice::<Envelope>(body) {
        Ok(envelope) => (event_type(&envelope.kind), apply(envelope, event_id)),
        Err(e) => ("unreadable", Err(Malformed(format!("body: {e}")))),
    }
}

#[cfg(test)]
fn action(body: &[u8], event_id: &str) -> Result<Action, Malformed> {
    read(body, event_id).1
}

fn apply(envelope: Envelope, event_id: &str) -> Result<Action, Malformed> {
    let kind = envelope.kind.as_str();
    if let Some(event) = kind.strip_prefix("subscription.") {
        let s: Subscription = serde_json::from_value(envelope.data)
            .map_err(|e| Malformed(format!("data of {kind}: {e}")))?;
        return subscription(s, event == "revoked", event_id).map(Action::Subscription);
    }
    if kind == "customer.updated" {
        let c: Customer = serde_json::from_value(envelope.data)
            .map_err(|e| Malformed(format!("data of {kind}: {e}")))?;
        return customer_update(c).map(Action::Customer);
    }
    Ok(Action::Ignore {
        kind: envelope.kind,
    })
}

/// Polar's status as Tollgate's. Polar keeps a subscription canceled at its
/// period's end `active` (with `cancel_at_period_end`) until that end and
/// only then calls it `canceled`, so `canceled` has no access left; Tollgate
/// turns `cancel_at_period_end` into a canceled tenant with access until the
/// period ends.
pub fn status(polar: &str) -> Option<pb::SubscriptionStatus> {
    use pb::SubscriptionStatus as S;
    Some(match polar {
        "trialing" => S::Trialing,
        "active" => S::Active,
        // Access is kept while Polar retries the payment.
        "past_due" => S::PastDue,
        // Not paid (yet, or ever): no access.
        "incomplete" | "incomplete_expired" | "unpaid" | "canceled" => S::Revoked,
        "paused" => S::Paused,
        _ => return None,
    })
}

fn subscription(
    s: Subscription,
    revoked: bool,
    event_id: &str,
) -> Result<pb::ApplySubscriptionRequest, Malformed> {
    let status = if revoked {
        // Access ends now, whatever the status says.
        pb::SubscriptionStatus::Revoked
    } else {
        status(&s.status).ok_or_else(|| {
            Malformed(format!("data.status: {:?} is not a Polar status", s.status))
        })?
    };
    let modified_at = order_time(s.modified_at, s.created_at)?;
    let customer = match s.customer {
        Some(c) => customer(&c),
        None => pb::Customer {
            provider_customer_id: s.customer_id,
            ..Default::default()
        },
    };
    // Both ends or neither: Polar leaves the end empty on some subscriptions.
    let (start, end) = match (s.current_period_start, s.current_period_end) {
        (Some(start), Some(end)) if start < end => (Some(timestamp(start)), Some(timestamp(end))),
        _ => (None, None),
    };
    Ok(pb::ApplySubscriptionRequest {
        provider: PROVIDER.into(),
        subscription_id: s.id,
        customer: Some(customer),
        product_id: s.product_id,
        status: status as i32,
        current_period_start: start,
        current_period_end: end,
        cancel_at_period_end: s.cancel_at_period_end,
        trial_end: s.trial_end.map(timestamp),
        modified_at: Some(timestamp(modified_at)),
        event_id: event_id.into(),
    })
}

/// What orders an object's updates: its `modified_at`, which Polar leaves
/// null until the object is first modified, else its `created_at`.
fn order_time(
    modified_at: Option<OffsetDateTime>,
    created_at: Option<OffsetDateTime>,
) -> Result<OffsetDateTime, Malformed> {
    modified_at
        .or(created_at)
        .ok_or_else(|| Malformed("data.modified_at: missing, and no data.created_at".into()))
}

fn customer(c: &Customer) -> pb::Customer {
    pb::Customer {
        external_id: c.external_id.clone().unwrap_or_default(),
        email: c.email.clone().unwrap_or_default(),
        // Tollgate keeps at most 200 characters of a name and refuses one of
        // whitespace alone: cut, or sent as none, so the delivery applies.
        name: c
            .name
            .as_deref()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or("")
            .chars()
            .take(200)
            .collect(),
        provider_customer_id: c.id.clone(),
    }
}

fn customer_update(c: Customer) -> Result<pb::ApplyCustomerRequest, Malformed> {
    let modified_at = order_time(c.modified_at, c.created_at)?;
    Ok(pb::ApplyCustomerRequest {
        provider: PROVIDER.into(),
        customer: Some(customer(&c)),
        modified_at: Some(timestamp(modified_at)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(kind: &str, data: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "type": kind,
            "timestamp": "2026-11-23T10:00:00Z",
            "api_version": "2026-01",
            "data": data,
        }))
        .unwrap()
    }

    fn subscription_data(status: &str) -> serde_json::Value {
        serde_json::json!({
            "id": "sub_1", "status": status, "product_id": "prod_pro",
            "customer_id": "pc_1",
            "current_period_start": "2026-11-01T00:00:00Z",
            "current_period_end": "2026-12-01T00:00:00.5+00:00",
            "cancel_at_period_end": true, "trial_end": null,
            "created_at": "2026-11-01T00:00:00Z", "modified_at": null,
            "customer": {"id": "pc_1", "external_id": null, "email": "a@b.test", "name": null},
            "amount": 4900, "currency": "usd",
        })
    }

    #[test]
    fn a_subscription_event_becomes_apply_subscription() {
        let body = delivery("subscription.canceled", subscription_data("active"));
        let Action::Subscription(r) = action(&body, "msg_1").unwrap() else {
            panic!("not a subscription");
        };
        assert_eq!(r.provider, "polar");
        assert_eq!(r.subscription_id, "sub_1");
        assert_eq!(r.status, pb::SubscriptionStatus::Active as i32);
        assert!(r.cancel_at_period_end);
        assert_eq!(r.event_id, "msg_1");
        let c = r.customer.unwrap();
        assert_eq!(
            (c.external_id.as_str(), c.provider_customer_id.as_str()),
            ("", "pc_1")
        );
        // No modification yet: the creation time orders it.
        assert_eq!(r.modified_at.unwrap().seconds, 1_793_491_200);
        assert_eq!(r.current_period_end.unwrap().nanos, 500_000_000);
    }

    #[test]
    fn a_blank_customer_name_is_sent_as_none_and_a_long_one_cut() {
        for (name, sent) in [
            (serde_json::json!("   "), String::new()),
            (serde_json::json!("x".repeat(300)), "x".repeat(200)),
            (serde_json::json!(" Ada "), " Ada ".to_owned()),
        ] {
            let mut data = subscription_data("active");
            data["customer"]["name"] = name;
            let body = delivery("subscription.updated", data);
            let Action::Subscription(r) = action(&body, "msg_1").unwrap() else {
                panic!("not a subscription");
            };
            assert_eq!(r.customer.unwrap().name, sent);
        }
    }

    #[test]
    fn revoked_ends_access_whatever_the_status() {
        let body = delivery("subscription.revoked", subscription_data("active"));
        let Action::Subscription(r) = action(&body, "msg_1").unwrap() else {
            panic!("not a subscription");
        };
        assert_eq!(r.status, pb::SubscriptionStatus::Revoked as i32);
    }

    #[test]
    fn statuses_map_as_the_readme_says() {
        use pb::SubscriptionStatus as S;
        for (polar, ours) in [
            ("trialing", S::Trialing),
            ("active", S::Active),
            ("past_due", S::PastDue),
            ("incomplete", S::Revoked),
            ("incomplete_expired", S::Revoked),
            ("unpaid", S::Revoked),
            ("canceled", S::Revoked),
            ("paused", S::Paused),
        ] {
            assert_eq!(status(polar), Some(ours), "{polar}");
        }
        assert_eq!(status("frozen"), None);
    }

    #[test]
    fn event_type_labels_stay_few() {
        assert_eq!(event_type("subscription.updated"), "subscription.updated");
        assert_eq!(event_type("customer.updated"), "customer.updated");
        assert_eq!(event_type("subscription.frozen"), "subscription.other");
        assert_eq!(event_type("order.paid"), "other");
        assert_eq!(read(b"{not json", "m").0, "unreadable");
    }

    #[test]
    fn missing_fields_and_unknown_types() {
        let no_id = delivery(
            "subscription.updated",
            serde_json::json!({"status": "active"}),
        );
        let e = action(&no_id, "m").unwrap_err().to_string();
        assert!(e.contains("missing field `id`"), "{e}");
        let odd = delivery("subscription.updated", subscription_data("frozen"));
        assert!(
            action(&odd, "m")
                .unwrap_err()
                .to_string()
                .contains("data.status")
        );
        assert!(action(b"{not json", "m").is_err());
        let other = delivery("order.paid", serde_json::json!({"id": 1}));
        assert_eq!(
            action(&other, "m").unwrap(),
            Action::Ignore {
                kind: "order.paid".into()
            }
        );
    }
}
