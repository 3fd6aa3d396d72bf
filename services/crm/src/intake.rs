//! `POST /api/crm/intake/leads`: a partner's referral as wa-parser reads it from a
//! WhatsApp or SMS message: the building, the unit *number* the caretaker typed,
//! the prospect. In one transaction the unit is found (case-insensitively, as the
//! unique index compares) or created as Vacant, and the lead is created through
//! the leads collection (its rules, the unit turning Lead, `lead.created`).
//!
//! Only a service token carrying exactly [`INTAKE_SCOPE`] may call it: staff
//! create units and leads with the ordinary collection routes, and wa-parser's
//! token can do nothing else in CRM. `Idempotency-Key` is required, since the
//! caller retries until it gets an answer.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use isp_platform::auth::{HasKeys, Keys, Principal, Roles};
use isp_platform::collection::{canonical, parse_body, Collection, Field, Kind};
use isp_platform::{idempotency, ApiError, ApiResult, FieldError, ServiceContext};
use serde_json::{json, Map, Value};
use utoipa::OpenApi;
use uuid::Uuid;

use crate::collections::PARTNER_REFERRAL;

pub const INTAKE_PATH: &str = "/api/crm/intake/leads";
/// The one scope that allows it.
pub const INTAKE_SCOPE: &str = "crm.intake.create";

#[derive(Clone)]
struct IntakeState {
    ctx: Arc<ServiceContext>,
    leads: Arc<Collection>,
}

impl HasKeys for IntakeState {
    fn keys(&self) -> &Keys {
        &self.ctx.keys
    }
}

pub fn routes(ctx: Arc<ServiceContext>, leads: Arc<Collection>) -> Router {
    Router::new()
        .route(INTAKE_PATH, post(intake))
        .with_state(IntakeState { ctx, leads })
}

fn fields() -> [Field; 6] {
    [
        Field::new("partner", "", Kind::Relation).required(),
        Field::new("building", "", Kind::Relation).required(),
        Field::new("unitNumber", "", Kind::Text { max: 50 }).required(),
        Field::new("subscriberName", "", Kind::TEXT).required(),
        Field::new("subscriberPhone", "", Kind::Phone).required(),
        Field::new("notes", "", Kind::RICH_TEXT),
    ]
}

/// Every bad field at once, before anything is written.
fn validate(body: &Value) -> ApiResult<Map<String, Value>> {
    let Value::Object(m) = body else {
        return Err(ApiError::bad_request("The body must be a JSON object."));
    };
    let fields = fields();
    let mut errors = vec![];
    for k in m.keys() {
        if !fields.iter().any(|f| f.name == k) {
            errors.push(FieldError::new(k, format!("Unknown field {k:?}.")));
        }
    }
    let mut out = Map::new();
    for f in &fields {
        match canonical(f, m.get(f.name).unwrap_or(&Value::Null)) {
            Ok(v) => {
                if f.name == "unitNumber" && v.as_str().is_some_and(|s| s.trim().is_empty()) {
                    errors.push(FieldError::new(f.name, "unitNumber is required."));
                }
                out.insert(f.name.into(), v);
            }
            Err(msg) => errors.push(FieldError::new(f.name, msg)),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ApiError::BadRequest(errors))
    }
}

fn uuid_of(v: &Map<String, Value>, k: &str) -> ApiResult<Uuid> {
    v[k].as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| ApiError::field(k, "Must be a valid id."))
}

#[derive(OpenApi)]
#[openapi(paths(intake))]
struct IntakeDoc;

pub fn openapi() -> utoipa::openapi::OpenApi {
    IntakeDoc::openapi()
}

