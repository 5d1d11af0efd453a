//! Billing at the edge: credit grants and debits, Polar's customers and
//! subscriptions parsed; usage, ledger entries, subscriptions, invoices and
//! revenue shown.
use super::*;

impl From<&UsageReport> for pb::GetUsageResponse {
    fn from(r: &UsageReport) -> Self {
        Self {
            tenant_id: r.tenant_id.to_string(),
            period_start: Some(timestamp(r.period.start)),
            period_end: Some(timestamp(r.period.end)),
            resources: r
                .resources
                .iter()
                .map(|u| pb::ResourceUsage {
                    resource: u.resource.as_str().to_owned(),
                    used: u.used,
                    included: u.included,
                    overage: u.overage,
                })
                .collect(),
        }
    }
}

/// A grant or debit request, every field checked at once.
pub fn credit_change(
    kind: EntryKind,
    tenant_id: &str,
    credit_type: &str,
    amount: i64,
    idempotency_key: &str,
    expire_time: Option<&PbTimestamp>,
) -> Result<CreditChange> {
    let mut v = Violations::default();
    let tenant_id = v.required("tenant_id", tenant_id, TenantId::parse);
    let credit_type = v.check("", CreditType::parse("credit_type", credit_type));
    let amount = v.check("", parse_amount("amount", amount));
    let idempotency_key = v.check(
        "",
        IdempotencyKey::parse("idempotency_key", idempotency_key),
    );
    let expires_at = match expire_time {
        Some(t) => v.check("", from_timestamp("expire_time", t)).map(Some),
        None => Some(None),
    };
    v.finish(|| {
        Some(CreditChange {
            tenant_id: tenant_id?,
            credit_type: credit_type?,
            kind,
            amount: amount?,
            idempotency_key: idempotency_key?,
            expires_at: expires_at?,
        })
    })
}

pub fn entry_to_pb(e: &LedgerEntry, replayed: bool) -> pb::CreditEntry {
    pb::CreditEntry {
        id: e.id.to_string(),
        tenant_id: e.tenant_id.to_string(),
        credit_type: e.credit_type.as_str().to_owned(),
        kind: match e.kind {
            EntryKind::Grant => pb::CreditEntryKind::Grant,
            EntryKind::Debit => pb::CreditEntryKind::Debit,
        } as i32,
        amount: e.amount,
        balance_after: e.balance_after,
        idempotency_key: e.idempotency_key.as_str().to_owned(),
        expire_time: e.expires_at.map(timestamp),
        create_time: Some(timestamp(e.created_at)),
        replayed,
    }
}

impl From<&Applied> for pb::CreditEntry {
    fn from(a: &Applied) -> Self {
        entry_to_pb(&a.entry, a.replayed)
    }
}

impl From<&Balance> for pb::CreditBalance {
    fn from(b: &Balance) -> Self {
        pb::CreditBalance {
            credit_type: b.credit_type.as_str().to_owned(),
            balance: b.balance,
            next_expire_time: b.next_expiry.map(timestamp),
        }
    }
}

pub(super) fn subscription_status_to_pb(s: TenantStatus) -> pb::SubscriptionStatus {
    match s {
        TenantStatus::Trialing => pb::SubscriptionStatus::Trialing,
        TenantStatus::Active => pb::SubscriptionStatus::Active,
        TenantStatus::PastDue => pb::SubscriptionStatus::PastDue,
        TenantStatus::Canceled => pb::SubscriptionStatus::Canceled,
        TenantStatus::Revoked => pb::SubscriptionStatus::Revoked,
        TenantStatus::Paused => pb::SubscriptionStatus::Paused,
    }
}

/// A required `customer`: at least one of its two ids.
pub(super) fn customer(v: &mut Violations, c: Option<&pb::Customer>) -> Option<Customer> {
    let Some(c) = c else {
        v.push("customer", "is required");
        return None;
    };
    if c.external_id.is_empty() && c.provider_customer_id.is_empty() {
        v.push(
            "customer.external_id",
            "customer.external_id or customer.provider_customer_id is required",
        );
        return None;
    }
    let external_id = optional(v, &c.external_id, |s| {
        ExternalId::parse("customer.external_id", s)
    });
    let provider_id = optional(v, &c.provider_customer_id, |s| {
        CustomerId::parse("customer.provider_customer_id", s)
    });
    let email = optional(v, &c.email, |s| Email::parse("customer.email", s));
    let name = v.check("", parse_name("customer.name", &c.name));
    Some(Customer {
        external_id: external_id?,
        provider_id: provider_id?,
        email: email?,
        name: name?,
    })
}

