//! HTTP plumbing shared by every service: health and readiness, Prometheus metrics,
//! OpenAPI JSON and Swagger UI, JSON bodies that fail as 400s, middleware, serving.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use once_cell::sync::OnceCell;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::OpenApi;
use utoipa_swagger_ui::{Config, SwaggerUi, Url};

use crate::error::ApiError;
use crate::ServiceContext;

static PROMETHEUS: OnceCell<PrometheusHandle> = OnceCell::new();

/// The process-wide recorder: one per process even when the launcher runs eight services.
pub fn prometheus() -> &'static PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
            .expect("static buckets")
            .build_recorder();
        let handle = recorder.handle();
        // Tests build many apps in one process; only the first install wins, and
        // later handles would render nothing, so keep the first.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// A JSON body whose errors are 400s naming the bad field (never axum's 415/422):
/// a wrong type at `plan.price`, a missing field (`email`, or `items.0.amount`),
/// and text holding a NUL character, which Postgres cannot store.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("Could not read the body: {e}")))?;
        parse_json_body(&bytes).map(ApiJson)
    }
}

/// Parses a request body as `T` the way [`ApiJson`] does (an empty body is `{}`).
pub fn parse_json_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let body: &[u8] = if bytes.is_empty() { b"{}" } else { bytes };
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("The body is not valid JSON: {e}")))?;
    if let Some(path) = nul_path(&value, String::new()) {
        return Err(ApiError::field(
            if path.is_empty() { ".".into() } else { path },
            crate::collection::NUL_MESSAGE,
        ));
    }
    serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.into_inner().to_string();
        let at = if path == "." { "" } else { path.as_str() };
        // serde names a missing field only in its message: "missing field `email`".
        let missing = msg
            .strip_prefix("missing field `")
            .and_then(|r| r.split_once('`'))
            .map(|(name, _)| name.to_string());
        match missing {
            Some(name) if at.is_empty() => {
                ApiError::field(name.clone(), format!("{name} is required."))
            }
            Some(name) => ApiError::field(format!("{at}.{name}"), format!("{name} is required.")),
            None if at.is_empty() => ApiError::bad_request(msg),
            None => ApiError::field(at, msg),
        }
    })
}

/// The dotted path of the first string (or key) holding a NUL character.
fn nul_path(v: &serde_json::Value, at: String) -> Option<String> {
    let join = |k: &str| {
        if at.is_empty() {
            k.to_string()
        } else {
            format!("{at}.{k}")
        }
    };
    match v {
        serde_json::Value::String(s) => s.contains('\0').then_some(at),
        serde_json::Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, x)| nul_path(x, join(&i.to_string()))),
        serde_json::Value::Object(m) => m.iter().find_map(|(k, x)| {
            if k.contains('\0') {
                Some(at.clone())
            } else {
                nul_path(x, join(k))
            }
        }),
        _ => None,
    }
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn ready(State(ctx): State<Arc<ServiceContext>>) -> Response {
    let db = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(&ctx.pool),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let nats = ctx
        .nats
        .as_ref()
        .is_some_and(|c| c.connection_state() == async_nats::connection::State::Connected);
    let status = if db && nats {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"status": if status == StatusCode::OK {"ready"} else {"unavailable"}, "database": db, "nats": nats}))).into_response()
}

async fn metrics_handler() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        prometheus().render(),
    )
        .into_response()
}

async fn track(State(service): State<&'static str>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let start = Instant::now();
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    let labels = [
        ("service", service.to_string()),
        ("method", method),
        ("route", route),
        ("status", status),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels[..3])
        .record(start.elapsed().as_secs_f64());
    res
}

/// Runs the request in its W3C trace context: the caller's `traceparent` when valid,
/// else a new trace. Outbox events and service calls made while handling it carry
/// the same trace id, so one lead's journey is one trace across services.
async fn trace_context(mut req: Request, next: Next) -> Response {
    let incoming = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| isp_events::trace::is_valid_traceparent(v))
        .map(str::to_owned);
    let tp = incoming.unwrap_or_else(new_traceparent);
    req.extensions_mut().insert(TraceParent(tp.clone()));
    let mut res = isp_events::trace::with_traceparent(Some(tp.clone()), next.run(req)).await;
    if let Ok(v) = header::HeaderValue::from_str(&tp) {
        res.headers_mut().insert("traceparent", v);
    }
    res
}

