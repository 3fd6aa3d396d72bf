//! Synchronous calls from one service to another, with the caller's service token,
//! an `Idempotency-Key` so retries never duplicate, and the trace context.
//!
//! Service tokens live hours ([`crate::auth::service_token_ttl`]), so the client
//! holds a [`TokenSource`] rather than a token: a process with the signing key mints
//! a fresh token once the one it holds is half spent; one given a token (a file
//! written by `isp init`, or a variable) renews it at core
//! (`POST /api/core/service-tokens/renew`) at the same point and, for a file,
//! writes the renewed token back so a restart starts from it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::error::{ApiError, FieldError};

/// Where a service's token comes from, and how it is renewed.
#[derive(Clone)]
pub enum TokenOrigin {
    /// Minted here with the signing key (single process, or core itself).
    Mint {
        keys: crate::auth::Keys,
        service: String,
        scopes: Vec<String>,
    },
    /// `ISP_<SCHEMA>_SERVICE_TOKEN_FILE`: read again on every use (a redeploy's
    /// `isp init` may have replaced it), renewed at core and written back.
    File(PathBuf),
    /// `ISP_<SCHEMA>_SERVICE_TOKEN`: renewed at core, kept in memory.
    Fixed(String),
}

/// A service token that stays valid: see the module documentation.
#[derive(Clone)]
pub struct TokenSource {
    origin: TokenOrigin,
    /// Base URL core answers at (renewal).
    core: String,
    http: reqwest::Client,
    current: Arc<tokio::sync::Mutex<Option<Held>>>,
}

#[derive(Clone)]
struct Held {
    token: String,
    iat: i64,
    exp: i64,
}

impl Held {
    /// `iat`/`exp` of a token we were handed; the callee checks the signature.
    fn read(token: String) -> Result<Held, ApiError> {
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        v.insecure_disable_signature_validation();
        v.validate_exp = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        let c = jsonwebtoken::decode::<crate::auth::Claims>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(&[]),
            &v,
        )
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("the service token cannot be read: {e}")))?
        .claims;
        Ok(Held {
            token,
            iat: c.iat,
            exp: c.exp,
        })
    }
    fn half_spent(&self, now: i64) -> bool {
        now >= self.iat + (self.exp - self.iat) / 2
    }
}

impl TokenSource {
    pub fn new(origin: TokenOrigin, core_base: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("a default reqwest client builds");
        Self {
            origin,
            core: core_base.into().trim_end_matches('/').to_string(),
            http,
            current: Arc::new(tokio::sync::Mutex::new(None)),
        }
    }

    /// A token valid now, renewed first if the one held is half spent.
    pub async fn token(&self) -> Result<String, ApiError> {
        let now = chrono::Utc::now().timestamp();
        let mut held = self.current.lock().await;
        let mut candidate = match (&self.origin, held.take()) {
            (TokenOrigin::Mint { .. }, Some(h)) | (TokenOrigin::Fixed(_), Some(h)) => h,
            (TokenOrigin::Mint { .. }, None) => self.mint()?,
            (TokenOrigin::Fixed(t), None) => Held::read(t.clone())?,
            (TokenOrigin::File(path), h) => {
                let on_disk = Held::read(read_token_file(path)?)?;
                // The newer of the file (a redeploy) and what we renewed.
                match h {
                    Some(h) if h.exp > on_disk.exp => h,
                    _ => on_disk,
                }
            }
        };
        if candidate.half_spent(now) {
            match self.renew(&candidate).await {
                Ok(fresh) => candidate = fresh,
                Err(e) if candidate.exp > now + 5 => {
                    tracing::warn!(error = %e, "could not renew the service token; using the current one");
                }
                Err(e) => {
                    *held = Some(candidate);
                    return Err(e);
                }
            }
        }
        let token = candidate.token.clone();
        *held = Some(candidate);
        Ok(token)
    }

    /// Renews in the background too, so a token is kept alive by a service that
    /// calls nobody for longer than a token lives (a quiet night of no lead
    /// conversions). Checks every quarter of the token's life (30 s to 10 min).
    pub fn keep_fresh(&self, shutdown: tokio_util::sync::CancellationToken) {
        if let TokenOrigin::Mint { .. } = self.origin {
            return; // minted on demand, nothing to keep alive
        }
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let wait = match me.token().await {
                    Ok(_) => me
                        .current
                        .lock()
                        .await
                        .as_ref()
                        .map(|h| ((h.exp - h.iat) / 4).clamp(30, 600))
                        .unwrap_or(60),
                    Err(e) => {
                        tracing::error!(error = %e, "the service token could not be renewed");
                        60
                    }
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(wait as u64)) => {}
                }
            }
        });
    }

    fn mint(&self) -> Result<Held, ApiError> {
        let TokenOrigin::Mint {
            keys,
            service,
            scopes,
        } = &self.origin
        else {
            unreachable!("mint is only called for minted tokens")
        };
        let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
        Held::read(keys.service_token(service, &scopes).map_err(ApiError::Internal)?)
    }

    async fn renew(&self, held: &Held) -> Result<Held, ApiError> {
        if let TokenOrigin::Mint { .. } = self.origin {
            return self.mint();
        }
        let url = format!("{}/api/core/service-tokens/renew", self.core);
        let res = self
            .http
            .post(&url)
            .bearer_auth(&held.token)
            .send()
            .await
            .map_err(|e| ApiError::Unavailable(format!("renewing the service token: {e}")))?;
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        let Some(token) = body["token"].as_str().filter(|_| status.is_success()) else {
            return Err(ApiError::Unavailable(format!(
                "core refused to renew the service token ({status}): {body}"
            )));
        };
        let fresh = Held::read(token.to_string())?;
        if let TokenOrigin::File(path) = &self.origin {
            if let Err(e) = crate::config::write_secret_file(path, &format!("{token}\n"), true) {
                tracing::warn!(path = %path.display(), error = %e, "could not write the renewed service token");
            }
        }
        tracing::info!(exp = fresh.exp, "renewed the service token at core");
        Ok(fresh)
    }
}

fn read_token_file(path: &std::path::Path) -> Result<String, ApiError> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_string())
        .map_err(|e| {
            ApiError::Internal(anyhow::anyhow!(
                "reading the service token {}: {e}",
                path.display()
            ))
        })
}

#[derive(Clone)]
pub struct ServiceClient {
    http: reqwest::Client,
    base: String,
    token: TokenSource,
}

impl std::fmt::Debug for ServiceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceClient")
            .field("base", &self.base)
            .finish()
    }
}

impl ServiceClient {
    pub fn new(base: impl Into<String>, token: TokenSource) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .expect("a default reqwest client builds");
        Self {
            http,
            base: base.into().trim_end_matches('/').to_string(),
            token,
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
        let token = self.token.token().await?;
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=4 {
            let mut req = self
                .http
                .post(&url)
                .bearer_auth(&token)
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
