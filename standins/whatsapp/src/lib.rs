//! A local stand-in for the WhatsApp Business Cloud API, speaking its wire format
//! (INTEGRATIONS.md "WhatsApp Business Cloud API", GATEWAYS.md section 4):
//!
//! - the messages endpoint `POST /<version>/<phone_number_id>/messages` with a
//!   Bearer token, answering `{messaging_product, contacts:[{input, wa_id}],
//!   messages:[{id:"wamid…"}]}` or a Graph API error object, and recording what
//!   was sent so tests can see the partner's reply;
//! - builders for the webhooks Meta POSTs to us (text messages, with a phone
//!   number, a business-scoped user id or both; non-text messages; statuses) and
//!   their `X-Hub-Signature-256`.
//!
//! Tests, the benchmark and a developer's `script/server` all use it; nothing in
//! production does.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

/// The Graph API version the stand-in serves (any version path is accepted).
pub const VERSION: &str = "v21.0";

/// One message our platform sent through the stand-in.
#[derive(Debug, Clone)]
pub struct Sent {
    pub phone_number_id: String,
    pub body: Value,
    pub message_id: String,
}

impl Sent {
    /// `to` (a phone number) or `recipient` (a business-scoped user id).
    pub fn recipient(&self) -> Option<&str> {
        self.body["to"]
            .as_str()
            .or_else(|| self.body["recipient"].as_str())
    }
    pub fn text(&self) -> &str {
        self.body["text"]["body"].as_str().unwrap_or_default()
    }
}

#[derive(Clone)]
struct Inner {
    token: String,
    sent: Arc<Mutex<Vec<Sent>>>,
}

/// A running stand-in on 127.0.0.1 (a port of its own).
pub struct WhatsAppStandIn {
    /// `http://127.0.0.1:<port>/<version>`: what the platform's Cloud API base URL is set to.
    pub api_base: String,
    pub token: String,
    sent: Arc<Mutex<Vec<Sent>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WhatsAppStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WhatsAppStandIn {
    /// Starts on a free port; requests must carry `Authorization: Bearer <token>`.
    pub async fn start(token: &str) -> anyhow::Result<Self> {
        Self::bind("127.0.0.1:0", token).await
    }

    pub async fn bind(addr: &str, token: &str) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let sent = Arc::new(Mutex::new(vec![]));
        let inner = Inner {
            token: token.to_string(),
            sent: sent.clone(),
        };
        let app = Router::new()
            .route("/{version}/{phone_number_id}/messages", post(messages))
            .with_state(inner);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            api_base: format!("http://{addr}/{VERSION}"),
            token: token.to_string(),
            sent,
            task,
        })
    }

    /// Everything sent so far, oldest first.
    pub fn sent(&self) -> Vec<Sent> {
        self.sent.lock().expect("stand-in lock").clone()
    }

    /// Messages sent to `recipient` (a number without `+`, as WhatsApp writes it, or a BSUID).
    pub fn sent_to(&self, recipient: &str) -> Vec<Sent> {
        self.sent()
            .into_iter()
            .filter(|s| s.recipient() == Some(recipient))
            .collect()
    }
}

/// A Graph API error, as the Cloud API answers one.
fn graph_error(status: StatusCode, code: u32, kind: &str, message: &str) -> (StatusCode, Json<Value>) {
    (
        status,
        Json(json!({"error": {
            "message": message,
            "type": kind,
            "code": code,
            "fbtrace_id": uuid::Uuid::new_v4().simple().to_string(),
        }})),
    )
}

