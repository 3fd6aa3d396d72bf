//! The three collections and their rules.

use async_trait::async_trait;
use isp_events::outbox::enqueue;
use isp_events::payloads::*;
use isp_platform::auth::{Principal, Role, Roles};
use isp_platform::collection::{Change, Collection, Field, Hooks, Kind};
use isp_platform::{ApiError, ApiResult, FieldError, ServiceContext};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use sqlx::PgConnection;
use uuid::Uuid;

const ADMIN: Roles = Roles::of(&[Role::Admin]);
const SALES: Roles = Roles::of(&[Role::Admin, Role::SalesAgent]);

pub const STAFF_STATUS: &[&str] = isp_events::options::StaffStatus::ALL;
pub const BILLING_CYCLES: &[&str] = isp_events::options::BillingCycle::ALL;
pub const IP_ASSIGNMENT: &[&str] = &["Dynamic", "Static-Public"];
pub const PARTNER_STATUS: &[&str] = isp_events::options::PartnerStatus::ALL;

fn snapshot<T: serde::de::DeserializeOwned>(doc: &Value) -> ApiResult<T> {
    serde_json::from_value(doc.clone())
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("snapshot: {e}")))
}

fn internal(e: anyhow::Error) -> ApiError {
    ApiError::Internal(e)
}

// ---- staff ----------------------------------------------------------------------

/// Only Admin manages staff (docs/contract.md#roles); everyone reads themselves through `/me`.
pub fn staff() -> Collection {
    Collection::new(
        "core",
        "staff",
        "staff",
        "Staff member",
        vec![
            Field::new("fullName", "full_name", Kind::TEXT).required(),
            Field::new("email", "email", Kind::Email).required(),
            Field::new("password", "password_hash", Kind::Password).required(),
            Field::new("role", "role", Kind::Select(Role::OPTIONS)).required(),
            Field::new("status", "status", Kind::Select(STAFF_STATUS))
                .required()
                .default_value(json!("Active")),
            Field::new("phoneNumber", "phone_number", Kind::Phone),
            Field::new("lockUntil", "lock_until", Kind::Timestamp).system(),
        ],
    )
    .access(ADMIN, ADMIN, ADMIN, ADMIN)
    .action("unlock", ADMIN)
    .hooks(StaffHooks)
}

struct StaffHooks;

async fn other_active_admins(tx: &mut PgConnection, except: Uuid) -> ApiResult<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM staff WHERE role = 'Admin' AND status = 'Active' AND id <> $1",
    )
    .bind(except)
    .fetch_one(&mut *tx)
    .await?)
}

