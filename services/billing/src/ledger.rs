//! The money rules shared by the API and the consumers (docs/billing.md):
//! applying a payment to its invoice and the subscriber's balance, moving
//! `nextDueDate`, reactivating a paid-up subscriber, and the subscriber events.
//!
//! Sign convention: `accountBalance` = payments received - invoices charged
//! (Unpaid, Overdue and Paid ones). Negative: the subscriber owes that much;
//! positive: credit, applied to the next invoices the daily run creates.

use chrono::{NaiveDate, Utc};
use isp_events::options::{InvoiceStatus, SubscriberStatus};
use isp_events::outbox::enqueue;
use isp_events::payloads::*;
use isp_platform::ServiceContext;
use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

/// Charges `amount` to a subscriber's balance (negative: gives it back). Every
/// write of `accountBalance` is in this module: here, [`apply_payment`] and
/// [`charge_due`].
pub async fn charge(
    tx: &mut PgConnection,
    subscriber: Uuid,
    amount: Decimal,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE subscribers SET account_balance = account_balance - $2 WHERE id = $1")
        .bind(subscriber)
        .bind(amount)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The daily run's invoices for everyone in `billing_run_due` (see
/// `daily::invoice_due`), charged to their balances, with their events, in one
/// statement; credit settles what it covers. Returns how many were created.
pub async fn charge_due(tx: &mut PgConnection) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(CHARGE_DUE_SQL)
        .fetch_one(&mut *tx)
        .await?)
}

const CHARGE_DUE_SQL: &str = r#"
WITH ins AS (
    INSERT INTO invoices (id, invoice_number, subscriber_id, amount_due, amount_paid, due_date, status,
                          line_items, period_start, period_end)
    SELECT uuid_v7(), 'INV-' || lpad(nextval('invoice_number_seq')::text, 6, '0'), d.id, d.price,
           LEAST(d.price, GREATEST(d.bal, 0)), d.due,
           CASE WHEN d.bal >= d.price THEN 'Paid' ELSE 'Unpaid' END,
           jsonb_build_array(jsonb_build_object(
               'description', d.name || ' ' || to_char(d.ps, 'YYYY-MM-DD') || ' to ' || to_char(d.pe - 1, 'YYYY-MM-DD'),
               'quantity', 1, 'price', to_char(d.price, 'FM999999999990.00'))),
           d.ps, d.pe
    FROM (SELECT * FROM billing_run_due ORDER BY account_number) d
    ON CONFLICT (subscriber_id, period_start) DO NOTHING
    RETURNING id, invoice_number, subscriber_id, amount_due, due_date, status, period_end, updated_at
), sub AS (
    UPDATE subscribers s
       SET account_balance = s.account_balance - i.amount_due,
           next_due_date = CASE WHEN i.status = 'Paid' THEN i.period_end ELSE d.ps END,
           billing_anchor_day = d.anchor,
           updated_at = CASE WHEN i.status = 'Paid' OR d.ps <> d.nd THEN now() ELSE s.updated_at END
      FROM ins i JOIN billing_run_due d ON d.id = i.subscriber_id
     WHERE s.id = i.subscriber_id
    RETURNING s.id, (i.status = 'Paid' OR d.ps <> d.nd) AS moved,
              CASE WHEN i.status = 'Paid' OR d.ps <> d.nd THEN subscriber_snapshot(s) END AS snap
), ev AS (
    INSERT INTO outbox (id, subject, type, payload)
    SELECT e.id, 'isp.billing.invoice.created', 'invoice.created',
           cloud_event(e.id, 'invoice.created', i.id::text, jsonb_build_object(
               'id', i.id, 'invoiceNumber', i.invoice_number, 'subscriber', i.subscriber_id,
               'amountDue', to_char(i.amount_due, 'FM999999999990.00'), 'dueDate', i.due_date,
               'status', i.status,
               'updatedAt', to_char(i.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')))
    FROM ins i CROSS JOIN LATERAL (SELECT uuid_v7() AS id, i.id AS k) e
), ev2 AS (
    INSERT INTO outbox (id, subject, type, payload)
    SELECT e.id, 'isp.billing.subscriber.updated', 'subscriber.updated',
           cloud_event(e.id, 'subscriber.updated', u.id::text, u.snap)
    FROM sub u CROSS JOIN LATERAL (SELECT uuid_v7() AS id, u.id AS k) e
    WHERE u.moved
)
SELECT count(*) FROM ins
"#;

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
    old_status: Option<SubscriberStatus>,
    new_status: SubscriberStatus,
    reason: Option<String>,
) -> anyhow::Result<()> {
    use SubscriberStatus::*;
    let snap = subscriber_snapshot(tx, id).await?;
    if old_status != Some(new_status) {
        let change = SubscriberStatusChange {
            subscriber_id: id,
            account_number: snap.account_number.clone(),
            reason,
            at: Utc::now(),
        };
        match (old_status, new_status) {
            (Some(PendingInstallation), Active) => {
                enqueue(tx, ctx.name, &SubscriberActivated(change)).await?
            }
            (_, Active) => enqueue(tx, ctx.name, &SubscriberReactivated(change)).await?,
            (_, Suspended) => enqueue(tx, ctx.name, &SubscriberSuspended(change)).await?,
            (_, Deactivated) => enqueue(tx, ctx.name, &SubscriberDeactivated(change)).await?,
            (_, PendingInstallation) => Default::default(),
        };
    }
    enqueue(tx, ctx.name, &SubscriberUpdated(snap)).await?;
    Ok(())
}

/// A subscriber suspended for non-payment becomes Active again once nothing is
/// overdue (no Overdue invoice, no Unpaid one past its due date) or the balance is
/// no longer negative. A manual suspension is never lifted here. The next period
/// starts no earlier than `today`: time spent suspended after the end of the last
/// invoiced period is not billed (days inside an invoiced period are: periods are
/// prepaid calendar periods, see docs/billing.md).
pub async fn maybe_reactivate(
    tx: &mut PgConnection,
    ctx: &ServiceContext,
    subscriber: Uuid,
    today: NaiveDate,
) -> anyhow::Result<bool> {
    // The next period restarts today only if nextDueDate is past and no invoiced
    // period runs past today (else it would be invoiced twice over).
    let done = sqlx::query(
        "WITH c AS (
             SELECT s.id, s.next_due_date < $2
                    AND NOT EXISTS (SELECT 1 FROM invoices i WHERE i.subscriber_id = s.id
                                    AND i.status <> 'Cancelled' AND i.period_end > $2) AS restart
             FROM subscribers s WHERE s.id = $1
         )
         UPDATE subscribers s SET status = 'Active', suspension_reason = NULL, updated_at = now(),
                next_due_date = CASE WHEN c.restart THEN $2 ELSE s.next_due_date END,
                billing_anchor_day = CASE WHEN c.restart THEN extract(day FROM $2::date)::int
                                          ELSE s.billing_anchor_day END
         FROM c
         WHERE s.id = c.id AND s.status = 'Suspended' AND s.suspension_reason = 'Non-payment'
           AND (s.account_balance >= 0
                OR NOT EXISTS (SELECT 1 FROM invoices i WHERE i.subscriber_id = s.id
                               AND (i.status = 'Overdue' OR (i.status = 'Unpaid' AND i.due_date < $2))))",
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
            Some(SubscriberStatus::Suspended),
            SubscriberStatus::Active,
            Some("Paid up".into()),
        )
        .await?;
    }
    Ok(done)
}

