//! Credit balances: grants, debits, balances and the ledger, for tenants
//! that exist. Idempotency and the never-below-zero rule live in the store's
//! transaction; this layer checks what the request alone cannot.
use std::sync::Arc;

use crate::{
    catalog::{Catalog, TenantRef},
    domain::{
        Result,
        credits::{Applied, Balance, CreditChange, CreditType, LedgerEntry},
        ids::TenantId,
        now,
        page::{Page, PageRequest},
    },
    store::CreditStore,
};

#[derive(Clone)]
pub struct Credits {
    catalog: Catalog,
    store: Arc<dyn CreditStore>,
}

impl Credits {
    pub fn new(catalog: Catalog, store: Arc<dyn CreditStore>) -> Self {
        Self { catalog, store }
    }

    pub async fn apply(&self, change: CreditChange) -> Result<Applied> {
        self.tenant_exists(change.tenant_id).await?;
        self.store.apply_credit(&change, now()).await
    }

    pub async fn balances(&self, tenant_id: TenantId) -> Result<Vec<Balance>> {
        self.tenant_exists(tenant_id).await?;
        self.store.balances(tenant_id, now()).await
    }

    pub async fn ledger(
        &self,
        tenant_id: TenantId,
        credit_type: Option<CreditType>,
        page: PageRequest,
    ) -> Result<Page<LedgerEntry>> {
        self.tenant_exists(tenant_id).await?;
        let rows = self
            .store
            .list_ledger(tenant_id, credit_type.as_ref(), &page)
            .await?;
        Ok(Page::from_rows(&page, rows, |e| e.id.to_string()))
    }

    async fn tenant_exists(&self, tenant_id: TenantId) -> Result<()> {
        self.catalog
            .get_tenant(&TenantRef::Id(tenant_id))
            .await
            .map(drop)
    }
}
