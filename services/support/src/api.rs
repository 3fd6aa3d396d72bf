//! Support's operations beyond the generic collection routes:
//!
//! - `POST /api/support/contacts/import`: contacts from CSV; bad rows are reported
//!   by line, good rows are kept.
//! - `GET /api/support/tickets/{id}/messages`: a ticket's message history.
//! - `POST /api/support/tickets/{id}/messages`: a manual SMS or email to the
//!   ticket's subscriber, from a template or free text (`manual.reply`).

use std::collections::HashSet;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use isp_events::payloads::{NotificationCategory, NotificationChannel};
use isp_platform::auth::{HasKeys, Keys, Principal};
use isp_platform::collection::{parse_body, parse_id, Collection, Operation};
use isp_platform::query::{Filter, ListQuery, Op, Page};
use isp_platform::{ApiError, ApiResult, FieldError, ServiceContext};
use serde::Serialize;
use serde_json::{json, Map, Value};
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::notifications::{self, Outgoing};
use crate::templates;
use crate::Collections;

#[derive(Clone)]
pub(crate) struct St {
    pub ctx: Arc<ServiceContext>,
    pub colls: Arc<Collections>,
}

impl HasKeys for St {
    fn keys(&self) -> &Keys {
        &self.ctx.keys
    }
}

pub fn routes(ctx: Arc<ServiceContext>, colls: Arc<Collections>) -> Router {
    Router::new()
        .route("/api/support/contacts/import", post(import_contacts))
        .route(
            "/api/support/tickets/{id}/messages",
            get(ticket_messages).post(send_ticket_message),
        )
        .with_state(St { ctx, colls })
}

#[derive(OpenApi)]
#[openapi(
    paths(import_contacts, ticket_messages, send_ticket_message),
    components(schemas(ImportResult, LineError, TicketMessage))
)]
struct Doc;

pub fn openapi() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}

pub(crate) fn check(c: &Collection, p: &Principal, op: Operation, what: &str) -> ApiResult<()> {
    if c.allowed(p, op) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "You are not allowed to {what}."
        )))
    }
}

// ---- contacts import ------------------------------------------------------------

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ImportResult {
    /// Rows stored.
    imported: u32,
    /// Rows not stored, by line of the file (the header is line 1).
    errors: Vec<LineError>,
}

#[derive(Serialize, ToSchema)]
struct LineError {
    line: u64,
    /// The column at fault (`phoneNumber`, `fullName`, `source`).
    path: String,
    message: String,
}

/// The file: CSV whose header row (its first line) names a `phoneNumber` column,
/// in any case, trimmed and optionally quoted; what follows are rows, each
/// stored or reported by line. (The pattern leaves out headers whose other
/// cells are quoted, which the handler reads too.)
struct CsvFile;

impl utoipa::PartialSchema for CsvFile {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let name: String = "phoneNumber"
            .chars()
            .map(|c| format!("[{}{}]", c.to_ascii_lowercase(), c.to_ascii_uppercase()))
            .collect();
        // A cell of the header row, trimmed (csv's Trim::All); a quote opens a
        // quoted cell only as its first character.
        let cell = format!("(\"{name}\"|[ \\t]*{name})[ \\t]*");
        isp_platform::openapi::schema(json!({"type": "string",
            "pattern": format!("^([^\\r\\n\"]*,)?{cell}(,[^\\r\\n\"]*)?(\\r?\\n[\\s\\S]*)?$"),
            "description": "CSV with a header row naming phoneNumber (and optionally fullName, source)"}))
    }
}

impl ToSchema for CsvFile {}

/// A CSV file (`Content-Type: text/csv`) with a header row naming the columns
/// `phoneNumber` (required), `fullName` and `source`, in any order and case.
#[utoipa::path(post, path = "/api/support/contacts/import", tag = "contacts",
    request_body(content = CsvFile, content_type = "text/csv", description = "phoneNumber,fullName,source\n0712345678,Jane Doe,Marketing List"),
    responses((status = 200, body = ImportResult, description = "Good rows stored, bad ones reported by line (a number already in contacts, or twice in the file, is reported too)"),
        (status = 400, description = "Not CSV, or no phoneNumber column"), (status = 401), (status = 403)))]