pub fn customer_update(r: pb::ApplyCustomerRequest) -> Result<CustomerUpdate> {
    let mut v = Violations::default();
    let provider = v.required("provider", &r.provider, Provider::parse);
    let customer = customer(&mut v, r.customer.as_ref());
    let id = customer.as_ref().and_then(|c| c.provider_id.clone());
    if customer.is_some() && id.is_none() {
        v.push("customer.provider_customer_id", "is required");
    }
    let modified_at = required_timestamp(&mut v, "modified_at", r.modified_at.as_ref());
    v.finish(|| {
        let c = customer?;
        Some(CustomerUpdate {
            provider: provider?,
            id: id?,
            external_id: c.external_id,
            email: c.email,
            name: c.name,
            modified_at: modified_at?,
        })
    })
}

pub fn subscription_update(r: pb::ApplySubscriptionRequest) -> Result<SubscriptionUpdate> {
    let mut v = Violations::default();
    let provider = v.required("provider", &r.provider, Provider::parse);
    let id = v.check(
        "",
        SubscriptionId::parse("subscription_id", &r.subscription_id),
    );
    let customer = customer(&mut v, r.customer.as_ref());
    let product_id = v.check("", ProductId::parse("product_id", &r.product_id));
    let status = match pb::SubscriptionStatus::try_from(r.status) {
        Ok(pb::SubscriptionStatus::Trialing) => Some(TenantStatus::Trialing),
        Ok(pb::SubscriptionStatus::Active) => Some(TenantStatus::Active),
        Ok(pb::SubscriptionStatus::PastDue) => Some(TenantStatus::PastDue),
        Ok(pb::SubscriptionStatus::Canceled) => Some(TenantStatus::Canceled),
        Ok(pb::SubscriptionStatus::Revoked) => Some(TenantStatus::Revoked),
        Ok(pb::SubscriptionStatus::Paused) => Some(TenantStatus::Paused),
        Ok(pb::SubscriptionStatus::Unspecified) => {
            v.push("status", "is required");
            None
        }
        Err(_) => {
            v.push(
                "status",
                format!("{} is not a SubscriptionStatus", r.status),
            );
            None
        }
    };
    let start = opt_timestamp(
        &mut v,
        "current_period_start",
        r.current_period_start.as_ref(),
    );
    let end = opt_timestamp(&mut v, "current_period_end", r.current_period_end.as_ref());
    let period = match (start, end) {
        (Some(Some(start)), Some(Some(end))) if start < end => Some(Some(Period { start, end })),
        (Some(Some(_)), Some(Some(_))) => {
            v.push("current_period_end", "must be after current_period_start");
            None
        }
        (Some(None), Some(None)) => Some(None),
        (Some(_), Some(_)) => {
            v.push(
                "current_period_end",
                "current_period_start and current_period_end go together",
            );
            None
        }
        _ => None,
    };
    let trial_end = opt_timestamp(&mut v, "trial_end", r.trial_end.as_ref());
    let modified_at = required_timestamp(&mut v, "modified_at", r.modified_at.as_ref());
    let event_id = if r.event_id.is_empty() {
        Some(None)
    } else {
        v.check("", EventId::parse("event_id", &r.event_id))
            .map(Some)
    };
    v.finish(|| {
        Some(SubscriptionUpdate {
            provider: provider?,
            id: id?,
            customer: customer?,
            product_id: product_id?,
            status: status?,
            period: period?,
            cancel_at_period_end: r.cancel_at_period_end,
            trial_end: trial_end?,
            modified_at: modified_at?,
            event_id: event_id?,
        })
    })
}

pub fn apply_outcome_to_pb(o: ApplyOutcome) -> pb::ApplyOutcome {
    match o {
        ApplyOutcome::Applied => pb::ApplyOutcome::Applied,
        ApplyOutcome::Pending => pb::ApplyOutcome::Pending,
        ApplyOutcome::Unchanged => pb::ApplyOutcome::Unchanged,
        ApplyOutcome::Stale => pb::ApplyOutcome::Stale,
    }
}

