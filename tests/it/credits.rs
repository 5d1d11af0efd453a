//! Credit balances through the gRPC API, on both storage backends: grants
//! and debits exact under concurrency, idempotent per key, never below zero,
//! expiring grants, and bad input refused without a write.
use tollgate::grpc::pb::{
    CreditEntry, CreditEntryKind, DebitCreditsRequest, GetBalancesRequest, GrantCreditsRequest,
    ListLedgerRequest, VerifyCode, VerifyRequest, VerifyResponse, billing_client::BillingClient,
    verify_client::VerifyClient,
};
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt;

use crate::{
    helpers::{InProcess, TestDb},
    verify::setup_on,
};

async fn start(db: TestDb) -> (InProcess, String) {
    let (server, _, tenant_id) = start_with_key(db).await;
    (server, tenant_id)
}

/// A server, and a tenant with a key: (server, secret, tenant id).
async fn start_with_key(db: TestDb) -> (InProcess, String, String) {
    let server = InProcess::start(db).await;
    let (secret, _, tenant_id) =
        setup_on(server.channel(), &server.admin_token, 600, 100, 1_000, 1).await;
    (server, secret, tenant_id)
}

struct Ledger {
    client: BillingClient<Channel>,
    token: String,
    tenant_id: String,
}

impl Ledger {
    fn of(server: &InProcess, tenant_id: &str) -> Self {
        Self {
            client: server.billing(),
            token: server.admin_token.clone(),
            tenant_id: tenant_id.to_owned(),
        }
    }

    async fn grant(&self, amount: i64, key: &str) -> Result<CreditEntry, Status> {
        self.grant_request(GrantCreditsRequest {
            tenant_id: self.tenant_id.clone(),
            credit_type: "gpt-4".into(),
            amount,
            idempotency_key: key.into(),
            expire_time: None,
        })
        .await
    }