async fn import_contacts(
    State(s): State<St>,
    p: Principal,
    body: Bytes,
) -> ApiResult<Json<ImportResult>> {
    check(&s.colls.contacts, &p, Operation::Create, "create contacts")?;
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(body.as_ref());
    let headers = rdr
        .headers()
        .map_err(|e| ApiError::bad_request(format!("The body is not CSV: {e}")))?
        .clone();
    let col = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let Some(phone_col) = col("phoneNumber") else {
        return Err(ApiError::field(
            "phoneNumber",
            "The header row must name a phoneNumber column.",
        ));
    };
    let (name_col, source_col) = (col("fullName"), col("source"));
    let mut errors = vec![];
    let mut rows = vec![];
    let mut seen = HashSet::new();
    for rec in rdr.records() {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                errors.push(LineError {
                    line,
                    path: "phoneNumber".into(),
                    message: format!("Not a CSV row: {e}"),
                });
                continue;
            }
        };
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        let text = |i: Option<usize>| {
            i.and_then(|i| rec.get(i))
                .filter(|v| !v.is_empty())
                .map(String::from)
        };
        let mut bad = false;
        let phone = match isp_platform::phone::normalize(rec.get(phone_col).unwrap_or_default()) {
            Ok(n) => Some(n),
            Err(m) => {
                errors.push(LineError {
                    line,
                    path: "phoneNumber".into(),
                    message: m,
                });
                bad = true;
                None
            }
        };
        let (name, source) = (text(name_col), text(source_col));
        for (path, v) in [("fullName", &name), ("source", &source)] {
            if v.as_deref()
                .is_some_and(|v| v.chars().count() > 500 || v.contains('\0'))
            {
                errors.push(LineError {
                    line,
                    path: path.into(),
                    message: "At most 500 characters, no NUL.".into(),
                });
                bad = true;
            }
        }
        let Some(phone) = phone.filter(|_| !bad) else {
            continue;
        };
        if !seen.insert(phone.clone()) {
            errors.push(LineError {
                line,
                path: "phoneNumber".into(),
                message: format!("{phone} appears earlier in the file."),
            });
            continue;
        }
        rows.push((line, phone, name, source));
    }
    let mut tx = s.ctx.pool.begin().await?;
    let mut imported = 0;
    for (line, phone, name, source) in rows {
        let stored: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO contacts (id, phone_number, full_name, source) VALUES ($1, $2, $3, $4)
             ON CONFLICT (phone_number) DO NOTHING RETURNING id",
        )
        .bind(Uuid::now_v7())
        .bind(&phone)
        .bind(name)
        .bind(source)
        .fetch_optional(&mut *tx)
        .await?;
        if stored.is_some() {
            imported += 1;
        } else {
            errors.push(LineError {
                line,
                path: "phoneNumber".into(),
                message: format!("A contact with {phone} already exists."),
            });
        }
    }
    tx.commit().await?;
    errors.sort_by_key(|e| e.line);
    Ok(Json(ImportResult { imported, errors }))
}

// ---- a ticket's messages ------------------------------------------------------------

/// The messages logged against the ticket, newest first (the usual list
/// parameters apply).
#[utoipa::path(get, path = "/api/support/tickets/{id}/messages", tag = "tickets",
    params(("id" = Uuid, Path)),
    responses((status = 200, description = "A page of messages ({docs, totalDocs, ...})"), (status = 401), (status = 403), (status = 404)))]
async fn ticket_messages(
    State(s): State<St>,
    p: Principal,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Page<Value>>> {
    check(&s.colls.tickets, &p, Operation::Read, "read tickets")?;
    check(&s.colls.messages, &p, Operation::Read, "read messages")?;
    let id = parse_id(&id)?;
    let mut conn = s.ctx.pool.acquire().await?;
    s.colls
        .tickets
        .find_scoped(&mut conn, &p, id, false)
        .await?;
    let mut q = ListQuery::parse(raw.as_deref())?;
    q.filters.push(Filter {
        field: "ticket".into(),
        op: Op::Equals,
        value: id.to_string(),
    });
    if q.sort.is_empty() {
        q.sort.push(("createdAt".into(), true));
    }
    Ok(Json(s.colls.messages.list(&mut conn, &p, &q).await?))
}

/// A manual reply: `channel`, and `template` (a messageTemplates id) or `content`
/// (free text), not both; exactly what [`send_ticket_message`] reads.
struct TicketMessage;

impl utoipa::PartialSchema for TicketMessage {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let mut props = source_properties();
        props.insert("channel".into(), json!({"type": "string", "enum": ["SMS", "Email"],
            "description": "SMS (to the subscriber's contact phone, else the M-Pesa number) or Email (to the subscriber's email; 400 when none is known)"}));
        isp_platform::openapi::schema(json!({
            "type": "object", "additionalProperties": false, "required": ["channel"],
            "properties": props, "oneOf": source_one_of()}))
    }
}