impl From<&Subscription> for pb::Subscription {
    fn from(s: &Subscription) -> Self {
        pb::Subscription {
            provider: s.provider.as_str().to_owned(),
            id: s.id.as_str().to_owned(),
            tenant_id: s.tenant_id.map(|t| t.to_string()).unwrap_or_default(),
            customer: Some(pb::Customer {
                external_id: s
                    .customer
                    .external_id
                    .as_ref()
                    .map(|x| x.as_str().to_owned())
                    .unwrap_or_default(),
                provider_customer_id: s
                    .customer
                    .provider_id
                    .as_ref()
                    .map(|c| c.as_str().to_owned())
                    .unwrap_or_default(),
                email: s
                    .customer
                    .email
                    .as_ref()
                    .map(|e| e.as_str().to_owned())
                    .unwrap_or_default(),
                name: s.customer.name.clone(),
            }),
            product_id: s.product_id.as_str().to_owned(),
            plan_id: s.plan_id.map(|p| p.to_string()).unwrap_or_default(),
            status: subscription_status_to_pb(s.status) as i32,
            current_period_start: s.period.map(|p| timestamp(p.start)),
            current_period_end: s.period.map(|p| timestamp(p.end)),
            cancel_at_period_end: s.cancel_at_period_end,
            trial_end: s.trial_end.map(timestamp),
            modified_at: Some(timestamp(s.modified_at)),
            pending: s.pending(),
            create_time: Some(timestamp(s.created_at)),
            update_time: Some(timestamp(s.updated_at)),
        }
    }
}

impl From<&Invoice> for pb::Invoice {
    fn from(i: &Invoice) -> Self {
        pb::Invoice {
            id: i.id.to_string(),
            tenant_id: i.tenant_id.to_string(),
            period: i.month.name.clone(),
            currency: i.currency.code().to_owned(),
            lines: i
                .lines
                .iter()
                .map(|l| pb::InvoiceLine {
                    kind: match l.kind {
                        LineKind::Plan => pb::InvoiceLineKind::Plan,
                        LineKind::Overage => pb::InvoiceLineKind::Overage,
                    } as i32,
                    description: l.description.clone(),
                    plan_id: l.plan_id.map(|p| p.to_string()).unwrap_or_default(),
                    resource: l
                        .resource
                        .as_ref()
                        .map(|r| r.as_str().to_owned())
                        .unwrap_or_default(),
                    quantity: l.quantity,
                    unit_amount_micros: l.unit_amount_micros.unwrap_or_default(),
                    start_time: Some(timestamp(l.from)),
                    end_time: Some(timestamp(l.to)),
                    amount_minor: l.amount_minor,
                })
                .collect(),
            total_minor: i.total_minor,
            status: match i.status {
                InvoiceStatus::Draft => pb::InvoiceStatus::Draft,
                InvoiceStatus::Finalized => pb::InvoiceStatus::Finalized,
            } as i32,
            create_time: Some(timestamp(i.created_at)),
            update_time: Some(timestamp(i.updated_at)),
            finalize_time: i.finalized_at.map(timestamp),
        }
    }
}

pub(super) fn money(m: &std::collections::BTreeMap<String, i64>) -> Vec<pb::Money> {
    m.iter()
        .map(|(currency, amount)| pb::Money {
            currency: currency.clone(),
            amount_minor: *amount,
        })
        .collect()
}

pub(super) fn figures(f: &[crate::domain::revenue::TenantFigure]) -> Vec<pb::TenantFigure> {
    f.iter()
        .map(|f| pb::TenantFigure {
            tenant_id: f.tenant_id.to_string(),
            external_id: f.external_id.clone().unwrap_or_default(),
            value: f.value,
            currency: f.currency.clone().unwrap_or_default(),
        })
        .collect()
}

impl From<&crate::domain::revenue::RevenueSummary> for pb::GetRevenueSummaryResponse {
    fn from(r: &crate::domain::revenue::RevenueSummary) -> Self {
        pb::GetRevenueSummaryResponse {
            period: r.month.name.clone(),
            mrr: money(&r.mrr),
            tenants_by_status: r
                .tenants_by_status
                .iter()
                .map(|(s, n)| pb::TenantStatusCount {
                    status: tenant_status_to_pb(*s) as i32,
                    tenants: *n,
                })
                .collect(),
            trials_started: r.trials_started,
            trials_converted: r.trials_converted,
            total_calls: r.total_calls,
            overage_revenue: money(&r.overage_revenue),
            top_by_usage: figures(&r.top_by_usage),
            top_by_revenue: figures(&r.top_by_revenue),
        }
    }
}
