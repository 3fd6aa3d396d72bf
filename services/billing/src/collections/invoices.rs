//! Invoices: line items, status changes and what each does to the balance.

use async_trait::async_trait;
use isp_events::options::{InvoiceStatus, SubscriberStatus};
use isp_events::outbox::enqueue;
use isp_events::payloads::*;
use isp_platform::auth::Principal;
use isp_platform::collection::{Change, Collection, Field, Hooks, Kind, Operation};
use isp_platform::{ApiError, ApiResult, ServiceContext};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use isp_platform::collection::stored;

use super::{
    internal, lock_subscriber, money, overflow_is_bad_input, snapshot, FIN, INVOICE_STATUS,
};
use crate::ledger;

pub fn invoices() -> Collection {
    Collection::new(
        "billing",
        "invoices",
        "invoices",
        "Invoice",
        vec![
            Field::new("invoiceNumber", "invoice_number", Kind::TEXT)
                .required()
                .system(),
            Field::new("subscriber", "subscriber_id", Kind::Relation)
                .required()
                .immutable()
                .references("subscribers"),
            Field::new("amountDue", "amount_due", Kind::Money)
                .required()
                .system(),
            Field::new("amountPaid", "amount_paid", Kind::Money).system(),
            Field::new("dueDate", "due_date", Kind::Date).required(),
            Field::new("status", "status", Kind::Select(INVOICE_STATUS))
                .required()
                .default_value(json!("Unpaid")),
            Field::new("lineItems", "line_items", Kind::Json).required(),
            Field::new("periodStart", "period_start", Kind::Date).system(),
            Field::new("periodEnd", "period_end", Kind::Date).system(),
        ],
    )
    .access(FIN, FIN, FIN, FIN)
    .hooks(InvoiceHooks)
}

pub use isp_platform::line_items::{parse as parse_line_items, total, LineItem};

/// Whether an invoice in `status` counts against the subscriber's balance.
fn charged(status: InvoiceStatus) -> bool {
    matches!(
        status,
        InvoiceStatus::Unpaid | InvoiceStatus::Overdue | InvoiceStatus::Paid
    )
}

struct InvoiceHooks;

#[async_trait]
impl Hooks for InvoiceHooks {
    /// Payments and the daily run take the run lock, then the subscriber, then its
    /// invoices; an invoice edit takes them in that order too, before the generic
    /// update locks the invoice row.
    async fn before_lock(&self, tx: &mut PgConnection, _op: Operation, id: Uuid) -> ApiResult<()> {
        crate::daily::wait_for_run(tx).await?;
        let sub: Option<Uuid> =
            sqlx::query_scalar("SELECT subscriber_id FROM invoices WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(sub) = sub {
            lock_subscriber(tx, sub).await?;
        }
        Ok(())
    }

    async fn before_change(&self, tx: &mut PgConnection, c: &mut Change<'_>) -> ApiResult<()> {
        crate::daily::wait_for_run(tx).await?;
        if c.create {
            let status: InvoiceStatus = c.option("status")?.ok_or_else(|| {
                internal(anyhow::anyhow!("a new invoice without its default status"))
            })?;
            if !matches!(status, InvoiceStatus::Draft | InvoiceStatus::Unpaid) {
                return Err(ApiError::field(
                    "status",
                    "A new invoice is Draft or Unpaid.",
                ));
            }
            c.data.insert("status".into(), json!(status));
            let sub = c.required_uuid("subscriber")?;
            let exists: Option<String> =
                sqlx::query_scalar("SELECT status FROM subscribers WHERE id = $1 FOR UPDATE")
                    .bind(sub)
                    .fetch_optional(&mut *tx)
                    .await?;
            match exists.as_deref() {
                None => return Err(ApiError::field("subscriber", "Unknown subscriber.")),
                Some(s) if s == SubscriberStatus::Deactivated => {
                    return Err(ApiError::conflict_field(
                        "subscriber",
                        "This subscriber is deactivated.",
                    ))
                }
                _ => {}
            }
            let n: i64 = sqlx::query_scalar("SELECT nextval('invoice_number_seq')")
                .fetch_one(&mut *tx)
                .await?;
            c.data
                .insert("invoiceNumber".into(), json!(invoice_number(n)));
            c.data.insert("amountPaid".into(), json!("0.00"));
        } else {
            // A stored status that is not one of the spec's is a bug, not a default.
            let existing = c
                .existing
                .ok_or_else(|| internal(anyhow::anyhow!("an update without the stored invoice")))?;
            let old: InvoiceStatus = stored::option(existing, "status")?;
            match old {
                InvoiceStatus::Paid => {
                    return Err(ApiError::conflict("A paid invoice cannot be edited."))
                }
                InvoiceStatus::Cancelled => {
                    return Err(ApiError::conflict("A cancelled invoice cannot be edited."))
                }
                _ => {}
            }
            if c.changed("status") {
                use InvoiceStatus::*;
                // Validated against the options already.
                let new: InvoiceStatus = c
                    .option("status")?
                    .ok_or_else(|| internal(anyhow::anyhow!("a status change without a status")))?;
                let ok = matches!(
                    (old, new),
                    (Draft, Unpaid) | (Draft | Unpaid | Overdue, Cancelled)
                );
                if !ok {
                    let why = match new {
                        Paid => "An invoice becomes Paid when payments cover it.".to_string(),
                        Overdue => "The daily run marks invoices Overdue.".to_string(),
                        _ => format!("An invoice cannot go from {old} to {new}."),
                    };
                    return Err(ApiError::conflict_field("status", why));
                }
                if new == Cancelled {
                    let id = stored::uuid(existing, "id")?;
                    let named: bool = sqlx::query_scalar(
                        "SELECT EXISTS (SELECT 1 FROM payments WHERE invoice_id = $1)",
                    )
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
                    if named {
                        return Err(ApiError::conflict_field(
                            "status",
                            "An invoice with payments recorded against it cannot be cancelled.",
                        ));
                    }
                    // What credit or another payment's surplus settled on it goes
                    // back to the balance as credit (the charge is withdrawn).
                    c.data.insert("amountPaid".into(), json!("0.00"));
                }
            }
        }
        if let Some(items) = c.data.get("lineItems").cloned() {
            let items = parse_line_items(&items, "lineItems", false)?;
            let amount = total(&items);
            if amount < money(c.value("amountPaid"), "amountPaid")? {
                return Err(ApiError::conflict_field(
                    "lineItems",
                    "The new total is less than what was already paid.",
                ));
            }
            c.data.insert(
                "lineItems".into(),
                Value::Array(items.iter().map(LineItem::to_json).collect()),
            );
            c.data.insert(
                "amountDue".into(),
                json!(isp_platform::money::format(amount)),
            );
        }
        let status: Option<InvoiceStatus> = c.option("status")?;
        if (c.data.contains_key("amountDue") || c.changed("status"))
            && matches!(status, Some(InvoiceStatus::Unpaid | InvoiceStatus::Overdue))
        {
            let due = money(c.value("amountDue"), "amountDue")?;
            let mut paid = money(c.value("amountPaid"), "amountPaid")?;
            // Newly charged, or charged more: credit in the balance settles it, as
            // the daily run does with the invoices it creates.
            let charged_before = match c.existing {
                Some(e) if charged(stored::option(e, "status")?) => stored::money(e, "amountDue")?,
                _ => Decimal::ZERO,
            };
            if due > charged_before && paid < due {
                let balance: Decimal =
                    sqlx::query_scalar("SELECT account_balance FROM subscribers WHERE id = $1")
                        .bind(c.required_uuid("subscriber")?)
                        .fetch_one(&mut *tx)
                        .await?;
                paid += balance.max(Decimal::ZERO).min(due - paid);
                c.data.insert(
                    "amountPaid".into(),
                    json!(isp_platform::money::format(paid)),
                );
            }
            // Covered (an edit down to what was paid, or credit): Paid.
            if paid >= due {
                c.data.insert("status".into(), json!(InvoiceStatus::Paid));
            }
        }
        Ok(())
    }

