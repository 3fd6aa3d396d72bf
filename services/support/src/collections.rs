//! Support's collections and their rules.
//!
//! - `tickets`: a `kind` tells customer tickets (about one known subscriber,
//!   `TCK-000042`) from network tickets (a Zabbix problem, `NET-<event id>`, no
//!   subscriber: the spec's required `subscriber` is required of Customer tickets
//!   only, and a database check holds the two together). Status moves
//!   Open -> In Progress -> Resolved -> Closed; Resolved may be reopened; Closed is final.
//! - `messages`: the communication log, read-only here (rows come from the send
//!   operations and automated notifications; statuses from Notify's reports).
//! - `contacts`, `messageTemplates` (minijinja, checked on save),
//!   `notificationTriggers` (Admin turns each trigger's SMS/email on or off),
//!   `suppressions` (promotional opt-outs) and `subscribers` (the read-only
//!   projection of Billing's subscribers agents troubleshoot with: never money).

use async_trait::async_trait;
use isp_events::options::TicketStatus;
use isp_events::payloads::{TicketCreated, TicketDeleted, TicketUpdated};
use isp_platform::auth::{Principal, Role, Roles};
use isp_platform::collection::{stored, Change, Collection, Field, Hooks, Kind};
use isp_platform::{ApiError, ApiResult, FieldError};
use serde_json::{json, Map, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::templates;

pub const SUPPORT: Roles = Roles::of(&[Role::Admin, Role::SupportAgent]);
pub const ADMIN: Roles = Roles::of(&[Role::Admin]);

pub const KINDS: &[&str] = &["Customer", "Network"];
pub const STATUSES: &[&str] = TicketStatus::ALL;
pub const PRIORITIES: &[&str] = isp_events::options::TicketPriority::ALL;
pub const CHANNELS: &[&str] = &["SMS", "Email"];
isp_events::spec_enum! {
    /// A logged message: the spec's Sent and Failed, what gateways report (Queued,
    /// Accepted, Delivered, Undelivered, Expired), Skipped / Cancelled for bulk
    /// recipients not sent to, and Scheduled for a bulk send's parent waiting for
    /// its start.
    MessageStatus {
        Scheduled = "Scheduled",
        Queued = "Queued",
        Sent = "Sent",
        Accepted = "Accepted",
        Delivered = "Delivered",
        Undelivered = "Undelivered",
        Expired = "Expired",
        Failed = "Failed",
        Skipped = "Skipped",
        Cancelled = "Cancelled",
    }
}

pub const MESSAGE_STATUSES: &[&str] = MessageStatus::ALL;
pub const CATEGORIES: &[&str] = &["Transactional", "Promotional"];
pub const TRIGGER_EVENTS: &[&str] = &[
    "invoice.created",
    "invoice.overdue",
    "payment.received",
    "subscriber.activated",
    "subscriber.suspended",
    "subscriber.reactivated",
    "ticket.updated",
];

/// Whether a ticket may go from `from` to `to`.
pub fn transition_allowed(from: TicketStatus, to: TicketStatus) -> bool {
    use TicketStatus::*;
    from == to
        || matches!(
            (from, to),
            (Open, InProgress)
                | (Open, Resolved)
                | (InProgress, Open)
                | (InProgress, Resolved)
                | (Resolved, Closed)
                | (Resolved, Open)
                | (Resolved, InProgress)
        )
}

// ---- tickets --------------------------------------------------------------------

pub fn tickets() -> Collection {
    Collection::new(
        "support",
        "tickets",
        "tickets",
        "Ticket",
        vec![
            Field::new("ticketID", "ticket_id", Kind::TEXT).system(),
            Field::new("kind", "kind", Kind::Select(KINDS))
                .required()
                .immutable()
                .default_value(json!("Customer")),
            Field::new("subscriber", "subscriber", Kind::Relation).immutable(),
            Field::new("subject", "subject", Kind::TEXT).required(),
            Field::new("description", "description", Kind::RICH_TEXT).required(),
            Field::new("status", "status", Kind::Select(STATUSES))
                .required()
                .default_value(json!("Open")),
            Field::new("priority", "priority", Kind::Select(PRIORITIES)).required(),
            Field::new("assignedTo", "assigned_to", Kind::Relation),
            Field::new("zabbixEventId", "zabbix_event_id", Kind::TEXT).system(),
            Field::new("networkHost", "network_host", Kind::TEXT).system(),
            Field::new("networkHostIp", "network_host_ip", Kind::TEXT).system(),
            Field::new("networkSeverity", "network_severity", Kind::TEXT).system(),
            Field::new("problemStartedAt", "problem_started_at", Kind::Timestamp).system(),
            Field::new("resource", "resource", Kind::Relation).system(),
            Field::new(
                "affectedSubscribers",
                "affected_subscribers",
                Kind::Int {
                    min: 0,
                    max: i32::MAX as i64,
                },
            )
            .system(),
            Field::new("notes", "notes", Kind::Json).system(),
            Field::new("resolvedAt", "resolved_at", Kind::Timestamp).system(),
        ],
    )
    .access(SUPPORT, SUPPORT, SUPPORT, SUPPORT)
    .hooks(TicketHooks)
    .publishes(TicketCreated, TicketUpdated, TicketDeleted)
}

struct TicketHooks;

const NOT_AN_AGENT: &str = "Must be an active staff member with the role Support Agent.";

/// An Active Support Agent in Core's staff (as projected here).
async fn is_support_agent(tx: &mut PgConnection, id: Uuid) -> ApiResult<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM staff WHERE id = $1 AND role = 'Support Agent' AND status = 'Active')",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?)
}

