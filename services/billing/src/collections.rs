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

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{Datelike, NaiveDate};
use isp_events::outbox::enqueue;
use isp_events::payloads::*;
use isp_platform::auth::{Principal, Role, Roles};
use isp_platform::collection::{Change, Collection, Field, Hooks, Kind, Operation};
use isp_platform::{ApiError, ApiResult, FieldError, ServiceContext};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::ledger;
use crate::storage::Storage;

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

pub const SUBSCRIBER_STATUS: &[&str] =
    &["Pending Installation", "Active", "Suspended", "Deactivated"];
pub const BILLING_CYCLES: &[&str] = &["Monthly", "Quarterly"];
/// Why a subscriber is Suspended: the daily run ('Non-payment', lifted by paying
/// up) or staff ('Manual', lifted only by staff).
pub const SUSPENSION_REASONS: &[&str] = &["Non-payment", "Manual"];
pub const CONNECTION_TYPES: &[&str] = &["PPPoE", "IPoE/DHCP", "Static IP", "Hotspot"];
pub const INVOICE_STATUS: &[&str] = &["Draft", "Unpaid", "Paid", "Overdue", "Cancelled"];
pub const PAYMENT_METHODS: &[&str] = &["Mpesa", "Bank Transfer", "Cash"];
pub const EXPENSE_CATEGORIES: &[&str] = &[
    "Bandwidth",
    "Salaries",
    "Rent",
    "Utilities",
    "Equipment",
    "Transport",
    "Marketing",
    "Licenses & Fees",
    "Other",
];

pub(crate) fn internal(e: anyhow::Error) -> ApiError {
    ApiError::Internal(e)
}

/// The largest amount a `numeric(14,2)` column holds: 999,999,999,999.99.
pub(crate) fn money_max() -> Decimal {
    Decimal::new(99_999_999_999_999, 2)
}

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

fn id_of(doc: &Value) -> ApiResult<Uuid> {
    doc["id"]
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("document without id")))
}

fn money(v: Option<&Value>) -> Decimal {
    v.and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or_default()
}

fn date(v: Option<&Value>) -> Option<NaiveDate> {
    v.and_then(Value::as_str)
        .and_then(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())
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

// ---- subscribers ----------------------------------------------------------------

/// Subscribers. Created only through the custom `POST` (see `subscribers.rs`);
/// this table drives reads and `PATCH`.
pub fn subscribers() -> Collection {
    Collection::new(
        "billing",
        "subscribers",
        "subscribers",
        "Subscriber",
        vec![
            Field::new("firstName", "first_name", Kind::TEXT)
                .required()
                .write(ADMIN),
            Field::new("lastName", "last_name", Kind::TEXT)
                .required()
                .write(ADMIN),
            Field::new("accountNumber", "account_number", Kind::TEXT)
                .required()
                .system(),
            Field::new("mpesaNumber", "mpesa_number", Kind::Phone)
                .required()
                .write(FIN),
            Field::new("contactPhone", "contact_phone", Kind::Phone).write(ADMIN),
            Field::new("email", "email", Kind::Email).write(ADMIN),
            Field::new("status", "status", Kind::Select(SUBSCRIBER_STATUS))
                .required()
                .write(FIN),
            Field::new("servicePlan", "service_plan", Kind::Relation)
                .required()
                .write(ADMIN),
            Field::new(
                "billingCycle",
                "billing_cycle",
                Kind::Select(BILLING_CYCLES),
            )
            .required()
            .write(FIN),
            Field::new("nextDueDate", "next_due_date", Kind::Date)
                .required()
                .read(FIN)
                .write(FIN),
            Field::new(
                "billingAnchorDay",
                "billing_anchor_day",
                Kind::Int { min: 1, max: 31 },
            )
            .read(FIN)
            .system(),
            Field::new("accountBalance", "account_balance", Kind::Money)
                .read(FIN)
                .system(),
            Field::new("gracePeriodEndDate", "grace_period_end_date", Kind::Date)
                .read(FIN)
                .write(FIN),
            Field::new("trialEndDate", "trial_end_date", Kind::Date)
                .read(FIN)
                .write(FIN),
            Field::new("addressNotes", "address_notes", Kind::TEXT_AREA).write(ADMIN),
            Field::new("internalNotes", "internal_notes", Kind::RICH_TEXT).write(ADMIN),
            Field::new(
                "connectionType",
                "connection_type",
                Kind::Select(CONNECTION_TYPES),
            )
            .read(NET_READ)
            .system(),
            Field::new("assignedIp", "assigned_ip", Kind::TEXT)
                .read(NET_READ)
                .system(),
            Field::new(
                "suspensionReason",
                "suspension_reason",
                Kind::Select(SUSPENSION_REASONS),
            )
            .read(FIN)
            .system(),
            Field::new("serviceLocation", "service_location", Kind::Relation).system(),
            Field::new("building", "building", Kind::Relation).system(),
            Field::new("lead", "lead_id", Kind::Relation).system(),
        ],
    )
    .access(SUB_READ, FIN, FIN, Roles::NONE)
    // Creating one also writes its first invoice: `subscribers::create`.
    .custom(Operation::Create)
    .off(
        Operation::Delete,
        "Subscribers are not deleted; set their status to Deactivated.",
    )
    .hooks(SubscriberHooks)
}

struct SubscriberHooks;

/// The end of the last period invoiced for a subscriber (Cancelled invoices
/// withdrew theirs), if any.
async fn last_invoiced_end(
    tx: &mut PgConnection,
    subscriber: Uuid,
) -> Result<Option<NaiveDate>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT max(period_end) FROM invoices WHERE subscriber_id = $1 AND status <> 'Cancelled'",
    )
    .bind(subscriber)
    .fetch_one(&mut *tx)
    .await
}