    async fn grant_request(&self, r: GrantCreditsRequest) -> Result<CreditEntry, Status> {
        self.client
            .clone()
            .grant_credits(crate::helpers::with_token(r, &self.token))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn debit(&self, amount: i64, key: &str) -> Result<CreditEntry, Status> {
        self.debit_request(DebitCreditsRequest {
            tenant_id: self.tenant_id.clone(),
            credit_type: "gpt-4".into(),
            amount,
            idempotency_key: key.into(),
        })
        .await
    }

    async fn debit_request(&self, r: DebitCreditsRequest) -> Result<CreditEntry, Status> {
        self.client
            .clone()
            .debit_credits(crate::helpers::with_token(r, &self.token))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn balance(&self) -> i64 {
        self.client
            .clone()
            .get_balances(crate::helpers::with_token(
                GetBalancesRequest {
                    tenant_id: self.tenant_id.clone(),
                },
                &self.token,
            ))
            .await
            .unwrap()
            .into_inner()
            .balances
            .iter()
            .find(|b| b.credit_type == "gpt-4")
            .map_or(0, |b| b.balance)
    }

    /// Every entry, following the pages.
    async fn entries(&self) -> Vec<CreditEntry> {
        let mut all = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .client
                .clone()
                .list_ledger(crate::helpers::with_token(
                    ListLedgerRequest {
                        tenant_id: self.tenant_id.clone(),
                        credit_type: String::new(),
                        page_size: 7,
                        page_token: token,
                    },
                    &self.token,
                ))
                .await
                .unwrap()
                .into_inner();
            all.extend(page.entries);
            if page.next_page_token.is_empty() {
                return all;
            }
            token = page.next_page_token;
        }
    }
}

fn debits(entries: &[CreditEntry]) -> usize {
    entries
        .iter()
        .filter(|e| e.kind == CreditEntryKind::Debit as i32)
        .count()
}

fn assert_insufficient(status: &Status) {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let info = status
        .get_details_error_info()
        .expect("an ErrorInfo detail");
    assert_eq!(info.reason, "INSUFFICIENT_CREDITS");
}

crate::conformance!(
    grants_debits_and_the_ledger,
    concurrent_debits_never_overdraw,
    a_retried_debit_applies_once,
    a_refused_debit_takes_nothing,
    expired_grants_stop_counting,
    bad_input_writes_nothing,
    verify_checks_credits_without_debiting,
);

async fn grants_debits_and_the_ledger(db: TestDb) {
    let (server, tenant) = start(db).await;
    let l = Ledger::of(&server, &tenant);
    let g = l.grant(100, "g1").await.unwrap();
    assert_eq!(
        (g.kind, g.amount, g.balance_after, g.replayed),
        (CreditEntryKind::Grant as i32, 100, 100, false)
    );
    assert!(g.id.starts_with("led_"), "{}", g.id);
    let d = l.debit(30, "d1").await.unwrap();
    assert_eq!((d.amount, d.balance_after), (30, 70));
    assert_eq!(l.balance().await, 70);

    // The same grant again is its first answer, applied once.
    let again = l.grant(100, "g1").await.unwrap();
    assert_eq!((again.id.as_str(), again.replayed), (g.id.as_str(), true));
    assert_eq!(
        again.balance_after, 100,
        "the first answer, not the balance now"
    );
    assert_eq!(l.balance().await, 70);
    // The same key for anything else is a conflict.
    for status in [
        l.grant(99, "g1").await.unwrap_err(),
        l.debit(100, "g1").await.unwrap_err(),
        l.debit(31, "d1").await.unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
        assert!(status.message().contains("idempotency_key"), "{status:?}");
    }
    assert_eq!(l.balance().await, 70);

    let entries = l.entries().await;
    let seen: Vec<(i32, i64, i64, &str)> = entries
        .iter()
        .map(|e| {
            (
                e.kind,
                e.amount,
                e.balance_after,
                e.idempotency_key.as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (CreditEntryKind::Grant as i32, 100, 100, "g1"),
            (CreditEntryKind::Debit as i32, 30, 70, "d1"),
        ]
    );
    assert!(entries.iter().all(|e| e.create_time.is_some()));
}

async fn concurrent_debits_never_overdraw(db: TestDb) {
    let (server, tenant) = start(db).await;
    let l = std::sync::Arc::new(Ledger::of(&server, &tenant));
    l.grant(50, "seed").await.unwrap();
    let calls: Vec<_> = (0..100)
        .map(|i| {
            let l = l.clone();
            tokio::spawn(async move { l.debit(1, &format!("debit-{i}")).await })
        })
        .collect();
    let mut ok = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(status) => assert_insufficient(&status),
        }
    }
    assert_eq!(ok, 50, "exactly the balance is debited");
    assert_eq!(l.balance().await, 0);
    let entries = l.entries().await;
    assert_eq!(debits(&entries), 50, "one ledger debit per success");
    // Each debit saw the balance the previous one left.
    let mut after: Vec<i64> = entries
        .iter()
        .filter(|e| e.kind == CreditEntryKind::Debit as i32)
        .map(|e| e.balance_after)
        .collect();
    after.sort_unstable();
    assert_eq!(after, (0..50).collect::<Vec<i64>>());
}

async fn a_retried_debit_applies_once(db: TestDb) {
    let (server, tenant) = start(db).await;
    let l = std::sync::Arc::new(Ledger::of(&server, &tenant));
    l.grant(10, "seed").await.unwrap();
    // A client retrying one debit, its attempts overlapping.
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let l = l.clone();
            tokio::spawn(async move { l.debit(3, "order-42").await.unwrap() })
        })
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }
    assert!(answers.iter().all(|a| a.id == answers[0].id), "one entry");
    assert_eq!(answers.iter().filter(|a| !a.replayed).count(), 1);
    assert!(answers.iter().all(|a| a.balance_after == 7));
    assert_eq!(l.balance().await, 7);
    assert_eq!(debits(&l.entries().await), 1);
}

