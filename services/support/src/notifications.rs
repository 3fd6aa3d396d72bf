//! Customer notifications and the message log.
//!
//! Every message is a `messages` row and a `notification.requested.support` event
//! written in one transaction ([`queue`]): Notify sends it when it can (also after
//! an outage) and at most once per row id, and reports `notification.status`, which
//! moves the row forward only ([`DeliveryStatus::rank`]). Automated messages carry
//! the causing event's id (`source_event`), and the unique (source_event,
//! recipient, type) makes a redelivered event send nothing more.

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use isp_events::outbox::enqueue;
use isp_events::payloads::*;
use isp_events::CloudEvent;
use rust_decimal::Decimal;
use serde_json::{json, Map, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::templates;

/// One message to log and send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub recipient: String,
    pub channel: NotificationChannel,
    pub content: String,
    pub subject: Option<String>,
    pub trigger_event: String,
    pub category: NotificationCategory,
    pub source_event: Option<Uuid>,
    pub subscriber: Option<Uuid>,
    pub contact: Option<Uuid>,
    pub ticket: Option<Uuid>,
    pub sent_by: Option<Uuid>,
    pub parent: Option<Uuid>,
}

pub fn channel_label(c: NotificationChannel) -> &'static str {
    match c {
        NotificationChannel::Sms => "SMS",
        NotificationChannel::Email => "Email",
    }
}

/// The channel a stored label names; `None` for anything else.
pub fn channel_from_label(s: &str) -> Option<NotificationChannel> {
    [NotificationChannel::Sms, NotificationChannel::Email]
        .into_iter()
        .find(|c| channel_label(*c) == s)
}

/// The category a stored label names; `None` for anything else.
pub fn category_from_label(s: &str) -> Option<NotificationCategory> {
    [
        NotificationCategory::Transactional,
        NotificationCategory::Promotional,
    ]
    .into_iter()
    .find(|c| category_label(*c) == s)
}

pub fn category_label(c: NotificationCategory) -> &'static str {
    match c {
        NotificationCategory::Transactional => "Transactional",
        NotificationCategory::Promotional => "Promotional",
    }
}

/// Logs the message and asks Notify to send it, in `tx`. `None` when this event
/// (or bulk send) already has its message for this recipient and channel.
pub async fn queue(tx: &mut PgConnection, m: &Outgoing) -> anyhow::Result<Option<Uuid>> {
    let id = Uuid::now_v7();
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO messages (id, recipient, type, content, subject, status, trigger_event,
             category, source_event, subscriber, contact, ticket, sent_by, parent, bulk_send)
         VALUES ($1, $2, $3, $4, $5, 'Queued', $6, $7, $8, $9, $10, $11, $12, $13, false)
         ON CONFLICT DO NOTHING RETURNING id",
    )
    .bind(id)
    .bind(&m.recipient)
    .bind(channel_label(m.channel))
    .bind(&m.content)
    .bind(&m.subject)
    .bind(&m.trigger_event)
    .bind(category_label(m.category))
    .bind(m.source_event)
    .bind(m.subscriber)
    .bind(m.contact)
    .bind(m.ticket)
    .bind(m.sent_by)
    .bind(m.parent)
    .fetch_optional(&mut *tx)
    .await?;
    if inserted.is_none() {
        return Ok(None);
    }
    enqueue(tx, "support", &SupportNotificationRequested(request(id, m))).await?;
    Ok(Some(id))
}

pub fn request(id: Uuid, m: &Outgoing) -> NotificationRequest {
    NotificationRequest {
        id,
        channel: m.channel,
        recipient: m.recipient.clone(),
        subject: m.subject.clone(),
        body: m.content.clone(),
        category: m.category,
        reference: Some(id.to_string()),
    }
}

/// KES with two decimals, as customers read amounts.
pub fn kes(d: Decimal) -> String {
    format!("KES {}", isp_platform::money::format(d))
}

/// "31 Jan 2026".
pub fn day(d: NaiveDate) -> String {
    d.format("%-d %b %Y").to_string()
}

/// A customer's contact data as Support projects it.
#[derive(Debug, sqlx::FromRow)]
pub struct Customer {
    pub id: Uuid,
    pub first_name: String,
    pub last_name: String,
    pub account_number: String,
    pub mpesa_number: String,
    pub contact_phone: Option<String>,
    pub email: Option<String>,
}