#[async_trait]
impl Hooks for SubscriberHooks {
    /// The daily-run lock before the subscriber's row, as payments take them: an
    /// edit of nextDueDate, trialEndDate, billingCycle or status waits for a
    /// running run instead of racing it (or deadlocking with it).
    async fn before_lock(&self, tx: &mut PgConnection, _op: Operation, _id: Uuid) -> ApiResult<()> {
        Ok(crate::daily::wait_for_run(tx).await?)
    }
    async fn before_change(&self, tx: &mut PgConnection, c: &mut Change<'_>) -> ApiResult<()> {
        let Some(existing) = c.existing else {
            return Err(ApiError::bad_request(
                "Subscribers are created through POST /api/billing/subscribers.",
            ));
        };
        let old = existing["status"].as_str().unwrap_or_default();
        if old == "Deactivated" {
            return Err(ApiError::conflict(
                "A deactivated subscriber cannot be changed.",
            ));
        }
        if c.changed("status") {
            let new = c.str("status").unwrap_or_default().to_string();
            let new = new.as_str();
            match (old, new) {
                ("Active", "Suspended") | ("Suspended", "Active") | (_, "Deactivated") => {}
                ("Pending Installation", "Active") => {
                    return Err(ApiError::conflict_field(
                        "status",
                        "A subscriber becomes Active when NOC reports the installation done.",
                    ))
                }
                _ => {
                    return Err(ApiError::conflict_field(
                        "status",
                        format!("A subscriber cannot go from {old} to {new}."),
                    ))
                }
            }
            if new != "Suspended" {
                c.data.insert("suspensionReason".into(), Value::Null);
            }
            if old == "Suspended" && new == "Active" && !c.data.contains_key("nextDueDate") {
                // Reactivated by hand: the next period starts no earlier than
                // today, unless an invoiced period still runs past today.
                let today = c.ctx.today();
                let id = id_of(existing)?;
                if date(c.value("nextDueDate")).is_some_and(|d| d < today)
                    && last_invoiced_end(tx, id)
                        .await?
                        .is_none_or(|end| end <= today)
                {
                    c.data
                        .insert("nextDueDate".into(), json!(today.to_string()));
                }
            }
        }
        if c.data.get("status").and_then(Value::as_str) == Some("Suspended") {
            // Staff suspending (or confirming a run's suspension): only staff lift it.
            c.data.insert("suspensionReason".into(), json!("Manual"));
        }
        if c.changed("servicePlan") {
            let plan = c.uuid("servicePlan").unwrap_or_default();
            let row: Option<(bool, bool)> =
                sqlx::query_as("SELECT plan_enabled, deleted FROM plans WHERE id = $1")
                    .bind(plan)
                    .fetch_optional(&mut *tx)
                    .await?;
            match row {
                None | Some((_, true)) => {
                    return Err(ApiError::field("servicePlan", "Unknown plan."))
                }
                Some((false, _)) => {
                    return Err(ApiError::conflict_field(
                        "servicePlan",
                        "This plan is disabled.",
                    ))
                }
                _ => {}
            }
        }
        if c.changed("nextDueDate") {
            if let Some(d) = date(c.value("nextDueDate")) {
                // Never back into time already invoiced: that period would be
                // invoiced twice.
                let id = id_of(existing)?;
                if let Some(end) = last_invoiced_end(tx, id).await? {
                    if d < end {
                        return Err(ApiError::field(
                            "nextDueDate",
                            format!(
                                "Must be on or after {end}, the end of the last invoiced period."
                            ),
                        ));
                    }
                }
                let taken: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM invoices WHERE subscriber_id = $1 AND period_start = $2)",
                )
                .bind(id)
                .bind(d)
                .fetch_one(&mut *tx)
                .await?;
                if taken {
                    return Err(ApiError::field(
                        "nextDueDate",
                        format!("A period starting on {d} was already invoiced (and cancelled); choose another day."),
                    ));
                }
                c.data.insert("billingAnchorDay".into(), json!(d.day()));
            }
        }
        Ok(())
    }

    async fn after_change(
        &self,
        tx: &mut PgConnection,
        ctx: &ServiceContext,
        p: &Principal,
        doc: &Value,
        previous: Option<&Value>,
    ) -> ApiResult<()> {
        let id = id_of(doc)?;
        let old = previous.and_then(|v| v["status"].as_str()).unwrap_or("");
        let new = doc["status"].as_str().unwrap_or("");
        let reason = format!("Changed by {}", p.label());
        ledger::publish_subscriber_change(tx, ctx, id, old, new, Some(reason))
            .await
            .map_err(internal)?;
        Ok(())
    }
}