#[async_trait]
impl Hooks for TicketHooks {
    /// A new ticket's kind decides whether it names a subscriber; reported with
    /// the fields' own errors.
    async fn validate(
        &self,
        tx: &mut PgConnection,
        _principal: &Principal,
        data: &Map<String, Value>,
        create: bool,
    ) -> ApiResult<Vec<FieldError>> {
        let mut bad = vec![];
        if !create {
            return Ok(bad);
        }
        let kind = data
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("Customer");
        let subscriber = data
            .get("subscriber")
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok());
        match (kind, subscriber) {
            ("Customer", None) => bad.push(FieldError::new(
                "subscriber",
                "subscriber is required for a Customer ticket.",
            )),
            ("Customer", Some(s)) => {
                let known: bool =
                    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM subscribers WHERE id = $1)")
                        .bind(s)
                        .fetch_one(&mut *tx)
                        .await?;
                if !known {
                    bad.push(FieldError::new("subscriber", "No such subscriber."));
                }
            }
            (_, Some(_)) => bad.push(FieldError::new(
                "subscriber",
                "A Network ticket has no subscriber.",
            )),
            (_, None) => {}
        }
        if data
            .get("status")
            .and_then(Value::as_str)
            .is_some_and(|s| s != TicketStatus::Open)
        {
            bad.push(FieldError::new("status", "A new ticket is Open."));
        }
        if let Some(staff) = data
            .get("assignedTo")
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
        {
            if !is_support_agent(tx, staff).await? {
                bad.push(FieldError::new("assignedTo", NOT_AN_AGENT));
            }
        }
        Ok(bad)
    }

    async fn before_change(&self, tx: &mut PgConnection, c: &mut Change<'_>) -> ApiResult<()> {
        let mut bad = vec![];
        if let Some(existing) = c.existing {
            let from: TicketStatus = stored::option(existing, "status")?;
            if from == TicketStatus::Closed {
                return Err(ApiError::conflict_field(
                    "status",
                    "A closed ticket cannot be changed.",
                ));
            }
            let to = c
                .data
                .get("status")
                .and_then(Value::as_str)
                .map(|t| {
                    TicketStatus::parse(t).ok_or_else(|| {
                        ApiError::Internal(anyhow::anyhow!("status {t:?} passed validation"))
                    })
                })
                .transpose()?;
            if let Some(to) = to {
                if !transition_allowed(from, to) {
                    return Err(ApiError::conflict_field(
                        "status",
                        format!("A ticket cannot move from {from} to {to}."),
                    ));
                }
            }
        }
        // A new ticket's assignee was checked in `validate`.
        if !c.create && c.changed("assignedTo") {
            if let Some(staff) = c.uuid("assignedTo") {
                if !is_support_agent(tx, staff).await? {
                    bad.push(FieldError::new("assignedTo", NOT_AN_AGENT));
                }
            }
        }
        if !bad.is_empty() {
            return Err(ApiError::BadRequest(bad));
        }
        if c.changed("status") {
            let resolved = c.str("status") == TicketStatus::Resolved;
            c.data.insert(
                "resolvedAt".into(),
                if resolved {
                    json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                } else {
                    Value::Null
                },
            );
        }
        Ok(())
    }
}