/// Creates a Partner Referral lead from a partner's message (wa-parser), creating
/// the building unit when its number is new in that building.
///
/// The building must be the partner's (its `partner`), and the partner Active. A
/// retry with the same `Idempotency-Key` and body gets the first answer and
/// creates nothing; the same key with another body is a 409.
#[utoipa::path(post, path = "/api/crm/intake/leads", tag = "leads",
    params(("Idempotency-Key" = String, Header, description = "Required; e.g. wa-parser-lead-<inbound message id>")),
    request_body(content = Object, description = "{partner: id, building: id, unitNumber: string (1-50), subscriberName: string, subscriberPhone: phone (any Kenyan form; stored E.164), notes?: string}"),
    responses(
        (status = 201, description = "{doc: lead, unit: {id, unitNumber, created: bool}, message}"),
        (status = 400, description = "Invalid input (every bad field named), missing Idempotency-Key, unknown building, a building that is not the partner's, a partner that is not Active"),
        (status = 401, description = "No or bad token"),
        (status = 403, description = "The token lacks crm.intake.create (staff tokens included)"),
        (status = 409, description = "The Idempotency-Key was used with another body"),
        (status = 503, description = "Not applied (database busy); resend with the same key")))]
async fn intake(
    State(s): State<IntakeState>,
    p: Principal,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    p.require(Roles::NONE, INTAKE_SCOPE)?;
    let key = idempotency::key_from(&headers)?.ok_or_else(|| {
        ApiError::field("Idempotency-Key", "Idempotency-Key is required.")
    })?;
    let input = parse_body(&body)?;
    let v = validate(&input)?;
    let partner = uuid_of(&v, "partner")?;
    let building = uuid_of(&v, "building")?;
    let unit_number = v["unitNumber"].as_str().unwrap_or_default().trim().to_string();
    let hash = idempotency::request_hash(&input);

    let mut tx = s.ctx.pool.begin().await?;
    if let Some((status, answer)) = idempotency::begin(&mut tx, &p, &key, &hash).await? {
        return Ok((status, Json(answer)));
    }
    let owner: Option<Option<Uuid>> =
        sqlx::query_scalar("SELECT partner FROM buildings WHERE id = $1")
            .bind(building)
            .fetch_optional(&mut *tx)
            .await?;
    match owner {
        None => {
            return Err(ApiError::field(
                "building",
                format!("Unknown building {building}."),
            ))
        }
        Some(o) if o != Some(partner) => {
            return Err(ApiError::field(
                "building",
                format!("Building {building} is not looked after by partner {partner}."),
            ))
        }
        Some(_) => {}
    }
    // ON CONFLICT on the (building, lower(unit_number)) index: two messages naming
    // the same new unit at once end up on one unit.
    let created: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO building_units (id, unit_number, building, status)
         VALUES ($1, $2, $3, 'Vacant')
         ON CONFLICT (building, lower(unit_number)) DO NOTHING RETURNING id",
    )
    .bind(Uuid::now_v7())
    .bind(&unit_number)
    .bind(building)
    .fetch_optional(&mut *tx)
    .await?;
    let unit: (Uuid, String) = sqlx::query_as(
        "SELECT id, unit_number FROM building_units WHERE building = $1 AND lower(unit_number) = lower($2)",
    )
    .bind(building)
    .bind(&unit_number)
    .fetch_one(&mut *tx)
    .await?;

    let lead_input = json!({
        "leadSource": PARTNER_REFERRAL,
        "referredBy": partner,
        "subscriberName": v["subscriberName"],
        "subscriberPhone": v["subscriberPhone"],
        "serviceLocation": unit.0,
        "notes": v["notes"],
    });
    let data = s.leads.validate_input(&p, &lead_input, true)?;
    let doc = s.leads.create_in(&mut tx, &s.ctx, &p, data).await?;
    let answer = json!({
        "doc": s.leads.present(&p, &doc),
        "unit": {"id": unit.0, "unitNumber": unit.1, "created": created.is_some()},
        "message": "Lead successfully created.",
    });
    idempotency::store(&mut tx, &p, &key, &hash, StatusCode::CREATED, &answer).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(answer)))
}