// ---- invoices -------------------------------------------------------------------

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
                .immutable(),
            Field::new("amountDue", "amount_due", Kind::Money)
                .required()
                .system(),
            Field::new("amountPaid", "amount_paid", Kind::Money).system(),
            Field::new("dueDate", "due_date", Kind::Date).required(),
            Field::new("status", "status", Kind::Select(INVOICE_STATUS)).required(),
            Field::new("lineItems", "line_items", Kind::Json).required(),
            Field::new("periodStart", "period_start", Kind::Date).system(),
            Field::new("periodEnd", "period_end", Kind::Date).system(),
        ],
    )
    .access(FIN, FIN, FIN, FIN)
    .hooks(InvoiceHooks)
}

/// One line of an invoice.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LineItem {
    pub description: String,
    pub quantity: i64,
    pub price: Decimal,
}

impl LineItem {
    pub fn to_json(&self) -> Value {
        json!({"description": self.description, "quantity": self.quantity,
               "price": isp_platform::money::format(self.price)})
    }
}

/// Parses line items (`path` names the field in errors), returning them with
/// their total.
pub fn parse_line_items(v: &Value, path: &str, allow_empty: bool) -> ApiResult<Vec<LineItem>> {
    let Some(arr) = v.as_array() else {
        return Err(ApiError::field(
            path,
            "Must be a list of {description, quantity, price}.",
        ));
    };
    if arr.is_empty() && !allow_empty {
        return Err(ApiError::field(path, "At least one line item is required."));
    }
    if arr.len() > 100 {
        return Err(ApiError::field(path, "At most 100 line items."));
    }
    let mut errors = vec![];
    let mut out = vec![];
    for (i, item) in arr.iter().enumerate() {
        let p = |f: &str| format!("{path}.{i}.{f}");
        let Some(obj) = item.as_object() else {
            errors.push(FieldError::new(format!("{path}.{i}"), "Must be an object."));
            continue;
        };
        if let Some(k) = obj
            .keys()
            .find(|k| !matches!(k.as_str(), "description" | "quantity" | "price" | "id"))
        {
            errors.push(FieldError::new(p(k), format!("Unknown field {k:?}.")));
        }
        let sent = obj.get("description").and_then(Value::as_str).unwrap_or("");
        let description = sent.trim();
        // The bound is on what is sent (the documents' maxLength), before trimming.
        if description.is_empty() || sent.chars().count() > 200 {
            errors.push(FieldError::new(
                p("description"),
                "A description of 1 to 200 characters is required.",
            ));
        }
        let quantity = match obj.get("quantity") {
            // 2.0 is a whole number too (JSON Schema's `integer` says so).
            Some(Value::Number(n)) => n
                .as_i64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && f.abs() < 1e6)
                        .map(|f| f as i64)
                })
                .filter(|q| (1..=10_000).contains(q)),
            _ => None,
        };
        if quantity.is_none() {
            errors.push(FieldError::new(
                p("quantity"),
                "Must be a whole number from 1 to 10000.",
            ));
        }
        let price = match obj.get("price") {
            None | Some(Value::Null) => Err("price is required.".to_string()),
            Some(v) => isp_platform::money::parse_json(v).and_then(|d| {
                if d < Decimal::ZERO {
                    Err("The price cannot be negative.".into())
                } else if d > Decimal::from(10_000_000) {
                    Err("The price is too large.".into())
                } else {
                    Ok(d)
                }
            }),
        };
        match (&price, quantity) {
            (Ok(price), Some(quantity)) if errors.is_empty() => out.push(LineItem {
                description: description.to_string(),
                quantity,
                price: *price,
            }),
            (Err(m), _) => errors.push(FieldError::new(p("price"), m.clone())),
            _ => {}
        }
    }
    if errors.is_empty() && total(&out) > money_max() {
        errors.push(FieldError::new(
            path,
            format!(
                "The total of the line items is too large (at most {}).",
                money_max()
            ),
        ));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ApiError::BadRequest(errors))
    }
}

