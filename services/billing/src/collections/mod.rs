//! The collections, their field-level access and the hooks that keep the ledger
//! consistent inside each write's transaction.
//!
//! Access (docs/contract.md#roles): Admin does everything. Billing Manager has CRUD on
//! invoices, payments (append-only, see docs/billing.md) and expenses, and edits
//! only the financial fields of subscribers. Sales Agent, Support Agent and Network
//! Engineer read basic subscriber info (never `accountBalance` or other financial
//! fields) and nothing else here; Technician nothing at all. Network data
//! (`connectionType`, `assignedIp`) is for Admin, Network Engineer and Support
//! Agent only.

use chrono::NaiveDate;
use isp_platform::auth::{Role, Roles};
use isp_platform::{ApiError, ApiResult};
use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

pub const ADMIN: Roles = Roles::of(&[Role::Admin]);
/// Admin and Billing Manager: finance.
pub const FIN: Roles = Roles::of(&[Role::Admin, Role::BillingManager]);
/// Who may read basic subscriber info.
pub const SUB_READ: Roles = Roles::of(&[
    Role::Admin,
    Role::BillingManager,
    Role::SalesAgent,
    Role::SupportAgent,
    Role::NetworkEngineer,
]);

/// Who may read a subscriber's network data (`connectionType`, `assignedIp`):
/// Sales Agent and Billing Manager have no access to network data (docs/contract.md#roles).
pub const NET_READ: Roles = Roles::of(&[Role::Admin, Role::NetworkEngineer, Role::SupportAgent]);

use isp_events::options::{
    BillingCycle, ConnectionType, InvoiceStatus, PaymentMethod, SubscriberStatus, SuspensionReason,
};
pub const SUBSCRIBER_STATUS: &[&str] = SubscriberStatus::ALL;
pub const BILLING_CYCLES: &[&str] = BillingCycle::ALL;
pub const SUSPENSION_REASONS: &[&str] = SuspensionReason::ALL;
pub const CONNECTION_TYPES: &[&str] = ConnectionType::ALL;
pub const INVOICE_STATUS: &[&str] = InvoiceStatus::ALL;
pub const PAYMENT_METHODS: &[&str] = PaymentMethod::ALL;
pub const EXPENSE_CATEGORIES: &[&str] = &[
    "Bandwidth",
    "Salaries",
    "Rent",
    "Utilities",
    "Equipment",
    "Transport",
    "Marketing",
    "Licenses & Fees",
    "Commissions",
    "Other",
];

pub(crate) fn internal(e: anyhow::Error) -> ApiError {
    ApiError::Internal(e)
}

pub(crate) use isp_platform::money::max as money_max;

/// A numeric overflow (SQLSTATE 22003) inside `e` is the client's amount being too
/// large for what it adds up to: 400 naming `field`. Anything else is internal.
pub(crate) fn overflow_is_bad_input(field: &str, e: anyhow::Error) -> ApiError {
    if let Some(sqlx::Error::Database(db)) = e.downcast_ref::<sqlx::Error>() {
        if db.code().as_deref() == Some("22003") {
            return ApiError::field(field, "The amount is too large for this account.");
        }
    }
    ApiError::Internal(e)
}

pub(crate) fn snapshot<T: serde::de::DeserializeOwned>(doc: &Value) -> ApiResult<T> {
    serde_json::from_value(doc.clone())
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("snapshot: {e}")))
}

/// Money the write may leave out (then zero); present and unreadable is an error.
fn money(v: Option<&Value>, field: &str) -> ApiResult<Decimal> {
    isp_platform::collection::stored::money_or_zero(v, field)
}

fn date(v: Option<&Value>, field: &str) -> ApiResult<Option<NaiveDate>> {
    isp_platform::collection::stored::date(v, field)
}

/// Takes the subscriber's row lock. Every write that touches a subscriber's
/// invoices and balance takes it before any invoice lock, so they queue on the
/// subscriber instead of deadlocking on each other's invoices.
pub(crate) async fn lock_subscriber(tx: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1 FROM subscribers WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

mod daily_runs;
mod expenses;
mod invoices;
mod payments;
mod subscribers;

pub use daily_runs::*;
pub use expenses::*;
pub use invoices::*;
pub use payments::*;
pub use subscribers::*;
