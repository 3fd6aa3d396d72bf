//! buildings, buildingUnits and leads: fields, access and the rules that span fields.

use async_trait::async_trait;
use isp_events::options::{BuildingStatus, LeadSource, LeadStatus};
use isp_events::payloads::*;
use isp_platform::auth::{Principal, Role, Roles};
use isp_platform::collection::Hooks;
use isp_platform::collection::{publish_doc, stored, Change, Collection, Field, Kind};
use isp_platform::{ApiError, ApiResult, FieldError, ServiceContext};
use serde_json::{json, Value};
use sqlx::PgConnection;
use uuid::Uuid;

/// docs/contract.md#roles: Sales Agents have CRUD on buildings and leads and convert leads; Admin
/// has everything. Every other role (Billing Manager, Network Engineer,
/// Technician, Support Agent) works in another module and has no CRM access: the
/// spec gives Support "Tickets and Messages" and subscriber data, not the pipeline.
pub const SALES: Roles = Roles::of(&[Role::Admin, Role::SalesAgent]);

pub const BUILDING_STATUS: &[&str] = BuildingStatus::ALL;
pub const UNIT_STATUS: &[&str] = &["Vacant", "Occupied", "Lead", "Subscriber"];
pub const LEAD_STATUS: &[&str] = LeadStatus::ALL;
pub const LEAD_SOURCES: &[&str] = LeadSource::ALL;
pub const PARTNER_REFERRAL: &str = LeadSource::PartnerReferral.as_str();

pub(crate) fn internal(e: anyhow::Error) -> ApiError {
    ApiError::Internal(e)
}

pub(crate) fn doc_id(doc: &Value, field: &str) -> Option<Uuid> {
    doc[field].as_str().and_then(|s| Uuid::parse_str(s).ok())
}

// ---- buildings ------------------------------------------------------------------

pub fn buildings() -> Collection {
    Collection::new(
        "crm",
        "buildings",
        "buildings",
        "Building",
        vec![
            Field::new("name", "name", Kind::TEXT).required(),
            Field::new("address", "address", Kind::TEXT).required(),
            Field::new("status", "status", Kind::Select(BUILDING_STATUS)).required(),
            Field::new("partner", "partner", Kind::Relation),
            Field::new("location", "location", Kind::Point),
            // A view of NOC's resources located here; only the resource consumer writes it.
            Field::new("equipment", "equipment", Kind::Relations).system(),
        ],
    )
    .access(SALES, SALES, SALES, SALES)
    .hooks(BuildingHooks)
    .publishes(BuildingCreated, BuildingUpdated, BuildingDeleted)
}

struct BuildingHooks;

/// Why a partner id is not acceptable, if it is not (from the partners projection).
async fn partner_problem(
    tx: &mut PgConnection,
    id: Uuid,
    must_be_active: bool,
) -> ApiResult<Option<String>> {
    let status: Option<isp_events::options::PartnerStatus> =
        sqlx::query_scalar("SELECT status FROM partners WHERE id = $1 AND NOT deleted")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    Ok(match status {
        None => Some(format!("Unknown partner {id}.")),
        Some(s) if must_be_active && s != isp_events::options::PartnerStatus::Active => Some(
            format!("The referring partner must be Active (this one is {s})."),
        ),
        Some(_) => None,
    })
}

#[async_trait]
impl Hooks for BuildingHooks {
    async fn before_change(&self, tx: &mut PgConnection, c: &mut Change<'_>) -> ApiResult<()> {
        if c.changed("partner") {
            if let Some(p) = c.uuid("partner") {
                // Any known partner, Prospect included: the caretaker is often
                // still being signed up while the building is negotiated. Only
                // referrals (leads.referredBy) need an Active partner.
                if let Some(msg) = partner_problem(tx, p, false).await? {
                    return Err(ApiError::field("partner", msg));
                }
            }
        }
        Ok(())
    }
}

// ---- buildingUnits --------------------------------------------------------------

pub fn building_units() -> Collection {
    Collection::new(
        "crm",
        "buildingUnits",
        "building_units",
        "Building unit",
        vec![
            Field::new("unitNumber", "unit_number", Kind::TEXT).required(),
            Field::new("building", "building", Kind::Relation).required(),
            Field::new("status", "status", Kind::Select(UNIT_STATUS)).required(),
            Field::new("currentProvider", "current_provider", Kind::TEXT),
            Field::new(
                "competitorPaymentDate",
                "competitor_payment_date",
                Kind::Date,
            ),
            Field::new("currentIssues", "current_issues", Kind::TEXT_AREA),
        ],
    )
    .access(SALES, SALES, SALES, SALES)
    .hooks(UnitHooks)
}

struct UnitHooks;

