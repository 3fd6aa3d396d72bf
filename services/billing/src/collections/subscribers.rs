//! Subscribers: read and edited here (created by the custom `POST` in
//! `crate::subscribers`); edits that move dates or money respect what was invoiced.

use async_trait::async_trait;
use chrono::{Datelike, NaiveDate};
use isp_events::options::{SubscriberStatus, SuspensionReason};
use isp_platform::auth::{Principal, Roles};
use isp_platform::collection::{stored, Change, Collection, Field, Hooks, Kind, Operation};
use isp_platform::{ApiError, ApiResult, ServiceContext};
use serde_json::{json, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{
    date, internal, ADMIN, BILLING_CYCLES, CONNECTION_TYPES, FIN, NET_READ, SUBSCRIBER_STATUS,
    SUB_READ, SUSPENSION_REASONS,
};
use crate::ledger;

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
        let old: SubscriberStatus = stored::option(existing, "status")?;
        if old == SubscriberStatus::Deactivated {
            return Err(ApiError::conflict(
                "A deactivated subscriber cannot be changed.",
            ));
        }
        if c.changed("status") {
            use SubscriberStatus::*;
            let new: SubscriberStatus = c
                .option("status")?
                .ok_or_else(|| internal(anyhow::anyhow!("a status change without a status")))?;
            match (old, new) {
                (Active, Suspended) | (Suspended, Active) | (_, Deactivated) => {}
                (PendingInstallation, Active) => {
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
            if new != Suspended {
                c.data.insert("suspensionReason".into(), Value::Null);
            }
            if old == Suspended && new == Active && !c.data.contains_key("nextDueDate") {
                // Reactivated by hand: the next period starts no earlier than
                // today, unless an invoiced period still runs past today.
                let today = c.ctx.today();
                let id = stored::uuid(existing, "id")?;
                if date(c.value("nextDueDate"), "nextDueDate")?.is_some_and(|d| d < today)
                    && last_invoiced_end(tx, id)
                        .await?
                        .is_none_or(|end| end <= today)
                {
                    c.data
                        .insert("nextDueDate".into(), json!(today.to_string()));
                }
            }
        }
        if c.data.get("status") == Some(&json!(SubscriberStatus::Suspended)) {
            // Staff suspending (or confirming a run's suspension): only staff lift it.
            c.data.insert(
                "suspensionReason".into(),
                json!(SuspensionReason::Manual.as_str()),
            );
        }
        if c.changed("servicePlan") {
            let plan = c.required_uuid("servicePlan")?;
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
            if let Some(d) = date(c.value("nextDueDate"), "nextDueDate")? {
                // Never back into time already invoiced: that period would be
                // invoiced twice.
                let id = stored::uuid(existing, "id")?;
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
        let id = stored::uuid(doc, "id")?;
        let old = previous.map(|v| stored::option(v, "status")).transpose()?;
        let new = stored::option(doc, "status")?;
        let reason = format!("Changed by {}", p.label());
        ledger::publish_subscriber_change(tx, ctx, id, old, new, Some(reason))
            .await
            .map_err(internal)?;
        Ok(())
    }
}
