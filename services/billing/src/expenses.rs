//! Expense receipts: `POST /api/billing/expenses/{id}/receipt` (multipart, field
//! `file`; PDF, JPEG or PNG recognised by their first bytes, at most
//! `ISP_BILLING_RECEIPT_MAX_BYTES`, default 5 MiB) and `GET` of the same path to
//! download it. Admin and Billing Manager only, like expenses themselves.

use axum::extract::{DefaultBodyLimit, Multipart, Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::{Bytes, BytesMut};
use isp_platform::auth::Principal;
use isp_platform::collection::parse_id;
use isp_platform::{ApiError, ApiResult};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::App;
use isp_platform::collection::Operation;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Default largest receipt: 5 MiB.
pub const DEFAULT_RECEIPT_MAX_BYTES: usize = 5 * 1024 * 1024;
/// Room for the multipart framing around the file (boundaries, part headers).
const MULTIPART_OVERHEAD: usize = 64 * 1024;

/// `ISP_BILLING_RECEIPT_MAX_BYTES` (default 5 MiB); a bad value stops the start.
pub fn receipt_max_bytes() -> anyhow::Result<usize> {
    let n = isp_platform::config::env_parse(
        "ISP_BILLING_RECEIPT_MAX_BYTES",
        DEFAULT_RECEIPT_MAX_BYTES,
    )?;
    anyhow::ensure!(n > 0, "ISP_BILLING_RECEIPT_MAX_BYTES must be more than 0");
    Ok(n)
}

/// "5 MiB" or "200000 bytes".
fn size_text(n: usize) -> String {
    if n.is_multiple_of(1024 * 1024) {
        format!("{} MiB", n / (1024 * 1024))
    } else {
        format!("{n} bytes")
    }
}

/// Uploading and downloading an expense's receipt.
pub fn routes(max_bytes: usize) -> OpenApiRouter<App> {
    // axum caps extracted bodies (Multipart included) at 2 MiB unless the route
    // says otherwise: allow the configured receipt size plus the multipart framing.
    // (The platform's outer request limit, 12 MiB, still applies above that.)
    let (schemas, paths, upload) = routes!(upload);
    let upload = upload.layer(DefaultBodyLimit::max(
        max_bytes.saturating_add(MULTIPART_OVERHEAD),
    ));
    OpenApiRouter::new()
        .routes((schemas, paths, upload))
        .routes(routes!(download))
}

/// The file type from its first bytes (never trusting the client's label).
pub fn sniff(data: &[u8]) -> Option<(&'static str, &'static str)> {
    if data.starts_with(b"%PDF-") {
        Some(("application/pdf", "pdf"))
    } else if data.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(("image/jpeg", "jpg"))
    } else if data.starts_with(&[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A]) {
        Some(("image/png", "png"))
    } else {
        None
    }
}

fn clean_filename(name: &str, ext: &str) -> String {
    let base: String = name
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ' '))
        .take(100)
        .collect();
    let base = base.trim();
    if base.is_empty() {
        format!("receipt.{ext}")
    } else {
        base.to_string()
    }
}

/// The upload form: one part, `file`.
pub struct ReceiptUpload;

impl utoipa::PartialSchema for ReceiptUpload {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        isp_platform::openapi::schema(json!({"type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary",
                "description": "A PDF, JPEG or PNG"}}}))
    }
}

impl utoipa::ToSchema for ReceiptUpload {}

/// Attaches (or replaces) an expense's receipt. 200 `{doc, message}`.
#[utoipa::path(post, path = "/api/billing/expenses/{id}/receipt", tag = "expenses",
    params(("id" = Uuid, Path)),
    request_body(content_type = "multipart/form-data", content = ReceiptUpload, description = "field `file`: PDF, JPEG or PNG"),
    extensions(("x-rules" = json!(["file: the content of a PDF, JPEG or PNG"]))),
    responses((status = 200, description = "{doc, message}"), (status = 400, description = "No file, or not PDF/JPEG/PNG"),
              (status = 403), (status = 404), (status = 413, description = "Too large")))]