    async fn after_change(
        &self,
        tx: &mut PgConnection,
        ctx: &ServiceContext,
        _p: &Principal,
        doc: &Value,
        previous: Option<&Value>,
    ) -> ApiResult<()> {
        // What the invoice counts against the balance, before and after.
        let counted = |d: &Value| -> ApiResult<Decimal> {
            Ok(if charged(stored::option(d, "status")?) {
                stored::money(d, "amountDue")?
            } else {
                Decimal::ZERO
            })
        };
        let before = previous.map(counted).transpose()?.unwrap_or_default();
        let after = counted(doc)?;
        let sub = stored::uuid(doc, "subscriber")?;
        if before != after {
            crate::ledger::charge(tx, sub, after - before)
                .await
                .map_err(|e| overflow_is_bad_input("lineItems", e))?;
        }
        let snap: InvoiceSnapshot = snapshot(doc)?;
        if previous.is_none() {
            enqueue(tx, ctx.name, &InvoiceCreated(snap))
                .await
                .map_err(internal)?;
        } else {
            enqueue(tx, ctx.name, &InvoiceUpdated(snap))
                .await
                .map_err(internal)?;
        }
        // Paid by an edit or by credit: the next period is the one after it.
        // Cancelled: that period is withdrawn, not to be invoiced again (its
        // start stays taken), so billing goes on after it.
        let was: Option<InvoiceStatus> =
            previous.map(|p| stored::option(p, "status")).transpose()?;
        let now: InvoiceStatus = stored::option(doc, "status")?;
        if was != Some(now) && matches!(now, InvoiceStatus::Paid | InvoiceStatus::Cancelled) {
            let mut moved = false;
            if let Some(end) = stored::date(doc.get("periodEnd"), "periodEnd")? {
                moved = sqlx::query(
                    "UPDATE subscribers SET next_due_date = $2, updated_at = now()
                     WHERE id = $1 AND next_due_date < $2",
                )
                .bind(sub)
                .bind(end)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    > 0;
            }
            let reactivated = ledger::maybe_reactivate(tx, ctx, sub, ctx.today())
                .await
                .map_err(internal)?;
            if moved && !reactivated {
                let snap = ledger::subscriber_snapshot(tx, sub)
                    .await
                    .map_err(internal)?;
                enqueue(tx, ctx.name, &SubscriberUpdated(snap))
                    .await
                    .map_err(internal)?;
            }
        }
        Ok(())
    }

    async fn before_delete(
        &self,
        _tx: &mut PgConnection,
        _p: &Principal,
        doc: &Value,
    ) -> ApiResult<()> {
        if doc["status"] != InvoiceStatus::Draft {
            return Err(ApiError::conflict(
                "Only Draft invoices can be deleted; cancel it instead.",
            ));
        }
        Ok(())
    }
}

pub fn invoice_number(n: i64) -> String {
    format!("INV-{n:06}")
}