// ---- messages ---------------------------------------------------------------------

pub fn messages() -> Collection {
    let sys = |name, column, kind| Field::new(name, column, kind).system();
    Collection::new(
        "support",
        "messages",
        "messages",
        "Message",
        vec![
            sys("recipient", "recipient", Kind::TEXT).required(),
            sys("type", "type", Kind::Select(CHANNELS)).required(),
            sys("content", "content", Kind::TEXT_AREA).required(),
            sys("subject", "subject", Kind::TEXT),
            sys("status", "status", Kind::Select(MESSAGE_STATUSES)).required(),
            sys("provider", "provider", Kind::TEXT),
            sys("providerMessageId", "provider_message_id", Kind::TEXT),
            sys("cost", "cost", Kind::TEXT),
            sys("failureReason", "failure_reason", Kind::TEXT),
            sys("triggerEvent", "trigger_event", Kind::TEXT),
            sys("sentBy", "sent_by", Kind::Relation),
            sys("bulkSend", "bulk_send", Kind::Bool),
            sys("parent", "parent", Kind::Relation),
            sys("ticket", "ticket", Kind::Relation),
            sys("subscriber", "subscriber", Kind::Relation),
            sys("contact", "contact", Kind::Relation),
            sys("category", "category", Kind::Select(CATEGORIES)),
            sys("audience", "audience", Kind::Json),
            sys(
                "recipientCount",
                "recipient_count",
                Kind::Int {
                    min: 0,
                    max: i32::MAX as i64,
                },
            ),
            sys("scheduledAt", "scheduled_at", Kind::Timestamp),
            sys("statusAt", "status_at", Kind::Timestamp),
        ],
    )
    .access(SUPPORT, Roles::NONE, Roles::NONE, Roles::NONE)
}

// ---- contacts ---------------------------------------------------------------------

pub fn contacts() -> Collection {
    Collection::new(
        "support",
        "contacts",
        "contacts",
        "Contact",
        vec![
            Field::new("phoneNumber", "phone_number", Kind::Phone).required(),
            Field::new("fullName", "full_name", Kind::TEXT),
            Field::new("source", "source", Kind::TEXT),
        ],
    )
    .access(SUPPORT, SUPPORT, SUPPORT, SUPPORT)
}

// ---- templates --------------------------------------------------------------------

pub fn message_templates() -> Collection {
    Collection::new(
        "support",
        "messageTemplates",
        "message_templates",
        "Message template",
        vec![
            Field::new("templateName", "template_name", Kind::TEXT).required(),
            Field::new("content", "content", Kind::TEXT_AREA).required(),
            Field::new("subject", "subject", Kind::TEXT),
            Field::new(
                "triggerEvent",
                "trigger_event",
                Kind::Select(TRIGGER_EVENTS),
            ),
        ],
    )
    .access(SUPPORT, SUPPORT, SUPPORT, SUPPORT)
    .rule(templates::rule())
    .hooks(TemplateHooks)
}

