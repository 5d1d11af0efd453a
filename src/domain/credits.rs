//! Credit balances: prepaid units per tenant and credit type (for example
//! `gpt-4` tokens), granted and debited through a ledger in which every
//! entry carries the caller's idempotency key.
use super::{
    Error, FieldViolation, Timestamp,
    ids::{LedgerEntryId, TenantId},
    text::bounded,
};

/// A kind of credit, such as `gpt-4`: the same rule as a resource's name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CreditType(String);

impl CreditType {
    pub fn parse(field: &str, s: &str) -> Result<Self, FieldViolation> {
        super::plan::Resource::parse(field, s).map(|r| Self(r.as_str().to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The caller's name for one grant or debit, unique per tenant: the same key
/// sent again returns the first result instead of applying twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(field: &str, s: &str) -> Result<Self, FieldViolation> {
        if s.is_empty() {
            return Err(FieldViolation::new(field, "is required"));
        }
        bounded(field, s, 255, true).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A number of credits: positive.
pub fn parse_amount(field: &str, amount: i64) -> Result<i64, FieldViolation> {
    if amount > 0 {
        Ok(amount)
    } else {
        Err(FieldViolation::new(field, "must be positive"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Grant,
    Debit,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grant => "grant",
            Self::Debit => "debit",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        [Self::Grant, Self::Debit]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// A grant or debit to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditChange {
    pub tenant_id: TenantId,
    pub credit_type: CreditType,
    pub kind: EntryKind,
    pub amount: i64,
    pub idempotency_key: IdempotencyKey,
    /// Grants only: when its unspent part stops counting.
    pub expires_at: Option<Timestamp>,
}

impl CreditChange {
    /// What a change must satisfy to be applied now, at `at`: a grant must
    /// expire after it is made. Checked only once the change is known to be
    /// new, so a retry after the expiry still gets its first answer.
    pub fn check_new(&self, at: Timestamp) -> Result<(), super::Error> {
        if self.expires_at.is_some_and(|e| e <= at) {
            return Err(super::Error::invalid(
                "expire_time",
                "must be in the future",
            ));
        }
        Ok(())
    }
}

/// One applied grant or debit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub id: LedgerEntryId,
    pub tenant_id: TenantId,
    pub credit_type: CreditType,
    pub kind: EntryKind,
    pub amount: i64,
    /// The balance of this credit type right after the entry.
    pub balance_after: i64,
    pub idempotency_key: IdempotencyKey,
    pub expires_at: Option<Timestamp>,
    pub created_at: Timestamp,
}

impl LedgerEntry {
    /// What a change sent again under this entry's key means: the same
    /// change is a replay of this entry; anything else is a conflict.
    pub fn replay_of(&self, change: &CreditChange) -> Result<(), Error> {
        let same = self.kind == change.kind
            && self.credit_type == change.credit_type
            && self.amount == change.amount
            && self.expires_at == change.expires_at;
        if same {
            Ok(())
        } else {
            Err(Error::AlreadyExists(format!(
                "idempotency_key {:?} was used for a {} of {} {} credits",
                self.idempotency_key.as_str(),
                self.kind.as_str(),
                self.amount,
                self.credit_type.as_str(),
            )))
        }
    }
}

/// The outcome of a grant or debit: the entry, and whether this call applied
/// it (false: an earlier call with the same key did).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub entry: LedgerEntry,
    pub replayed: bool,
}

/// A tenant's balance of one credit type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balance {
    pub credit_type: CreditType,
    pub balance: i64,
    /// When the soonest-expiring unspent grant expires, if any does.
    pub next_expiry: Option<Timestamp>,
}

/// An unspent grant, as a debit sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unspent {
    pub remaining: i64,
    pub expires_at: Option<Timestamp>,
}

/// How a debit of `amount` takes from `grants` (unexpired, each with
/// something left): the soonest-expiring first, then the oldest, so credits
/// that would lapse are used before those that would not. Returns how much
/// to take from each grant, by index, or `None` when they hold too little.
pub fn allocate(grants: &[Unspent], amount: i64) -> Option<Vec<(usize, i64)>> {
    let mut order: Vec<usize> = (0..grants.len()).collect();
    // Stable: equal expiries keep the caller's (creation) order.
    order.sort_by_key(|&i| (grants[i].expires_at.is_none(), grants[i].expires_at));
    let mut left = amount;
    let mut takes = Vec::new();
    for i in order {
        if left == 0 {
            break;
        }
        let take = grants[i].remaining.min(left);
        if take > 0 {
            takes.push((i, take));
            left -= take;
        }
    }
    (left == 0).then_some(takes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Option<Timestamp> {
        Some(Timestamp::from_unix_timestamp(seconds).unwrap())
    }

    #[test]
    fn soonest_expiring_grants_go_first() {
        let grants = [
            Unspent {
                remaining: 5,
                expires_at: None,
            },
            Unspent {
                remaining: 3,
                expires_at: at(200),
            },
            Unspent {
                remaining: 4,
                expires_at: at(100),
            },
        ];
        assert_eq!(allocate(&grants, 6), Some(vec![(2, 4), (1, 2)]));
        assert_eq!(allocate(&grants, 12), Some(vec![(2, 4), (1, 3), (0, 5)]));
        assert_eq!(allocate(&grants, 13), None);
    }
}