#[async_trait]
impl Hooks for UnitHooks {
    async fn before_change(&self, tx: &mut PgConnection, c: &mut Change<'_>) -> ApiResult<()> {
        // The foreign key would refuse it too; this names the problem plainly.
        if c.changed("building") {
            if let Some(b) = c.uuid("building") {
                let exists: bool =
                    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM buildings WHERE id = $1)")
                        .bind(b)
                        .fetch_one(&mut *tx)
                        .await?;
                if !exists {
                    return Err(ApiError::field(
                        "building",
                        format!("Unknown building {b}."),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The unit status follows the pipeline, but only forwards and only from the
/// states nobody chose on purpose for this lead:
///
/// - a new lead on a unit (or a lead moved to a unit, or a Lost lead reopened)
///   turns a `Vacant` or `Occupied` unit into `Lead`; a unit already `Lead` or
///   `Subscriber` is left alone (a second prospect in a subscribed flat does not
///   pull it back from `Subscriber`);
/// - a conversion turns the unit into `Subscriber` (see `leads::convert`);
/// - nothing else changes a unit automatically: a lead marked Lost, or any later
///   edit of a lead, leaves the unit as it is, so a deliberate staff edit (say,
///   `Occupied` after the prospect moved out) is never overwritten.
pub(crate) async fn mark_unit_lead(tx: &mut PgConnection, unit: Uuid) -> ApiResult<()> {
    sqlx::query(
        "UPDATE building_units SET status = 'Lead', updated_at = now()
         WHERE id = $1 AND status IN ('Vacant', 'Occupied')",
    )
    .bind(unit)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub(crate) async fn mark_unit_subscriber(tx: &mut PgConnection, unit: Uuid) -> ApiResult<()> {
    sqlx::query(
        "UPDATE building_units SET status = 'Subscriber', updated_at = now()
         WHERE id = $1 AND status <> 'Subscriber'",
    )
    .bind(unit)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

// ---- leads ----------------------------------------------------------------------

pub fn leads() -> Collection {
    Collection::new(
        "crm",
        "leads",
        "leads",
        "Lead",
        vec![
            Field::new("status", "status", Kind::Select(LEAD_STATUS))
                .required()
                .default_value(json!("New")),
            Field::new("leadSource", "lead_source", Kind::Select(LEAD_SOURCES)).required(),
            Field::new("referredBy", "referred_by", Kind::Relation),
            Field::new("subscriberName", "subscriber_name", Kind::TEXT).required(),
            Field::new("subscriberPhone", "subscriber_phone", Kind::Phone).required(),
            Field::new("serviceLocation", "service_location", Kind::Relation).required(),
            Field::new("notes", "notes", Kind::RICH_TEXT),
            // Set only by the conversion.
            Field::new("subscriber", "subscriber", Kind::Relation).system(),
            Field::new("convertedAt", "converted_at", Kind::Timestamp).system(),
        ],
    )
    .access(SALES, SALES, SALES, SALES)
    .idempotent_create()
    .action("convert", SALES)
    .hooks(LeadHooks)
}

struct LeadHooks;

/// Position of an open status in the pipeline.
fn rank(status: LeadStatus) -> Option<u8> {
    match status {
        LeadStatus::New => Some(0),
        LeadStatus::Contacted => Some(1),
        LeadStatus::SiteSurvey => Some(2),
        LeadStatus::Converted | LeadStatus::Lost => None,
    }
}

/// The lead pipeline: New -> Contacted -> Site Survey -> Converted | Lost.
///
/// - Forward moves may skip stages (New -> Site Survey): an agent who surveys the
///   flat on the first visit should not click through Contacted.
/// - Backward moves between open stages are refused: the status records how far
///   the sale got.
/// - Any open lead may be marked Lost, and a Lost lead may be reopened to any open
///   stage (the prospect calls back): reopening is a deliberate second step, and
///   reusing the lead keeps one lead per prospect and unit.
/// - Converted is reached only through `POST /api/crm/leads/{id}/convert`, which
///   creates the subscriber in Billing, and is final.
pub fn transition_allowed(from: LeadStatus, to: LeadStatus) -> bool {
    use LeadStatus::*;
    if from == to {
        return true;
    }
    match (from, to) {
        (Converted, _) | (_, Converted) => false,
        (_, Lost) | (Lost, _) => true,
        (f, t) => matches!((rank(f), rank(t)), (Some(a), Some(b)) if b > a),
    }
}

#[async_trait]
impl Hooks for LeadHooks {
    async fn before_change(&self, tx: &mut PgConnection, c: &mut Change<'_>) -> ApiResult<()> {
        let old_status: Option<LeadStatus> = c
            .existing
            .map(|e| stored::option(e, "status"))
            .transpose()?;
        if old_status == Some(LeadStatus::Converted) {
            // The subscriber exists and the referral was counted: what the
            // conversion was based on stays as it was. Notes may still be added.
            for f in ["status", "leadSource", "referredBy", "serviceLocation"] {
                if c.changed(f) {
                    return Err(ApiError::conflict_field(
                        f,
                        format!("The lead is Converted; its {f} can no longer change."),
                    ));
                }
            }
            return Ok(());
        }
        if c.changed("status") {
            let to: LeadStatus = c
                .option("status")?
                .ok_or_else(|| internal(anyhow::anyhow!("a status change without a status")))?;
            if to == LeadStatus::Converted {
                return Err(ApiError::conflict_field(
                    "status",
                    "A lead is converted with POST /api/crm/leads/{id}/convert (plan, billing cycle, one-off charges), which creates the subscriber in Billing; its status cannot be set to Converted directly.",
                ));
            }
            if let Some(from) = old_status {
                if !transition_allowed(from, to) {
                    return Err(ApiError::conflict_field(
                        "status",
                        format!("A lead cannot move back from {from} to {to}: it moves forward New -> Contacted -> Site Survey, or is marked Lost (and may be reopened from Lost)."),
                    ));
                }
            }
        }

        let mut errors = vec![];
        let source = c.str("leadSource").map(str::to_owned);
        if source.as_deref() == Some(PARTNER_REFERRAL) {
            match c.uuid("referredBy") {
                None => errors.push(FieldError::new(
                    "referredBy",
                    "referredBy (the referring partner) is required when leadSource is Partner Referral.",
                )),
                // Checked when it is set, not on every later edit: a partner who
                // became Inactive since does not lock their old leads.
                Some(p) if c.changed("referredBy") || c.changed("leadSource") => {
                    if let Some(msg) = partner_problem(tx, p, true).await? {
                        errors.push(FieldError::new("referredBy", msg));
                    }
                }
                Some(_) => {}
            }
        } else if c.data.get("referredBy").is_some_and(|v| !v.is_null()) {
            errors.push(FieldError::new(
                "referredBy",
                "Only Partner Referral leads have a referring partner.",
            ));
        } else if c.existing.is_some_and(|e| !e["referredBy"].is_null()) {
            // Switching a lead to another source drops its referrer.
            c.data.insert("referredBy".into(), Value::Null);
        }
        if c.changed("serviceLocation") {
            if let Some(u) = c.uuid("serviceLocation") {
                let exists: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM building_units WHERE id = $1)",
                )
                .bind(u)
                .fetch_one(&mut *tx)
                .await?;
                if !exists {
                    errors.push(FieldError::new(
                        "serviceLocation",
                        format!("Unknown building unit {u}."),
                    ));
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::BadRequest(errors))
        }
    }

    async fn after_change(
        &self,
        tx: &mut PgConnection,
        ctx: &ServiceContext,
        _p: &Principal,
        doc: &Value,
        prev: Option<&Value>,
    ) -> ApiResult<()> {
        let open = rank(stored::option(doc, "status")?).is_some();
        let touches_unit = match prev {
            None => true,
            Some(p) => {
                p["serviceLocation"] != doc["serviceLocation"]
                    || (p["status"] == LeadStatus::Lost && doc["status"] != LeadStatus::Lost)
            }
        };
        if open && touches_unit {
            if let Some(unit) = doc_id(doc, "serviceLocation") {
                mark_unit_lead(tx, unit).await?;
            }
        }
        if prev.is_none() {
            publish_doc(tx, ctx, doc, LeadCreated).await?;
        }
        Ok(())
    }

    async fn before_delete(
        &self,
        _tx: &mut PgConnection,
        _p: &Principal,
        doc: &Value,
    ) -> ApiResult<()> {
        if doc["status"] == LeadStatus::Converted {
            return Err(ApiError::conflict(
                "A converted lead is the record of a subscriber's sale and referral; it cannot be deleted.",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use isp_events::options::LeadStatus;

    fn ok(from: &str, to: &str) -> bool {
        super::transition_allowed(
            LeadStatus::parse(from).unwrap(),
            LeadStatus::parse(to).unwrap(),
        )
    }

    #[test]
    fn pipeline_moves_forward_skips_allowed_back_refused() {
        assert!(ok("New", "Contacted"));
        assert!(ok("New", "Site Survey"));
        assert!(ok("Contacted", "Site Survey"));
        assert!(!ok("Site Survey", "Contacted"));
        assert!(!ok("Contacted", "New"));
        assert!(ok("Site Survey", "Lost"));
        assert!(ok("Lost", "Contacted"));
        assert!(!ok("Site Survey", "Converted"));
        assert!(!ok("Converted", "Lost"));
        assert!(!ok("Converted", "New"));
        assert!(ok("New", "New"));
    }
}