#[async_trait]
impl Hooks for StaffHooks {
    async fn before_change(&self, tx: &mut PgConnection, c: &mut Change<'_>) -> ApiResult<()> {
        if let Some(Value::String(pw)) = c.data.get("password").cloned() {
            let hash = isp_platform::auth::password::hash_async(pw)
                .await
                .map_err(internal)?;
            c.data.insert("password".into(), json!(hash));
            if let Some(existing) = c.existing {
                // A new password ends every session the member had.
                bump_token_version(tx, existing).await?;
            }
        }
        if let Some(existing) = c.existing {
            let id = isp_platform::collection::stored::uuid(existing, "id")?;
            let was_active_admin = existing["role"] == "Admin"
                && existing["status"] == isp_events::options::StaffStatus::Active;
            let stays = c.str("role") == Some("Admin")
                && c.str("status") == isp_events::options::StaffStatus::Active;
            if was_active_admin && !stays {
                // Sorting rows under FOR UPDATE is not needed: one admin change at a
                // time is enough for this rare path, so take a transaction lock.
                sqlx::query("SELECT pg_advisory_xact_lock(7340101)")
                    .execute(&mut *tx)
                    .await?;
                if other_active_admins(tx, id).await? == 0 {
                    return Err(ApiError::conflict(
                        "The last active Admin cannot be demoted or deactivated.",
                    ));
                }
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
        if let Some(prev) = previous {
            // A role or status change ends every session the member had.
            if prev["role"] != doc["role"] || prev["status"] != doc["status"] {
                bump_token_version(tx, doc).await?;
            }
        }
        publish_staff(tx, ctx, doc, previous.is_none()).await
    }

    async fn before_delete(
        &self,
        tx: &mut PgConnection,
        p: &Principal,
        doc: &Value,
    ) -> ApiResult<()> {
        let id = isp_platform::collection::stored::uuid(doc, "id")?;
        if p.staff_id() == Some(id) {
            return Err(ApiError::conflict("You cannot delete your own account."));
        }
        if doc["role"] == "Admin" && doc["status"] == isp_events::options::StaffStatus::Active {
            sqlx::query("SELECT pg_advisory_xact_lock(7340101)")
                .execute(&mut *tx)
                .await?;
            if other_active_admins(tx, id).await? == 0 {
                return Err(ApiError::conflict(
                    "The last active Admin cannot be deleted.",
                ));
            }
        }
        Ok(())
    }

    async fn after_delete(
        &self,
        tx: &mut PgConnection,
        ctx: &ServiceContext,
        doc: &Value,
    ) -> ApiResult<()> {
        // Other services see the member as Inactive from now on.
        let mut snap: StaffSnapshot = snapshot(doc)?;
        snap.status = isp_events::options::StaffStatus::Inactive;
        snap.updated_at = chrono::Utc::now();
        enqueue(tx, ctx.name, &StaffUpdated(snap))
            .await
            .map_err(internal)?;
        Ok(())
    }
}

/// `staff.created` / `staff.updated` with the member's current token version, so
/// every service's `staff_access` projection refuses older tokens.
pub(crate) async fn publish_staff(
    tx: &mut PgConnection,
    ctx: &ServiceContext,
    doc: &Value,
    created: bool,
) -> ApiResult<()> {
    let mut snap: StaffSnapshot = snapshot(doc)?;
    snap.token_version = sqlx::query_scalar("SELECT token_version FROM staff WHERE id = $1")
        .bind(snap.id)
        .fetch_one(&mut *tx)
        .await?;
    if created {
        enqueue(tx, ctx.name, &StaffCreated(snap)).await
    } else {
        enqueue(tx, ctx.name, &StaffUpdated(snap)).await
    }
    .map_err(internal)?;
    Ok(())
}

pub(crate) async fn bump_token_version(tx: &mut PgConnection, doc: &Value) -> ApiResult<()> {
    let id = isp_platform::collection::stored::uuid(doc, "id")?;
    sqlx::query("UPDATE staff SET token_version = token_version + 1 WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

// ---- plans ----------------------------------------------------------------------

/// Any staff member may read plans; only Admin changes them.
pub fn plans() -> Collection {
    Collection::new(
        "core",
        "plans",
        "plans",
        "Plan",
        vec![
            Field::new("name", "name", Kind::TEXT).required(),
            Field::new(
                "downloadSpeed",
                "download_speed",
                Kind::Int {
                    min: 1,
                    max: 100_000,
                },
            )
            .required(),
            Field::new(
                "uploadSpeed",
                "upload_speed",
                Kind::Int {
                    min: 1,
                    max: 100_000,
                },
            )
            .required(),
            Field::new("price", "price", Kind::Money)
                .required()
                .positive_money(),
            Field::new(
                "billingCycle",
                "billing_cycle",
                Kind::Select(BILLING_CYCLES),
            )
            .required(),
            Field::new("notes", "notes", Kind::TEXT_AREA),
            Field::new("planEnabled", "plan_enabled", Kind::Bool).default_value(json!(true)),
            Field::new("activeForNewSignups", "active_for_new_signups", Kind::Bool)
                .default_value(json!(true)),
            Field::new(
                "ipAssignmentType",
                "ip_assignment_type",
                Kind::Select(IP_ASSIGNMENT),
            )
            .required()
            .default_value(json!("Dynamic")),
            Field::new("staticIpPool", "static_ip_pool", Kind::Relation),
        ],
    )
    .access(Roles::ALL, ADMIN, ADMIN, ADMIN)
    .hooks(PlanHooks)
    .publishes(PlanCreated, PlanUpdated, PlanDeleted)
}

struct PlanHooks;

#[async_trait]
impl Hooks for PlanHooks {
    async fn before_change(&self, tx: &mut PgConnection, c: &mut Change<'_>) -> ApiResult<()> {
        let mut errors = vec![];
        match c.str("ipAssignmentType") {
            Some("Static-Public") => {
                if c.value("staticIpPool").is_none() {
                    errors.push(FieldError::new(
                        "staticIpPool",
                        "A Static-Public plan needs a static IP pool.",
                    ));
                } else if c.changed("staticIpPool") {
                    let pool = c.required_uuid("staticIpPool")?;
                    let known: bool = sqlx::query_scalar(
                        "SELECT EXISTS (SELECT 1 FROM noc_subnets WHERE id = $1 AND NOT deleted)",
                    )
                    .bind(pool)
                    .fetch_one(&mut *tx)
                    .await?;
                    if !known {
                        errors.push(FieldError::new(
                            "staticIpPool",
                            format!("Unknown IP subnet {pool}: create it in the NOC's IPAM first (it reaches Core within seconds)."),
                        ));
                    }
                }
            }
            _ => {
                if c.data.get("staticIpPool").is_some_and(|v| !v.is_null()) {
                    errors.push(FieldError::new(
                        "staticIpPool",
                        "Only Static-Public plans have a static IP pool.",
                    ));
                } else if c.existing.is_some_and(|e| !e["staticIpPool"].is_null()) {
                    // Switching a plan to Dynamic releases its pool.
                    c.data.insert("staticIpPool".into(), Value::Null);
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::BadRequest(errors))
        }
    }
}

// ---- partners -------------------------------------------------------------------

/// Sales Agents and Admin manage partners. `referralCount` is only ever changed by
/// the `lead.converted` consumer.
pub fn partners() -> Collection {
    Collection::new(
        "core",
        "partners",
        "partners",
        "Partner",
        vec![
            Field::new("fullName", "full_name", Kind::TEXT).required(),
            Field::new("phoneNumber", "phone_number", Kind::Phone).required(),
            Field::new("mpesaNumber", "mpesa_number", Kind::Phone).required(),
            Field::new("status", "status", Kind::Select(PARTNER_STATUS)).required(),
            Field::new("buildings", "buildings", Kind::Relations),
            Field::new("commissionRate", "commission_rate", Kind::Money)
                .default_value(json!(1500))
                .non_negative_money(),
            Field::new(
                "referralCount",
                "referral_count",
                Kind::Int {
                    min: 0,
                    max: i32::MAX as i64,
                },
            )
            .system()
            .default_value(json!(0)),
            Field::new("perks", "perks", Kind::Bool).default_value(json!(false)),
        ],
    )
    .access(SALES, SALES, SALES, SALES)
    .hooks(PartnerHooks)
    .publishes(PartnerCreated, PartnerUpdated, PartnerDeleted)
}

struct PartnerHooks;

#[async_trait]
impl Hooks for PartnerHooks {
    async fn before_change(&self, tx: &mut PgConnection, c: &mut Change<'_>) -> ApiResult<()> {
        if c.data.get("buildings").is_some_and(Value::is_null) {
            c.data.insert("buildings".into(), json!([]));
        }
        if c.data.get("commissionRate").is_some_and(Value::is_null) {
            c.data.remove("commissionRate");
        }
        if let Some(rate) = c.data.get("commissionRate").and_then(Value::as_str) {
            if rate.parse::<Decimal>().map_or(true, |d| d < Decimal::ZERO) {
                return Err(ApiError::field(
                    "commissionRate",
                    "The commission cannot be negative.",
                ));
            }
        }
        if let Some(Value::Array(ids)) = c.data.get("buildings") {
            let ids: Vec<Uuid> = ids
                .iter()
                .filter_map(|v| v.as_str().and_then(|s| Uuid::parse_str(s).ok()))
                .collect();
            if !ids.is_empty() {
                let known: Vec<Uuid> = sqlx::query_scalar(
                    "SELECT id FROM crm_buildings WHERE id = ANY($1) AND NOT deleted",
                )
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await?;
                let unknown: Vec<String> = ids
                    .iter()
                    .filter(|i| !known.contains(i))
                    .map(Uuid::to_string)
                    .collect();
                if !unknown.is_empty() {
                    return Err(ApiError::field(
                        "buildings",
                        format!("Unknown building(s): {}.", unknown.join(", ")),
                    ));
                }
            }
        }
        Ok(())
    }
}