async fn a_refused_debit_takes_nothing(db: TestDb) {
    let (server, tenant) = start(db).await;
    let l = Ledger::of(&server, &tenant);
    l.grant(5, "seed").await.unwrap();
    let status = l.debit(6, "big").await.unwrap_err();
    assert_insufficient(&status);
    assert!(status.message().contains("gpt-4"), "{status:?}");
    assert_eq!(l.balance().await, 5);
    assert_eq!(l.entries().await.len(), 1, "a refusal is not recorded");
    // So the same key may succeed once the balance allows it.
    l.grant(1, "top-up").await.unwrap();
    let d = l.debit(6, "big").await.unwrap();
    assert_eq!((d.balance_after, d.replayed), (0, false));
    // Other credit types are their own balances.
    let other = l
        .debit_request(DebitCreditsRequest {
            tenant_id: tenant.clone(),
            credit_type: "claude".into(),
            amount: 1,
            idempotency_key: "other".into(),
        })
        .await
        .unwrap_err();
    assert_insufficient(&other);
}

async fn expired_grants_stop_counting(db: TestDb) {
    let (server, tenant) = start(db).await;
    let l = Ledger::of(&server, &tenant);
    let soon = std::time::SystemTime::now() + std::time::Duration::from_millis(3_000);
    let promo = GrantCreditsRequest {
        tenant_id: tenant.clone(),
        credit_type: "gpt-4".into(),
        amount: 10,
        idempotency_key: "promo".into(),
        expire_time: Some(soon.into()),
    };
    let expiring = l.grant_request(promo.clone()).await.unwrap();
    assert!(expiring.expire_time.is_some());
    l.grant(5, "paid").await.unwrap();
    // Debits spend the expiring grant first.
    l.debit(4, "use").await.unwrap();
    assert_eq!(l.balance().await, 11);
    // Past the promo's expiry (however long the calls above took).
    let left = soon
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(left + std::time::Duration::from_millis(200)).await;
    assert_eq!(
        l.balance().await,
        5,
        "the promo's unspent 6 lapsed; paid 5 remain"
    );
    assert_insufficient(&l.debit(6, "too-much").await.unwrap_err());
    let d = l.debit(5, "rest").await.unwrap();
    assert_eq!(d.balance_after, 0);
    // The promo's grant retried after its expiry: its first answer, not a
    // complaint that the expiry has passed.
    let retried = l.grant_request(promo).await.unwrap();
    assert_eq!((retried.id, retried.replayed), (expiring.id, true));
}