impl ToSchema for TicketMessage {}

/// `template`, `content` and `subject` as [`message_source`] reads them.
pub(crate) fn source_properties() -> Map<String, Value> {
    use isp_platform::collection::Kind;
    use isp_platform::openapi::field_input;
    // Null is absent; text is trimmed, and blank text is refused.
    let text = |name: &'static str, max: usize, description: &str| {
        let mut v = field_input(name, Kind::Text { max }, true);
        v["type"] = json!(["string", "null"]);
        v["description"] = json!(description);
        v
    };
    let mut template = field_input("template", Kind::Relation, false);
    template["description"] = json!("A messageTemplates id");
    let mut m = Map::new();
    m.insert("template".into(), template);
    m.insert(
        "content".into(),
        text(
            "content",
            1600,
            "Free text, at most 1600 characters (10 SMS parts); may use the template variables",
        ),
    );
    m.insert(
        "subject".into(),
        text(
            "subject",
            500,
            "Email subject (a template's subject when absent)",
        ),
    );
    m
}

/// Exactly one of `template` and `content` (null counts as absent).
pub(crate) fn source_one_of() -> Value {
    json!([
        {"required": ["template"], "properties": {"template": {"type": "string"}}},
        {"required": ["content"], "properties": {"content": {"type": "string"}}}
    ])
}

pub(crate) fn channel_of(
    v: Option<&Value>,
    errors: &mut Vec<FieldError>,
) -> Option<NotificationChannel> {
    match v.and_then(Value::as_str) {
        None => {
            errors.push(FieldError::new(
                "channel",
                "channel is required (SMS or Email).",
            ));
            None
        }
        Some(s) => notifications::channel_from_label(s).or_else(|| {
            errors.push(FieldError::new("channel", "Must be one of: SMS, Email."));
            None
        }),
    }
}

/// Reads `template` / `content` / `subject` of a send request: the template's
/// (content, subject) or the free text.
pub(crate) async fn message_source(
    conn: &mut sqlx::PgConnection,
    body: &Map<String, Value>,
    // Whose variables free text may use (a reply may name the ticket).
    vars_of: Option<&str>,
    errors: &mut Vec<FieldError>,
) -> ApiResult<Option<(String, Option<String>)>> {
    let text = |k: &str, max: usize, errors: &mut Vec<FieldError>| match body.get(k) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.contains('\0') => {
            errors.push(FieldError::new(k, isp_platform::collection::NUL_MESSAGE));
            None
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            errors.push(FieldError::new(k, format!("{k} must not be empty.")));
            None
        }
        Some(Value::String(s)) if s.chars().count() > max => {
            errors.push(FieldError::new(k, format!("At most {max} characters.")));
            None
        }
        Some(Value::String(s)) => Some(s.trim().to_string()),
        Some(_) => {
            errors.push(FieldError::new(k, "Must be text."));
            None
        }
    };
    let content = text("content", 1600, errors);
    let subject = text("subject", 500, errors);
    let template = match body.get("template") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_str().and_then(|s| Uuid::parse_str(s).ok()) {
            Some(id) => {
                let t: Option<(String, Option<String>)> =
                    sqlx::query_as("SELECT content, subject FROM message_templates WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&mut *conn)
                        .await?;
                if t.is_none() {
                    errors.push(FieldError::new("template", "No such message template."));
                }
                t
            }
            None => {
                errors.push(FieldError::new("template", "Must be a valid id."));
                None
            }
        },
    };
    let has_template = !matches!(body.get("template"), None | Some(Value::Null));
    let has_content = !matches!(body.get("content"), None | Some(Value::Null));
    match (has_template, has_content) {
        (true, true) => errors.push(FieldError::new(
            "content",
            "Give a template or content, not both.",
        )),
        (false, false) => errors.push(FieldError::new(
            "content",
            "content (or a template) is required.",
        )),
        _ => {}
    }
    if let Some(c) = &content {
        if let Err(m) = templates::check(c, vars_of) {
            errors.push(FieldError::new("content", m));
        }
    }
    Ok(match (template, content) {
        (Some((c, s)), None) => Some((c, subject.or(s))),
        (None, Some(c)) => Some((c, subject)),
        _ => None,
    })
}