async fn messages(
    State(s): State<Inner>,
    Path((_version, phone_number_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, Json<Value>) {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if auth != Some(s.token.as_str()) {
        return graph_error(
            StatusCode::UNAUTHORIZED,
            190,
            "OAuthException",
            "Invalid OAuth access token - Cannot parse access token",
        );
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return graph_error(StatusCode::BAD_REQUEST, 100, "OAuthException", "(#100) Invalid JSON");
    };
    let recipient = body["to"].as_str().or_else(|| body["recipient"].as_str());
    let text = body["text"]["body"].as_str().unwrap_or_default();
    if body["messaging_product"] != "whatsapp"
        || recipient.is_none_or(str::is_empty)
        || body["type"] != "text"
        || text.is_empty()
        || text.chars().count() > 4096
    {
        return graph_error(
            StatusCode::BAD_REQUEST,
            100,
            "OAuthException",
            "(#100) Invalid parameter",
        );
    }
    let recipient = recipient.unwrap_or_default().to_string();
    let message_id = format!("wamid.{}", uuid::Uuid::new_v4().simple());
    s.sent.lock().expect("stand-in lock").push(Sent {
        phone_number_id,
        body: body.clone(),
        message_id: message_id.clone(),
    });
    (
        StatusCode::OK,
        Json(json!({
            "messaging_product": "whatsapp",
            "contacts": [{"input": recipient, "wa_id": recipient.trim_start_matches('+')}],
            "messages": [{"id": message_id}],
        })),
    )
}

/// `X-Hub-Signature-256` for `body`: `sha256=<hex HMAC-SHA256(app secret, raw body)>`.
pub fn sign(app_secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, app_secret.as_bytes());
    format!("sha256={}", hex::encode(ring::hmac::sign(&key, body).as_ref()))
}

/// Who sent a message: a phone number (`wa_id`/`from`, digits without `+`), a
/// business-scoped user id (a user with a username), or both.
#[derive(Debug, Clone, Default)]
pub struct Sender {
    pub wa_id: Option<String>,
    pub user_id: Option<String>,
    pub name: String,
}

impl Sender {
    pub fn phone(wa_id: &str) -> Self {
        Sender {
            wa_id: Some(wa_id.trim_start_matches('+').to_string()),
            user_id: None,
            name: "Caretaker".into(),
        }
    }
    pub fn bsuid(user_id: &str) -> Self {
        Sender {
            wa_id: None,
            user_id: Some(user_id.to_string()),
            name: "Caretaker".into(),
        }
    }
    pub fn both(wa_id: &str, user_id: &str) -> Self {
        Sender {
            user_id: Some(user_id.to_string()),
            ..Sender::phone(wa_id)
        }
    }
}

fn envelope(value: Value) -> Value {
    json!({
        "object": "whatsapp_business_account",
        "entry": [{
            "id": "102290129340398",
            "changes": [{"field": "messages", "value": value}],
        }],
    })
}

fn now_unix() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
        .to_string()
}

fn contact(s: &Sender) -> Value {
    let mut c = json!({"profile": {"name": s.name}});
    if let Some(w) = &s.wa_id {
        c["wa_id"] = json!(w);
    }
    if let Some(u) = &s.user_id {
        c["user_id"] = json!(u);
    }
    c
}

fn message(s: &Sender, id: &str, kind: &str) -> Value {
    let mut m = json!({"id": id, "timestamp": now_unix(), "type": kind});
    if let Some(w) = &s.wa_id {
        m["from"] = json!(w);
    }
    if let Some(u) = &s.user_id {
        m["from_user_id"] = json!(u);
    }
    m
}

fn value(phone_number_id: &str, s: &Sender, messages: Vec<Value>) -> Value {
    json!({
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "254700000000", "phone_number_id": phone_number_id},
        "contacts": [contact(s)],
        "messages": messages,
    })
}

/// A webhook carrying one text message.
pub fn text_webhook(phone_number_id: &str, s: &Sender, id: &str, text: &str) -> Value {
    let mut m = message(s, id, "text");
    m["text"] = json!({"body": text});
    envelope(value(phone_number_id, s, vec![m]))
}

/// A webhook carrying one image (a non-text message).
pub fn image_webhook(phone_number_id: &str, s: &Sender, id: &str) -> Value {
    let mut m = message(s, id, "image");
    m["image"] = json!({"mime_type": "image/jpeg", "sha256": "abc", "id": "1234567890"});
    envelope(value(phone_number_id, s, vec![m]))
}

/// A delivery status update (no message).
pub fn status_webhook(phone_number_id: &str, message_id: &str, recipient: &str, status: &str) -> Value {
    envelope(json!({
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "254700000000", "phone_number_id": phone_number_id},
            "statuses": [{
                "id": message_id,
                "status": status,
                "timestamp": now_unix(),
                "recipient_id": recipient,
                "pricing": {"billable": true, "pricing_model": "PMP", "category": "service"},
            }],
    }))
}