/// Which open invoices [`settle`] may use money on.
#[derive(Debug, Clone, Copy)]
pub enum Settle {
    /// Only this invoice.
    Only(Uuid),
    /// Every open invoice of the subscriber but this one.
    AllBut(Uuid),
}

/// An invoice a settlement made Paid.
#[derive(Debug, Clone, Copy)]
pub struct Settled {
    pub invoice: Uuid,
    pub period_end: Option<NaiveDate>,
}

/// Records up to `amount` as paid on `subscriber`'s open (Unpaid or Overdue)
/// invoices, oldest due date first, each up to what it still owes; an invoice
/// fully covered becomes Paid. Returns what is left and the invoices that became
/// Paid. The caller holds the subscriber's row lock (payments take it before any
/// invoice lock, so two settlements never wait on each other's invoices), and
/// changes the balance itself.
pub async fn settle(
    tx: &mut PgConnection,
    subscriber: Uuid,
    which: Settle,
    amount: Decimal,
) -> anyhow::Result<(Decimal, Vec<Settled>)> {
    let mut left = amount;
    let mut paid = vec![];
    if left <= Decimal::ZERO {
        return Ok((left, paid));
    }
    let (only, but) = match which {
        Settle::Only(i) => (Some(i), None),
        Settle::AllBut(i) => (None, Some(i)),
    };
    let open: Vec<(Uuid, Decimal)> = sqlx::query_as(
        "SELECT id, amount_due - amount_paid FROM invoices
         WHERE subscriber_id = $1 AND status IN ('Unpaid', 'Overdue') AND amount_paid < amount_due
           AND ($2::uuid IS NULL OR id = $2) AND ($3::uuid IS NULL OR id <> $3)
         ORDER BY due_date, created_at, id
         FOR UPDATE",
    )
    .bind(subscriber)
    .bind(only)
    .bind(but)
    .fetch_all(&mut *tx)
    .await?;
    for (invoice, owed) in open {
        if left <= Decimal::ZERO {
            break;
        }
        let take = left.min(owed);
        let (status, period_end): (String, Option<NaiveDate>) = sqlx::query_as(
            "UPDATE invoices SET amount_paid = amount_paid + $2, updated_at = now(),
                    status = CASE WHEN amount_paid + $2 >= amount_due THEN 'Paid' ELSE status END
             WHERE id = $1 RETURNING status, period_end",
        )
        .bind(invoice)
        .bind(take)
        .fetch_one(&mut *tx)
        .await?;
        left -= take;
        if status == InvoiceStatus::Paid {
            paid.push(Settled {
                invoice,
                period_end,
            });
        }
    }
    Ok((left, paid))
}

