//! `Idempotency-Key` for writes other services retry (CRM converting a lead calls
//! Billing; wa-parser creating a lead calls CRM). The key, caller and a hash of the
//! request are stored with the answer in the same transaction as the effect, so a
//! retry, a doubled click or a crash between commit and reply never applies twice.

use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use sqlx::PgConnection;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};

pub const HEADER: &str = "idempotency-key";

pub fn key_from(headers: &HeaderMap) -> ApiResult<Option<String>> {
    match headers.get(HEADER) {
        None => Ok(None),
        Some(v) => {
            let s = v
                .to_str()
                .map_err(|_| ApiError::field("Idempotency-Key", "Must be visible ASCII."))?
                .trim();
            if s.is_empty() || s.len() > 200 {
                return Err(ApiError::field(
                    "Idempotency-Key",
                    "Must be 1 to 200 characters.",
                ));
            }
            Ok(Some(s.to_string()))
        }
    }
}

/// SHA-256 of the request's JSON text, hex. serde_json keeps object keys sorted
/// (no `preserve_order` feature), so the same fields in another order hash alike.
pub fn request_hash(body: &Value) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(body.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Takes the key's lock for this transaction and returns a stored answer if the key
/// was used before. A different request body under the same key is a 409.
pub async fn begin(
    tx: &mut PgConnection,
    principal: &Principal,
    key: &str,
    hash: &str,
) -> ApiResult<Option<(StatusCode, Value)>> {
    let caller = principal.label();
    // Serialize concurrent requests with one key: the second waits for the first to
    // commit, then sees its stored answer.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("{caller}\u{1f}{key}"))
        .execute(&mut *tx)
        .await?;
    let row: Option<(String, i16, Value)> =
        sqlx::query_as("SELECT request_hash, status, response FROM idempotency_keys WHERE caller = $1 AND key = $2")
            .bind(&caller)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
    match row {
        None => Ok(None),
        Some((h, _, _)) if h != hash => Err(ApiError::conflict_field(
            "Idempotency-Key",
            "This key was already used with a different request.",
        )),
        Some((_, status, body)) => Ok(Some((
            StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK),
            body,
        ))),
    }
}

pub async fn store(
    tx: &mut PgConnection,
    principal: &Principal,
    key: &str,
    hash: &str,
    status: StatusCode,
    response: &Value,
) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO idempotency_keys (caller, key, request_hash, status, response) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(principal.label())
    .bind(key)
    .bind(hash)
    .bind(status.as_u16() as i16)
    .bind(response)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn request_hash_is_sha256_of_the_canonical_json() {
        // echo -n '{"a":1,"b":"x"}' | sha256sum
        assert_eq!(
            super::request_hash(&json!({"b": "x", "a": 1})),
            "ecf9e98ec0641e23113ff3ce8bdc78d0ddd249886517fd4a7f68cc83d4e65667"
        );
    }
}