struct TemplateHooks;

#[async_trait]
impl Hooks for TemplateHooks {
    async fn before_change(&self, _tx: &mut PgConnection, c: &mut Change<'_>) -> ApiResult<()> {
        let trigger = c.str("triggerEvent");
        let mut bad = vec![];
        for field in ["content", "subject"] {
            if let Some(src) = c.str(field) {
                if let Err(m) = templates::check(src, trigger) {
                    bad.push(FieldError::new(field, m));
                }
            }
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(ApiError::BadRequest(bad))
        }
    }
}

// ---- notification triggers ----------------------------------------------------------

pub fn notification_triggers() -> Collection {
    Collection::new(
        "support",
        "notificationTriggers",
        "notification_triggers",
        "Notification trigger",
        vec![
            Field::new("triggerEvent", "trigger_event", Kind::TEXT).system(),
            Field::new("enabled", "enabled", Kind::Bool),
            Field::new("sendSms", "send_sms", Kind::Bool),
            Field::new("sendEmail", "send_email", Kind::Bool),
        ],
    )
    .access(SUPPORT, Roles::NONE, ADMIN, Roles::NONE)
}

// ---- suppressions -----------------------------------------------------------------

pub fn suppressions() -> Collection {
    Collection::new(
        "support",
        "suppressions",
        "suppressions",
        "Suppression",
        vec![
            Field::new("address", "address", Kind::TEXT)
                .required()
                .schema(json!({"anyOf": [
                    isp_platform::openapi::field_input("address", Kind::Phone, true),
                    isp_platform::openapi::field_input("address", Kind::Email, true),
                ], "description": "A phone number (any form a phone field takes; stored in E.164) or an email address (stored in lower case)"})),
            Field::new("reason", "reason", Kind::TEXT)
                .required()
                .default_value(json!("Marked by staff")),
        ],
    )
    .access(SUPPORT, SUPPORT, SUPPORT, SUPPORT)
    .hooks(SuppressionHooks)
}

/// An E.164 number, or a lower-case email address.
pub fn normalize_address(s: &str) -> Result<String, String> {
    if s.contains('@') {
        let f = Field::new("address", "address", Kind::Email);
        isp_platform::collection::canonical(&f, &json!(s))
            .map(|v| v.as_str().unwrap_or_default().to_string())
    } else {
        isp_platform::phone::normalize(s)
    }
}

struct SuppressionHooks;

#[async_trait]
impl Hooks for SuppressionHooks {
    async fn before_change(&self, _tx: &mut PgConnection, c: &mut Change<'_>) -> ApiResult<()> {
        if let Some(a) = c.data.get("address").and_then(Value::as_str) {
            let n = normalize_address(a).map_err(|m| ApiError::field("address", m))?;
            c.data.insert("address".into(), json!(n));
        }
        Ok(())
    }
}

// ---- subscribers (projection) --------------------------------------------------------

pub fn subscribers() -> Collection {
    let ro = |name, column, kind| Field::new(name, column, kind).system();
    Collection::new(
        "support",
        "subscribers",
        "subscribers",
        "Subscriber",
        vec![
            ro("accountNumber", "account_number", Kind::TEXT),
            ro("firstName", "first_name", Kind::TEXT),
            ro("lastName", "last_name", Kind::TEXT),
            ro("mpesaNumber", "mpesa_number", Kind::Phone),
            ro("contactPhone", "contact_phone", Kind::Phone),
            ro("email", "email", Kind::Email),
            ro("status", "status", Kind::TEXT),
            ro("servicePlan", "service_plan", Kind::Relation),
            ro("serviceLocation", "service_location", Kind::Relation),
            ro("building", "building", Kind::Relation),
            ro("router", "router", Kind::Relation),
        ],
    )
    .access(SUPPORT, Roles::NONE, Roles::NONE, Roles::NONE)
}