/// After invoices became Paid: `nextDueDate` moves to the end of the latest period
/// paid (prepaid calendar periods), and each invoice publishes `invoice.updated`.
/// Returns whether `nextDueDate` moved.
pub async fn after_settled(
    tx: &mut PgConnection,
    ctx: &ServiceContext,
    subscriber: Uuid,
    changed: &[Settled],
) -> anyhow::Result<bool> {
    let end = changed.iter().filter_map(|s| s.period_end).max();
    let moved = match end {
        Some(end) => {
            sqlx::query(
                "UPDATE subscribers SET next_due_date = $2, updated_at = now()
                 WHERE id = $1 AND next_due_date < $2",
            )
            .bind(subscriber)
            .bind(end)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                > 0
        }
        None => false,
    };
    for s in changed {
        publish_invoice_updated(tx, ctx, s.invoice).await?;
    }
    Ok(moved)
}

pub async fn publish_invoice_updated(
    tx: &mut PgConnection,
    ctx: &ServiceContext,
    invoice: Uuid,
) -> anyhow::Result<()> {
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
    Ok(())
}

/// Applies a stored payment (its document) to its invoice and to the subscriber
/// (both locked by the caller, subscriber first); publishes `payment.received`.
///
/// The named invoice takes what it still owes; a surplus settles the
/// subscriber's other open invoices oldest first (their `amountPaid` records it;
/// the payment row stays attached to the invoice the payer named); what is left
/// after that is credit in `accountBalance`, used by the next invoices.
pub async fn apply_payment(
    tx: &mut PgConnection,
    ctx: &ServiceContext,
    payment: &Value,
) -> anyhow::Result<()> {
    use isp_platform::collection::stored;
    let id = stored::uuid(payment, "id")?;
    let invoice = stored::uuid(payment, "invoice")?;
    let amount = stored::money(payment, "amountPaid")?;
    let subscriber: Uuid = sqlx::query_scalar("SELECT subscriber_id FROM invoices WHERE id = $1")
        .bind(invoice)
        .fetch_one(&mut *tx)
        .await?;
    let (left, mut changed) = settle(tx, subscriber, Settle::Only(invoice), amount).await?;
    let (_, more) = settle(tx, subscriber, Settle::AllBut(invoice), left).await?;
    changed.extend(more);
    let balance: Decimal = sqlx::query_scalar(
        "UPDATE subscribers SET account_balance = account_balance + $2, updated_at = now()
         WHERE id = $1 RETURNING account_balance",
    )
    .bind(subscriber)
    .bind(amount)
    .fetch_one(&mut *tx)
    .await?;
    enqueue(
        tx,
        ctx.name,
        &PaymentReceived {
            id,
            payment_reference: payment["paymentReference"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("a payment without paymentReference"))?
                .to_string(),
            invoice,
            subscriber,
            amount_paid: amount,
            payment_method: stored::option(payment, "paymentMethod")?,
            payment_date: stored::date(payment.get("paymentDate"), "paymentDate")?
                .ok_or_else(|| anyhow::anyhow!("a payment without paymentDate"))?,
            account_balance: balance,
        },
    )
    .await?;
    let moved = after_settled(tx, ctx, subscriber, &changed).await?;
    let reactivated = maybe_reactivate(tx, ctx, subscriber, ctx.today()).await?;
    if !reactivated && moved {
        let snap = subscriber_snapshot(tx, subscriber).await?;
        enqueue(tx, ctx.name, &SubscriberUpdated(snap)).await?;
    }
    Ok(())
}