#[utoipa::path(post, path = "/api/support/tickets/{id}/messages", tag = "tickets",
    params(("id" = Uuid, Path)), request_body = TicketMessage,
    extensions(("x-references" = json!(["template"])),
        ("x-rules" = json!(["content, subject: a template that parses and uses only the variables of ticket.updated (firstName, lastName, fullName, accountNumber, phoneNumber, ticketId, subject, status)"]))),
    responses((status = 201, description = "{doc: the logged message (status Queued), message}"),
        (status = 400, description = "Every bad field named: channel, template, content, subject"),
        (status = 401), (status = 403), (status = 404), (status = 409, description = "A network ticket has no subscriber to write to")))]
async fn send_ticket_message(
    State(s): State<St>,
    p: Principal,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    check(&s.colls.tickets, &p, Operation::Read, "read tickets")?;
    p.require(crate::collections::SUPPORT, "support.messages.send")?;
    let id = parse_id(&id)?;
    let Value::Object(body) = parse_body(&body)? else {
        return Err(ApiError::bad_request("The body must be a JSON object."));
    };
    let mut errors = vec![];
    for k in body.keys() {
        if !["channel", "template", "content", "subject"].contains(&k.as_str()) {
            errors.push(FieldError::new(k, format!("Unknown field {k:?}.")));
        }
    }
    let channel = channel_of(body.get("channel"), &mut errors);
    let mut tx = s.ctx.pool.begin().await?;
    let source = message_source(&mut tx, &body, Some("ticket.updated"), &mut errors).await?;
    let ticket = s.colls.tickets.find_scoped(&mut tx, &p, id, false).await?;
    let Some(subscriber) = ticket["subscriber"]
        .as_str()
        .and_then(|v| Uuid::parse_str(v).ok())
    else {
        return Err(ApiError::conflict(
            "A network ticket has no subscriber to write to.",
        ));
    };
    let customer = notifications::customer(&mut tx, subscriber)
        .await
        .map_err(ApiError::Internal)?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("ticket's subscriber not projected")))?;
    let recipient = match channel {
        Some(NotificationChannel::Sms) => Some(customer.phone().to_string()),
        Some(NotificationChannel::Email) => {
            if customer.email.is_none() {
                errors.push(FieldError::new(
                    "channel",
                    "No email address is known for this subscriber.",
                ));
            }
            customer.email.clone()
        }
        None => None,
    };
    if !errors.is_empty() {
        return Err(ApiError::BadRequest(errors));
    }
    let (Some(channel), Some(recipient), Some((content, subject))) = (channel, recipient, source)
    else {
        return Err(ApiError::bad_request("Incomplete message."));
    };
    let mut vars = customer.vars();
    vars.insert("ticketId".into(), ticket["ticketID"].clone());
    vars.insert("subject".into(), ticket["subject"].clone());
    vars.insert("status".into(), ticket["status"].clone());
    let vars = Value::Object(vars);
    let render = |src: &str, path: &str| {
        templates::render(src, &vars).map_err(|e| {
            ApiError::field(
                path,
                format!("The template cannot be used for a reply: {e}"),
            )
        })
    };
    let body_text = render(&content, "template")?;
    let subject = match (channel, subject) {
        (NotificationChannel::Email, Some(s)) => Some(render(&s, "subject")?),
        (NotificationChannel::Email, None) => Some(format!(
            "Ticket {}",
            ticket["ticketID"].as_str().unwrap_or_default()
        )),
        _ => None,
    };
    let msg = notifications::queue(
        &mut tx,
        &Outgoing {
            recipient,
            channel,
            content: body_text,
            subject,
            trigger_event: "manual.reply".into(),
            category: NotificationCategory::Transactional,
            source_event: None,
            subscriber: Some(subscriber),
            contact: None,
            ticket: Some(id),
            sent_by: p.staff_id(),
            parent: None,
        },
    )
    .await
    .map_err(ApiError::Internal)?
    .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("manual message not stored")))?;
    let doc = s
        .colls
        .messages
        .fetch(&mut tx, msg, false)
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("message vanished")))?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"doc": s.colls.messages.present(&p, &doc), "message": "Message queued."})),
    ))
}