async fn bad_input_writes_nothing(db: TestDb) {
    let (server, tenant) = start(db).await;
    let l = Ledger::of(&server, &tenant);
    let grant = || GrantCreditsRequest {
        tenant_id: tenant.clone(),
        credit_type: "gpt-4".into(),
        amount: 10,
        idempotency_key: "k".into(),
        expire_time: None,
    };
    let past = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    let cases: Vec<(GrantCreditsRequest, Code, &str)> = vec![
        (
            GrantCreditsRequest {
                amount: 0,
                ..grant()
            },
            Code::InvalidArgument,
            "amount",
        ),
        (
            GrantCreditsRequest {
                amount: -5,
                ..grant()
            },
            Code::InvalidArgument,
            "amount",
        ),
        (
            GrantCreditsRequest {
                idempotency_key: String::new(),
                ..grant()
            },
            Code::InvalidArgument,
            "idempotency_key",
        ),
        (
            GrantCreditsRequest {
                credit_type: "GPT 4".into(),
                ..grant()
            },
            Code::InvalidArgument,
            "credit_type",
        ),
        (
            GrantCreditsRequest {
                tenant_id: "nope".into(),
                ..grant()
            },
            Code::InvalidArgument,
            "tenant_id",
        ),
        (
            GrantCreditsRequest {
                tenant_id: String::new(),
                ..grant()
            },
            Code::InvalidArgument,
            "tenant_id",
        ),
        (
            GrantCreditsRequest {
                expire_time: Some(past.into()),
                ..grant()
            },
            Code::InvalidArgument,
            "expire_time",
        ),
        (
            GrantCreditsRequest {
                tenant_id: format!("ten_{}", uuid::Uuid::now_v7().simple()),
                ..grant()
            },
            Code::NotFound,
            "tenant",
        ),
    ];
    for (request, code, field) in cases {
        let status = l.grant_request(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(field), "{status:?}");
    }
    let status = l.debit(0, "d").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("amount"), "{status:?}");
    let status = l.debit(1, "").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("idempotency_key"), "{status:?}");
    let unknown = format!("ten_{}", uuid::Uuid::now_v7().simple());
    let status = l
        .client
        .clone()
        .get_balances(crate::helpers::with_token(
            GetBalancesRequest { tenant_id: unknown },
            &l.token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    for (tenant_id, credit_type, field) in [("ten_x", "", "tenant_id"), ("", "", "tenant_id")]
        .into_iter()
        .chain([(tenant.as_str(), "Not A Type", "credit_type")])
    {
        let status = l
            .client
            .clone()
            .list_ledger(crate::helpers::with_token(
                ListLedgerRequest {
                    tenant_id: tenant_id.into(),
                    credit_type: credit_type.into(),
                    ..Default::default()
                },
                &l.token,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(field), "{status:?}");
    }
    assert!(l.entries().await.is_empty(), "nothing was written");
    assert_eq!(l.balance().await, 0);
    // Then the same key works: nothing of the refused calls was kept.
    assert_eq!(l.grant(10, "k").await.unwrap().balance_after, 10);
}

async fn verify_checks_credits_without_debiting(db: TestDb) {
    let (server, secret, tenant) = start_with_key(db).await;
    let l = Ledger::of(&server, &tenant);
    let verify = |credit_type: &str, credit_units: Option<i64>| {
        let request = server.verify(VerifyRequest {
            key: secret.clone(),
            resource: "chat_requests".into(),
            credit_type: credit_type.into(),
            credit_units,
            ..Default::default()
        });
        let channel = server.channel();
        async move {
            VerifyClient::new(channel)
                .verify(request)
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let credits = |r: &VerifyResponse| {
        let c = r.credits.as_ref().expect("the credit status");
        (c.credit_type.clone(), c.balance, c.required)
    };

    let r = verify("gpt-4", Some(5)).await.unwrap();
    assert_eq!(r.code, VerifyCode::InsufficientCredits as i32);
    assert!(!r.valid);
    assert_eq!(r.http_status, 402);
    assert_eq!(credits(&r), ("gpt-4".into(), 0, 5));

    l.grant(10, "seed").await.unwrap();
    let r = verify("gpt-4", Some(5)).await.unwrap();
    assert_eq!(r.code, VerifyCode::Valid as i32);
    assert_eq!(credits(&r), ("gpt-4".into(), 10, 5));
    // The refused call consumed no quota unit: this is the first one used.
    assert_eq!(r.quota.as_ref().unwrap().used, 1);
    assert_eq!(l.balance().await, 10, "Verify never debits");
    let r = verify("gpt-4", None).await.unwrap();
    assert_eq!(
        credits(&r),
        ("gpt-4".into(), 10, 1),
        "one credit when unset"
    );
    let r = verify("gpt-4", Some(11)).await.unwrap();
    assert_eq!(r.code, VerifyCode::InsufficientCredits as i32);
    assert_eq!(r.quota, None, "refused before the quota");
    let r = verify("", None).await.unwrap();
    assert_eq!((r.code, r.credits), (VerifyCode::Valid as i32, None));

    for (credit_type, units, field) in [
        ("", Some(3), "credit_units"),
        ("gpt-4", Some(0), "credit_units"),
        ("gpt-4", Some(-1), "credit_units"),
        ("GPT 4", None, "credit_type"),
    ] {
        let status = verify(credit_type, units).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(field), "{status:?}");
    }
}