impl Customer {
    /// The number to text: the contact phone where one is given, else M-Pesa's.
    pub fn phone(&self) -> &str {
        self.contact_phone.as_deref().unwrap_or(&self.mpesa_number)
    }
    pub fn vars(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("firstName".into(), json!(self.first_name));
        m.insert("lastName".into(), json!(self.last_name));
        m.insert(
            "fullName".into(),
            json!(format!("{} {}", self.first_name, self.last_name)),
        );
        m.insert("accountNumber".into(), json!(self.account_number));
        m.insert("phoneNumber".into(), json!(self.phone()));
        m
    }
}

pub async fn customer(tx: &mut PgConnection, id: Uuid) -> anyhow::Result<Option<Customer>> {
    Ok(sqlx::query_as(
        "SELECT id, first_name, last_name, account_number, mpesa_number, contact_phone, email
         FROM subscribers WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?)
}

pub struct Notifier {
    pub timezone: Tz,
}

impl Notifier {
    fn date(&self, at: DateTime<Utc>) -> String {
        day(at.with_timezone(&self.timezone).date_naive())
    }

    /// Invoices, payments and status changes from Billing.
    pub async fn on_billing_event(
        &self,
        tx: &mut PgConnection,
        ev: &CloudEvent,
    ) -> anyhow::Result<()> {
        let mut vars = Map::new();
        let (trigger, subscriber) = if let Some(i) = ev.payload::<InvoiceCreated>()? {
            invoice_vars(&mut vars, &i);
            (InvoiceCreated::TYPE, i.subscriber)
        } else if let Some(i) = ev.payload::<InvoiceOverdue>()? {
            invoice_vars(&mut vars, &i);
            (InvoiceOverdue::TYPE, i.subscriber)
        } else if let Some(p) = ev.payload::<PaymentReceived>()? {
            vars.insert("amountPaid".into(), json!(kes(p.amount_paid)));
            vars.insert("paymentReference".into(), json!(p.payment_reference));
            vars.insert("paymentDate".into(), json!(day(p.payment_date)));
            vars.insert("paymentMethod".into(), json!(p.payment_method));
            (PaymentReceived::TYPE, p.subscriber)
        } else {
            let change = if let Some(s) = ev.payload::<SubscriberSuspended>()? {
                Some((SubscriberSuspended::TYPE, s.0))
            } else if let Some(s) = ev.payload::<SubscriberReactivated>()? {
                Some((SubscriberReactivated::TYPE, s.0))
            } else {
                ev.payload::<SubscriberActivated>()?
                    .map(|s| (SubscriberActivated::TYPE, s.0))
            };
            let Some((trigger, s)) = change else {
                return Ok(());
            };
            vars.insert("date".into(), json!(self.date(s.at)));
            vars.insert("reason".into(), json!(s.reason.unwrap_or_default()));
            (trigger, s.subscriber_id)
        };
        self.notify(tx, trigger, ev.id, subscriber, vars, None)
            .await
    }

    /// Support's own ticket events: a customer ticket whose status changed.
    pub async fn on_ticket_event(
        &self,
        tx: &mut PgConnection,
        ev: &CloudEvent,
    ) -> anyhow::Result<()> {
        let (t, created) = match ev.payload::<TicketCreated>()? {
            Some(t) => (t.0, true),
            None => match ev.payload::<TicketUpdated>()? {
                Some(t) => (t.0, false),
                None => return Ok(()),
            },
        };
        // The last status seen; only a newer snapshot with another status notifies.
        let before: Option<(String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT status, updated_at FROM ticket_status_seen WHERE ticket = $1 FOR UPDATE",
        )
        .bind(t.id)
        .fetch_optional(&mut *tx)
        .await?;
        if before.as_ref().is_some_and(|(_, at)| *at > t.updated_at) {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO ticket_status_seen (ticket, status, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (ticket) DO UPDATE SET status = EXCLUDED.status, updated_at = EXCLUDED.updated_at",
        )
        .bind(t.id)
        .bind(t.status)
        .bind(t.updated_at)
        .execute(&mut *tx)
        .await?;
        let changed = match &before {
            Some((s, _)) => *s != t.status,
            None => !created,
        };
        let Some(subscriber) = t.subscriber.filter(|_| changed) else {
            return Ok(());
        };
        let mut vars = Map::new();
        vars.insert("ticketId".into(), json!(t.ticket_id));
        vars.insert("subject".into(), json!(t.subject));
        vars.insert("status".into(), json!(t.status));
        self.notify(tx, TicketUpdated::TYPE, ev.id, subscriber, vars, Some(t.id))
            .await
    }

    async fn notify(
        &self,
        tx: &mut PgConnection,
        trigger: &str,
        event: Uuid,
        subscriber: Uuid,
        mut vars: Map<String, Value>,
        ticket: Option<Uuid>,
    ) -> anyhow::Result<()> {
        let setting: Option<(bool, bool, bool)> = sqlx::query_as(
            "SELECT enabled, send_sms, send_email FROM notification_triggers WHERE trigger_event = $1",
        )
        .bind(trigger)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((true, sms, email)) = setting else {
            return Ok(());
        };
        let template: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT content, subject FROM message_templates WHERE trigger_event = $1",
        )
        .bind(trigger)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((content, subject)) = template else {
            tracing::warn!(
                trigger,
                "no template is bound to this trigger; nothing sent"
            );
            return Ok(());
        };
        let Some(c) = customer(tx, subscriber).await? else {
            tracing::warn!(trigger, %subscriber, "notification for a subscriber not projected");
            return Ok(());
        };
        vars.extend(c.vars());
        let vars = Value::Object(vars);
        let body = templates::render(&content, &vars)?;
        let subject = subject.map(|s| templates::render(&s, &vars)).transpose()?;
        let mut targets = vec![];
        if sms {
            targets.push((NotificationChannel::Sms, c.phone().to_string()));
        }
        if let (true, Some(e)) = (email, &c.email) {
            targets.push((NotificationChannel::Email, e.clone()));
        }
        for (channel, recipient) in targets {
            queue(
                tx,
                &Outgoing {
                    recipient,
                    channel,
                    content: body.clone(),
                    subject: subject
                        .clone()
                        .filter(|_| channel == NotificationChannel::Email),
                    trigger_event: trigger.to_string(),
                    category: NotificationCategory::Transactional,
                    source_event: Some(event),
                    subscriber: Some(c.id),
                    contact: None,
                    ticket,
                    sent_by: None,
                    parent: None,
                },
            )
            .await?;
        }
        Ok(())
    }
}

fn invoice_vars(vars: &mut Map<String, Value>, i: &InvoiceSnapshot) {
    vars.insert("invoiceNumber".into(), json!(i.invoice_number));
    vars.insert("amountDue".into(), json!(kes(i.amount_due)));
    vars.insert("dueDate".into(), json!(day(i.due_date)));
}

/// `notification.status` for one of our messages: moves it forward only.
pub async fn apply_status(tx: &mut PgConnection, s: &NotificationStatus) -> anyhow::Result<()> {
    if s.requester.as_deref().is_some_and(|r| r != "support") {
        return Ok(());
    }
    sqlx::query(
        "UPDATE messages SET status = $2, status_rank = $3, provider = $4,
             provider_message_id = COALESCE($5, provider_message_id),
             cost = COALESCE($6, cost), cost_currency = COALESCE($7, cost_currency),
             failure_reason = COALESCE($8, failure_reason), status_at = $9, updated_at = now()
         WHERE id = $1 AND status_rank < $3",
    )
    .bind(s.delivery_id)
    .bind(s.status.as_str())
    .bind(s.status.rank() as i32)
    .bind(&s.provider)
    .bind(&s.provider_message_id)
    .bind(s.cost.map(|c| c.to_string()))
    .bind(&s.cost_currency)
    .bind(&s.failure_reason)
    .bind(s.at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Notify's opt-outs join (and START replies leave) the suppression list.
pub async fn apply_suppression(
    tx: &mut PgConnection,
    change: &SuppressionChange,
    added: bool,
) -> anyhow::Result<()> {
    let address = crate::collections::normalize_address(&change.recipient)
        .unwrap_or_else(|_| change.recipient.clone());
    if added {
        sqlx::query(
            "INSERT INTO suppressions (id, address, reason) VALUES ($1, $2, $3)
             ON CONFLICT (address) DO NOTHING",
        )
        .bind(Uuid::now_v7())
        .bind(&address)
        .bind(&change.source)
        .execute(&mut *tx)
        .await?;
    } else {
        sqlx::query("DELETE FROM suppressions WHERE address = $1")
            .bind(&address)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}
