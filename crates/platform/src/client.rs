//! Synchronous calls from one service to another, with the caller's service token,
//! an `Idempotency-Key` so retries never duplicate, and the trace context.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::error::{ApiError, FieldError};

#[derive(Clone)]
pub struct ServiceClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl std::fmt::Debug for ServiceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceClient")
            .field("base", &self.base)
            .finish()
    }
}

impl ServiceClient {
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .expect("a default reqwest client builds");
        Self {
            http,
            base: base.into().trim_end_matches('/').to_string(),
            token: token.into(),
        }
    }

    /// The same token against another base URL (a service whose peer is deployed
    /// elsewhere than `ISP_INTERNAL_URL`).
    pub fn with_base(mut self, base: impl Into<String>) -> Self {
        self.base = base.into().trim_end_matches('/').to_string();
        self
    }

    /// POSTs JSON; retries transport failures and 5xx/503 a few times with the same
    /// idempotency key. Client errors from the callee are passed through as ours, so
    /// a 400 naming a field reaches the user who caused it.
    pub async fn post(
        &self,
        path: &str,
        body: &Value,
        idempotency_key: &str,
    ) -> Result<(StatusCode, Value), ApiError> {
        let url = format!("{}{}", self.base, path);
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=4 {
            let mut req = self
                .http
                .post(&url)
                .header("authorization", format!("Bearer {}", self.token))
                .header(crate::idempotency::HEADER, idempotency_key)
                .json(body);
            if let Some(tp) = isp_events::trace::current_traceparent() {
                req = req.header("traceparent", tp);
            }
            match req.send().await {
                Ok(res) if res.status().is_server_error() && attempt < 4 => {
                    tracing::warn!(%url, status = %res.status(), attempt, "retrying service call");
                }
                Ok(res) => {
                    let status = res.status();
                    let json: Value = res.json().await.unwrap_or(Value::Null);
                    if status.is_success() {
                        return Ok((status, json));
                    }
                    return Err(passthrough(status, &json));
                }
                Err(e) if attempt < 4 => {
                    tracing::warn!(%url, error = %e, attempt, "retrying service call")
                }
                Err(e) => return Err(ApiError::Unavailable(format!("{path} is unavailable: {e}"))),
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        Err(ApiError::Unavailable(format!("{path} is unavailable")))
    }
}

fn passthrough(status: StatusCode, body: &Value) -> ApiError {
    let errors: Vec<FieldError> = body["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| FieldError {
                    message: e["message"].as_str().unwrap_or("error").to_string(),
                    path: e["path"].as_str().map(String::from),
                })
                .collect()
        })
        .unwrap_or_default();
    match status.as_u16() {
        400 => ApiError::BadRequest(errors),
        404 => ApiError::NotFound(
            errors
                .first()
                .map(|e| e.message.trim_end_matches(" not found").to_string())
                .unwrap_or_else(|| "Record".into()),
        ),
        409 => ApiError::Conflict(errors),
        403 | 401 => ApiError::Internal(anyhow::anyhow!("service call refused ({status}): {body}")),
        _ => ApiError::Unavailable(format!("upstream answered {status}")),
    }
}