/// The request's trace context, for handlers that want it.
#[derive(Clone, Debug)]
pub struct TraceParent(pub String);

fn new_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace}-{span}-01")
}

fn panic_to_json(_: Box<dyn std::any::Any + Send + 'static>) -> Response<Body> {
    ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
}

/// Wraps a service's routes with the endpoints and middleware every service has:
/// `/api/<svc>/health`, `/ready`, `/metrics`, `/openapi.json`, `/docs`.
pub fn service_router(ctx: Arc<ServiceContext>, routes: Router, openapi: OpenApi) -> Router {
    prometheus();
    let prefix = ctx.api_prefix();
    // Swagger UI's config borrows for 'static; these strings are made once per service at start.
    let spec_url: &'static str = Box::leak(format!("{prefix}/openapi.json").into_boxed_str());
    let mut openapi = openapi;
    crate::openapi::complete(&mut openapi);
    let spec = Arc::new(openapi);
    let name = ctx.name;
    Router::new()
        .route(&format!("{prefix}/health"), get(health))
        .route(
            &format!("{prefix}/ready"),
            get(ready).with_state(ctx.clone()),
        )
        .route(&format!("{prefix}/metrics"), get(metrics_handler))
        .route(
            spec_url,
            get(move || {
                let spec = spec.clone();
                async move { Json((*spec).clone()) }
            }),
        )
        .merge(
            SwaggerUi::new(format!("{prefix}/docs"))
                .config(Config::new([Url::new(name, spec_url)])),
        )
        .merge(routes)
        .layer(middleware::from_fn(trace_context))
        .layer(middleware::from_fn_with_state(name, track))
        .layer(TraceLayer::new_for_http())
        .layer(CatchPanicLayer::custom(panic_to_json))
        .layer(RequestBodyLimitLayer::new(12 * 1024 * 1024))
}

/// One Swagger UI listing every service's document (the launcher's `/docs`).
pub fn fleet_docs(services: &[&'static str]) -> Router {
    let urls: Vec<Url> = services
        .iter()
        .map(|s| {
            Url::new(
                s,
                Box::leak(format!("/api/{s}/openapi.json").into_boxed_str()),
            )
        })
        .collect();
    Router::new().merge(SwaggerUi::new("/docs").config(Config::new(urls)))
}

/// JSON 404 for paths no service serves.
pub async fn not_found() -> ApiError {
    ApiError::not_found("Route")
}

/// Serves until `shutdown` fires, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let router = router.fallback(not_found);
    // The peer address is there for handlers that check a source allowlist
    // (wa-parser's SMS callback).
    let app = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Login {
        email: String,
        password: String,
        #[serde(default)]
        extra: Option<Inner>,
    }

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Inner {
        amount: i64,
    }

    fn err_of(body: &str) -> Vec<crate::error::FieldError> {
        parse_json_body::<Login>(body.as_bytes())
            .unwrap_err()
            .errors()
    }

    #[test]
    fn body_errors_name_the_field() {
        let e = err_of(r#"{"email": "a@b.co"}"#);
        assert_eq!(e[0].path.as_deref(), Some("password"), "{e:?}");
        assert_eq!(e[0].message, "password is required.");
        let e = err_of("");
        assert_eq!(e[0].path.as_deref(), Some("email"), "{e:?}");
        let e = err_of(r#"{"email": "a", "password": "b", "extra": {}}"#);
        assert_eq!(e[0].path.as_deref(), Some("extra.amount"), "{e:?}");
        let e = err_of(r#"{"email": 5, "password": "b"}"#);
        assert_eq!(e[0].path.as_deref(), Some("email"), "{e:?}");
        let e = err_of(r#"{"email": "a\u0000", "password": "b"}"#);
        assert_eq!(e[0].path.as_deref(), Some("email"), "{e:?}");
        assert!(e[0].message.contains("NUL"));
        let e = err_of("{oops");
        assert_eq!(e[0].path, None);
        assert!(parse_json_body::<Login>(br#"{"email": "a", "password": "b"}"#).is_ok());
    }
}