pub fn total(items: &[LineItem]) -> Decimal {
    items
        .iter()
        .map(|i| i.price * Decimal::from(i.quantity))
        .sum()
}

/// Whether an invoice in `status` counts against the subscriber's balance.
fn charged(status: &str) -> bool {
    matches!(status, "Unpaid" | "Overdue" | "Paid")
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
        let old = c
            .existing
            .and_then(|e| e["status"].as_str())
            .map(str::to_string);
        if c.create {
            let status = c.str("status").unwrap_or("Unpaid").to_string();
            if !matches!(status.as_str(), "Draft" | "Unpaid") {
                return Err(ApiError::field(
                    "status",
                    "A new invoice is Draft or Unpaid.",
                ));
            }
            c.data.insert("status".into(), json!(status));
            let sub = c.uuid("subscriber").unwrap_or_default();
            let exists: Option<String> =
                sqlx::query_scalar("SELECT status FROM subscribers WHERE id = $1 FOR UPDATE")
                    .bind(sub)
                    .fetch_optional(&mut *tx)
                    .await?;
            match exists.as_deref() {
                None => return Err(ApiError::field("subscriber", "Unknown subscriber.")),
                Some("Deactivated") => {
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
            match old.as_deref() {
                Some("Paid") => return Err(ApiError::conflict("A paid invoice cannot be edited.")),
                Some("Cancelled") => {
                    return Err(ApiError::conflict("A cancelled invoice cannot be edited."))
                }
                _ => {}
            }
            if c.changed("status") {
                let old = old.as_deref().unwrap_or_default();
                let new = c.str("status").unwrap_or_default().to_string();
                let ok = matches!(
                    (old, new.as_str()),
                    ("Draft", "Unpaid") | ("Draft" | "Unpaid" | "Overdue", "Cancelled")
                );
                if !ok {
                    let why = match new.as_str() {
                        "Paid" => "An invoice becomes Paid when payments cover it.".to_string(),
                        "Overdue" => "The daily run marks invoices Overdue.".to_string(),
                        _ => format!("An invoice cannot go from {old} to {new}."),
                    };
                    return Err(ApiError::conflict_field("status", why));
                }
                if new == "Cancelled" {
                    let id = c.existing.map(id_of).transpose()?.unwrap_or_default();
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
            if amount < money(c.value("amountPaid")) {
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
        let status = c.str("status").unwrap_or_default().to_string();
        if (c.data.contains_key("amountDue") || c.changed("status"))
            && matches!(status.as_str(), "Unpaid" | "Overdue")
        {
            let due = money(c.value("amountDue"));
            let mut paid = money(c.value("amountPaid"));
            // Newly charged, or charged more: credit in the balance settles it, as
            // the daily run does with the invoices it creates.
            let charged_before = match c.existing {
                Some(e) if charged(e["status"].as_str().unwrap_or_default()) => {
                    money(e.get("amountDue"))
                }
                _ => Decimal::ZERO,
            };
            if due > charged_before && paid < due {
                let balance: Decimal =
                    sqlx::query_scalar("SELECT account_balance FROM subscribers WHERE id = $1")
                        .bind(c.uuid("subscriber").unwrap_or_default())
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
                c.data.insert("status".into(), json!("Paid"));
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
        let before = previous
            .filter(|p| charged(p["status"].as_str().unwrap_or_default()))
            .map(|p| money(p.get("amountDue")))
            .unwrap_or_default();
        let after = if charged(doc["status"].as_str().unwrap_or_default()) {
            money(doc.get("amountDue"))
        } else {
            Decimal::ZERO
        };
        let sub = doc["subscriber"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .unwrap_or_default();
        if before != after {
            sqlx::query(
                "UPDATE subscribers SET account_balance = account_balance - $2 WHERE id = $1",
            )
            .bind(sub)
            .bind(after - before)
            .execute(&mut *tx)
            .await
            .map_err(|e| overflow_is_bad_input("lineItems", e.into()))?;
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
        let was = previous.and_then(|p| p["status"].as_str()).unwrap_or("");
        let now = doc["status"].as_str().unwrap_or("");
        if was != now && matches!(now, "Paid" | "Cancelled") {
            let mut moved = false;
            if let Some(end) = date(doc.get("periodEnd")) {
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
        if doc["status"] != "Draft" {
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

// ---- payments -------------------------------------------------------------------

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
                .immutable(),
            Field::new("subscriber", "subscriber_id", Kind::Relation).system(),
            Field::new("amountPaid", "amount_paid", Kind::Money)
                .required()
                .immutable()
                .schema(isp_platform::openapi::positive_money()),
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
        let amount = money(c.data.get("amountPaid"));
        if c.data.contains_key("amountPaid") && amount <= Decimal::ZERO {
            errors.push(FieldError::new("amountPaid", "Must be more than 0 KES."));
        }
        if amount > money_max() {
            errors.push(FieldError::new(
                "amountPaid",
                format!("At most {} KES.", money_max()),
            ));
        }
        if let Some(d) = date(c.data.get("paymentDate")) {
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
        let status: String =
            sqlx::query_scalar("SELECT status FROM invoices WHERE id = $1 FOR UPDATE")
                .bind(invoice)
                .fetch_one(&mut *tx)
                .await?;
        if matches!(status.as_str(), "Draft" | "Cancelled") {
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

// ---- expenses -------------------------------------------------------------------

pub fn expenses(store: Arc<dyn Storage>) -> Collection {
    Collection::new(
        "billing",
        "expenses",
        "expenses",
        "Expense",
        vec![
            Field::new("expenseDate", "expense_date", Kind::Date).required(),
            Field::new("category", "category", Kind::Select(EXPENSE_CATEGORIES)).required(),
            Field::new("vendor", "vendor", Kind::TEXT),
            Field::new("amount", "amount", Kind::Money)
                .required()
                .schema(isp_platform::openapi::positive_money()),
            Field::new("description", "description", Kind::TEXT_AREA),
            Field::new("receipt", "receipt", Kind::Json).system(),
        ],
    )
    .access(FIN, FIN, FIN, FIN)
    .hooks(ExpenseHooks { store })
}

struct ExpenseHooks {
    store: Arc<dyn Storage>,
}

#[async_trait]
impl Hooks for ExpenseHooks {
    async fn before_change(&self, _tx: &mut PgConnection, c: &mut Change<'_>) -> ApiResult<()> {
        if c.data.contains_key("amount") && money(c.data.get("amount")) <= Decimal::ZERO {
            return Err(ApiError::field("amount", "Must be more than 0 KES."));
        }
        if money(c.data.get("amount")) > money_max() {
            return Err(ApiError::field(
                "amount",
                format!("At most {} KES.", money_max()),
            ));
        }
        Ok(())
    }

    /// A deleted expense's receipts (every file under its folder) go only once the
    /// deletion has committed: a rolled-back delete keeps row and file together.
    async fn after_commit(&self, op: Operation, doc: &Value) {
        if op != Operation::Delete {
            return;
        }
        let Some(id) = doc["id"].as_str() else { return };
        if let Err(e) = self.store.delete_prefix(&format!("expenses/{id}")).await {
            tracing::warn!(error = ?e, expense = id, "could not delete a deleted expense's receipt files");
        }
    }
}

// ---- daily runs -----------------------------------------------------------------

/// The daily run's log: read-only, written by the run itself.
pub fn daily_runs() -> Collection {
    const INT: Kind = Kind::Int {
        min: 0,
        max: i32::MAX as i64,
    };
    Collection::new(
        "billing",
        "dailyRuns",
        "daily_runs",
        "Daily run",
        vec![
            Field::new("runDate", "run_date", Kind::Date).system(),
            Field::new("trigger", "trigger", Kind::Select(&["Scheduler", "Manual"])).system(),
            Field::new("invoicesCreated", "invoices_created", INT).system(),
            Field::new("invoicesOverdue", "invoices_overdue", INT).system(),
            Field::new("subscribersSuspended", "subscribers_suspended", INT).system(),
            Field::new("skippedUnknownPlan", "skipped_unknown_plan", INT).system(),
            Field::new("durationMs", "duration_ms", INT).system(),
            Field::new("startedAt", "started_at", Kind::Timestamp).system(),
        ],
    )
    .access(FIN, Roles::NONE, Roles::NONE, Roles::NONE)
    .action("run", ADMIN)
}
