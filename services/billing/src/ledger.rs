//! The money rules shared by the API and the consumers (docs/billing.md):
//! applying a payment to its invoice and the subscriber's balance, moving
//! `nextDueDate`, reactivating a paid-up subscriber, and the subscriber events.
//!
//! Sign convention: `accountBalance` = payments received - invoices charged
//! (Unpaid, Overdue and Paid ones). Negative: the subscriber owes that much;
//! positive: credit, applied to the next invoices the daily run creates.

use chrono::{NaiveDate, Utc};
use isp_events::outbox::enqueue;
use isp_events::payloads::*;
use isp_platform::ServiceContext;
use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

pub async fn subscriber_snapshot(
    tx: &mut PgConnection,
    id: Uuid,
) -> anyhow::Result<SubscriberSnapshot> {
    let v: Value =
        sqlx::query_scalar("SELECT subscriber_snapshot(s) FROM subscribers s WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
    Ok(serde_json::from_value(v)?)
}

/// `subscriber.updated`, plus the status event when the status changed.
pub async fn publish_subscriber_change(
    tx: &mut PgConnection,
    ctx: &ServiceContext,
    id: Uuid,
    old_status: &str,
    new_status: &str,
    reason: Option<String>,
) -> anyhow::Result<()> {
    let snap = subscriber_snapshot(tx, id).await?;
    if old_status != new_status {
        let change = SubscriberStatusChange {
            subscriber_id: id,
            account_number: snap.account_number.clone(),
            reason,
            at: Utc::now(),
        };
        match (old_status, new_status) {
            ("Pending Installation", "Active") => {
                enqueue(tx, ctx.name, &SubscriberActivated(change)).await?
            }
            (_, "Active") => enqueue(tx, ctx.name, &SubscriberReactivated(change)).await?,
            (_, "Suspended") => enqueue(tx, ctx.name, &SubscriberSuspended(change)).await?,
            (_, "Deactivated") => enqueue(tx, ctx.name, &SubscriberDeactivated(change)).await?,
            _ => Default::default(),
        };
    }
    enqueue(tx, ctx.name, &SubscriberUpdated(snap)).await?;
    Ok(())
}

/// A Suspended subscriber with nothing overdue left becomes Active again. The next
/// period starts no earlier than `today`: the days spent suspended are not billed.
pub async fn maybe_reactivate(
    tx: &mut PgConnection,
    ctx: &ServiceContext,
    subscriber: Uuid,
    today: NaiveDate,
) -> anyhow::Result<bool> {
    let done = sqlx::query(
        "UPDATE subscribers s SET status = 'Active', updated_at = now(),
                next_due_date = GREATEST(s.next_due_date, $2),
                billing_anchor_day = CASE WHEN s.next_due_date < $2 THEN extract(day FROM $2::date)::int
                                          ELSE s.billing_anchor_day END
         WHERE s.id = $1 AND s.status = 'Suspended'
           AND NOT EXISTS (SELECT 1 FROM invoices i WHERE i.subscriber_id = s.id
                           AND (i.status = 'Overdue' OR (i.status = 'Unpaid' AND i.due_date < $2)))",
    )
    .bind(subscriber)
    .bind(today)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        > 0;
    if done {
        publish_subscriber_change(
            tx,
            ctx,
            subscriber,
            "Suspended",
            "Active",
            Some("Paid up".into()),
        )
        .await?;
    }
    Ok(done)
}

/// Applies a stored payment (its document) to its invoice (locked by the caller)
/// and to the subscriber; publishes `payment.received`.
pub async fn apply_payment(
    tx: &mut PgConnection,
    ctx: &ServiceContext,
    payment: &Value,
) -> anyhow::Result<()> {
    let p = |k: &str| payment[k].as_str().unwrap_or_default().to_string();
    let id: Uuid = p("id").parse()?;
    let invoice: Uuid = p("invoice").parse()?;
    let amount: Decimal = p("amountPaid").parse()?;
    let (old_status, new_status, period_end, subscriber): (String, String, Option<NaiveDate>, Uuid) =
        sqlx::query_as(
            "WITH old AS (SELECT status FROM invoices WHERE id = $1)
             UPDATE invoices i SET amount_paid = i.amount_paid + $2, updated_at = now(),
                    status = CASE WHEN i.status IN ('Unpaid', 'Overdue') AND i.amount_paid + $2 >= i.amount_due
                                  THEN 'Paid' ELSE i.status END
             WHERE i.id = $1
             RETURNING (SELECT status FROM old), i.status, i.period_end, i.subscriber_id",
        )
        .bind(invoice)
        .bind(amount)
        .fetch_one(&mut *tx)
        .await?;
    let became_paid = old_status != "Paid" && new_status == "Paid";
    // Paying a period's invoice moves the next due date to the end of that period.
    let (balance, due_before, due_after): (Decimal, NaiveDate, NaiveDate) = sqlx::query_as(
        "WITH old AS (SELECT next_due_date FROM subscribers WHERE id = $1)
         UPDATE subscribers s SET account_balance = s.account_balance + $2, updated_at = now(),
                next_due_date = CASE WHEN $3 AND $4::date IS NOT NULL THEN GREATEST(s.next_due_date, $4::date)
                                     ELSE s.next_due_date END
         WHERE s.id = $1
         RETURNING s.account_balance, (SELECT next_due_date FROM old), s.next_due_date",
    )
    .bind(subscriber)
    .bind(amount)
    .bind(became_paid)
    .bind(period_end)
    .fetch_one(&mut *tx)
    .await?;
    enqueue(
        tx,
        ctx.name,
        &PaymentReceived {
            id,
            payment_reference: p("paymentReference"),
            invoice,
            subscriber,
            amount_paid: amount,
            payment_method: p("paymentMethod"),
            payment_date: p("paymentDate").parse()?,
            account_balance: balance,
        },
    )
    .await?;
    if old_status != new_status {
        let v: Value = sqlx::query_scalar(
            "SELECT jsonb_build_object('id', id, 'invoiceNumber', invoice_number, 'subscriber', subscriber_id,
                    'amountDue', to_char(amount_due, 'FM999999999990.00'), 'dueDate', due_date, 'status', status,
                    'updatedAt', to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))
             FROM invoices WHERE id = $1",
        )
        .bind(invoice)
        .fetch_one(&mut *tx)
        .await?;
        enqueue(tx, ctx.name, &InvoiceUpdated(serde_json::from_value(v)?)).await?;
    }
    let reactivated = maybe_reactivate(tx, ctx, subscriber, ctx.today()).await?;
    if !reactivated && due_before != due_after {
        let snap = subscriber_snapshot(tx, subscriber).await?;
        enqueue(tx, ctx.name, &SubscriberUpdated(snap)).await?;
    }
    Ok(())
}
