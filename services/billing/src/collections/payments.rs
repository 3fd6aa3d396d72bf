//! Payments: a ledger, recorded once and never edited.

use async_trait::async_trait;
use isp_events::options::InvoiceStatus;
use isp_platform::auth::{Principal, Role, Roles};
use isp_platform::collection::{Change, Collection, Field, Hooks, Kind};
use isp_platform::{ApiError, ApiResult, FieldError, ServiceContext};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{date, lock_subscriber, money, money_max, overflow_is_bad_input, FIN, PAYMENT_METHODS};
use crate::ledger;

/// Payments are a ledger: recorded once, never edited or deleted (a mistake is
/// corrected by a new entry; see docs/billing.md).
pub fn payments() -> Collection {
    Collection::new(
        "billing",
        "payments",
        "payments",
        "Payment",
        vec![
            Field::new(
                "paymentReference",
                "payment_reference",
                Kind::Text { max: 100 },
            )
            .required()
            .immutable(),
            Field::new("invoice", "invoice_id", Kind::Relation)
                .required()
                .immutable()
                .references("invoices"),
            Field::new("subscriber", "subscriber_id", Kind::Relation).system(),
            Field::new("amountPaid", "amount_paid", Kind::Money)
                .required()
                .immutable()
                .positive_money(),
            Field::new(
                "paymentMethod",
                "payment_method",
                Kind::Select(PAYMENT_METHODS),
            )
            .required()
            .immutable(),
            Field::new("paymentDate", "payment_date", Kind::Date)
                .required()
                .immutable(),
        ],
    )
    .access(FIN, FIN, Roles::NONE, Roles::NONE)
    .hooks(PaymentHooks)
}

struct PaymentHooks;

#[async_trait]
impl Hooks for PaymentHooks {
    async fn before_change(&self, tx: &mut PgConnection, c: &mut Change<'_>) -> ApiResult<()> {
        let mut errors = vec![];
        let amount = money(c.data.get("amountPaid"), "amountPaid")?;
        if c.data.contains_key("amountPaid") && amount <= Decimal::ZERO {
            errors.push(FieldError::new("amountPaid", "Must be more than 0 KES."));
        }
        if amount > money_max() {
            errors.push(FieldError::new(
                "amountPaid",
                format!("At most {} KES.", money_max()),
            ));
        }
        if let Some(d) = date(c.data.get("paymentDate"), "paymentDate")? {
            if d > c.ctx.today() {
                errors.push(FieldError::new(
                    "paymentDate",
                    "A payment cannot be dated in the future.",
                ));
            }
        }
        if !errors.is_empty() {
            return Err(ApiError::BadRequest(errors));
        }
        // Billing Manager records cash and bank transfers; M-Pesa receipts come
        // from the M-Pesa service (event or service token), or from an Admin.
        if c.str("paymentMethod") == Some("Mpesa")
            && c.principal.role() == Some(Role::BillingManager)
        {
            return Err(ApiError::forbidden_field(
                "paymentMethod",
                "M-Pesa payments are recorded by the M-Pesa service.",
            ));
        }
        let Some(invoice) = c.uuid("invoice") else {
            return Ok(()); // required check names it
        };
        crate::daily::wait_for_run(tx).await?;
        // Lock order: the subscriber, then its invoices (see ledger::settle).
        let subscriber: Option<Uuid> =
            sqlx::query_scalar("SELECT subscriber_id FROM invoices WHERE id = $1")
                .bind(invoice)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(subscriber) = subscriber else {
            return Err(ApiError::field("invoice", "Unknown invoice."));
        };
        lock_subscriber(tx, subscriber).await?;
        let balance: Decimal =
            sqlx::query_scalar("SELECT account_balance FROM subscribers WHERE id = $1")
                .bind(subscriber)
                .fetch_one(&mut *tx)
                .await?;
        if balance.checked_add(amount).is_none_or(|b| b > money_max()) {
            return Err(ApiError::field(
                "amountPaid",
                "This payment would take the account's credit beyond what can be recorded.",
            ));
        }
        let status: InvoiceStatus =
            sqlx::query_scalar("SELECT status FROM invoices WHERE id = $1 FOR UPDATE")
                .bind(invoice)
                .fetch_one(&mut *tx)
                .await?;
        if matches!(status, InvoiceStatus::Draft | InvoiceStatus::Cancelled) {
            return Err(ApiError::conflict_field(
                "invoice",
                format!("A {status} invoice cannot be paid."),
            ));
        }
        // The reference is unique per method: answer 409 on the field without
        // aborting the transaction on the unique index.
        if let (Some(r), Some(m)) = (c.str("paymentReference"), c.str("paymentMethod")) {
            let dup: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM payments WHERE payment_method = $1 AND payment_reference = $2)",
            )
            .bind(m)
            .bind(r)
            .fetch_one(&mut *tx)
            .await?;
            if dup {
                return Err(ApiError::conflict_field(
                    "paymentReference",
                    "This payment reference was already recorded.",
                ));
            }
        }
        c.data
            .insert("subscriber".into(), json!(subscriber.to_string()));
        Ok(())
    }

    async fn after_change(
        &self,
        tx: &mut PgConnection,
        ctx: &ServiceContext,
        _p: &Principal,
        doc: &Value,
        _previous: Option<&Value>,
    ) -> ApiResult<()> {
        ledger::apply_payment(tx, ctx, doc)
            .await
            .map_err(|e| overflow_is_bad_input("amountPaid", e))?;
        Ok(())
    }
}