async fn upload(
    State(s): State<App>,
    p: Principal,
    Path(id): Path<String>,
    mut form: Multipart,
) -> ApiResult<Json<Value>> {
    s.colls.expenses.authorize(&p, Operation::Update)?;
    let id = parse_id(&id)?;
    let too_large = || {
        ApiError::TooLarge(format!(
            "The receipt is too large: at most {} is accepted.",
            size_text(s.options.receipt_max_bytes)
        ))
    };
    let bad = |e: axum::extract::multipart::MultipartError| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            ApiError::field("file", format!("Could not read the upload: {e}"))
        }
    };
    let mut file: Option<(String, Bytes)> = None;
    while let Some(mut field) = form.next_field().await.map_err(bad)? {
        if field.name() != Some("file") {
            continue;
        }
        let name = field.file_name().unwrap_or("").to_string();
        let mut buf = BytesMut::new();
        while let Some(chunk) = field.chunk().await.map_err(bad)? {
            if buf.len() + chunk.len() > s.options.receipt_max_bytes {
                return Err(too_large());
            }
            buf.extend_from_slice(&chunk);
        }
        file = Some((name, buf.freeze()));
        break;
    }
    let Some((name, data)) = file else {
        return Err(ApiError::field(
            "file",
            "Attach the receipt as the field `file`.",
        ));
    };
    if data.is_empty() {
        return Err(ApiError::field("file", "The file is empty."));
    }
    let Some((content_type, ext)) = sniff(&data) else {
        return Err(ApiError::field(
            "file",
            "A receipt must be a PDF, JPEG or PNG file.",
        ));
    };
    let mut tx = s.ctx.pool.begin().await?;
    let old: Option<Option<String>> =
        sqlx::query_scalar("SELECT receipt_key FROM expenses WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(old) = old else {
        return Err(ApiError::not_found("Expense"));
    };
    let key = format!("expenses/{id}/{}.{ext}", Uuid::new_v4().simple());
    s.store.put(&key, data.clone()).await?;
    let meta = json!({"filename": clean_filename(&name, ext), "contentType": content_type, "size": data.len()});
    sqlx::query(
        "UPDATE expenses SET receipt = $2, receipt_key = $3, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(&meta)
    .bind(&key)
    .execute(&mut *tx)
    .await?;
    let doc = s
        .colls
        .expenses
        .fetch(&mut tx, id, false)
        .await?
        .ok_or_else(|| ApiError::not_found("Expense"))?;
    if let Err(e) = tx.commit().await {
        let _ = s.store.delete(&key).await;
        return Err(e.into());
    }
    if let Some(old) = old {
        if let Err(e) = s.store.delete(&old).await {
            tracing::warn!(error = ?e, key = old, "could not delete a replaced receipt");
        }
    }
    Ok(Json(
        json!({"doc": s.colls.expenses.present(&p, &doc), "message": "Receipt uploaded."}),
    ))
}

/// Downloads an expense's receipt.
#[utoipa::path(get, path = "/api/billing/expenses/{id}/receipt", tag = "expenses",
    params(("id" = Uuid, Path)),
    responses((status = 200, description = "The file"), (status = 403), (status = 404, description = "No such expense"),
        (status = 409, description = "The expense has no receipt (yet)")))]
async fn download(
    State(s): State<App>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    s.colls.expenses.authorize(&p, Operation::Read)?;
    let id = parse_id(&id)?;
    let row: Option<(Option<Value>, Option<String>)> =
        sqlx::query_as("SELECT receipt, receipt_key FROM expenses WHERE id = $1")
            .bind(id)
            .fetch_optional(&s.ctx.pool)
            .await?;
    // No expense is a 404; an expense without a receipt is in a state that has
    // nothing to download (409), so a client can tell the two apart.
    let Some((meta, key)) = row else {
        return Err(ApiError::not_found("Expense"));
    };
    let (Some(meta), Some(key)) = (meta, key) else {
        return Err(ApiError::conflict(
            "This expense has no receipt: upload one with POST /api/billing/expenses/{id}/receipt.",
        ));
    };
    let data = s
        .store
        .get(&key)
        .await?
        .ok_or_else(|| ApiError::not_found("Receipt"))?;
    let ct = meta["contentType"]
        .as_str()
        .unwrap_or("application/octet-stream")
        .to_string();
    let filename = meta["filename"]
        .as_str()
        .unwrap_or("receipt")
        .replace('"', "");
    Ok((
        [
            (header::CONTENT_TYPE, ct),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        data,
    )
        .into_response())
}
