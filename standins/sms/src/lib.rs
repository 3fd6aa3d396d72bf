//! Stand-ins for the gateways Notify talks to, for tests and for running the
//! platform on one machine with no accounts. Each speaks the real wire format
//! (../shared/INTEGRATIONS.md, GATEWAYS.md section 3):
//!
//! - Africa's Talking: `POST /version1/messaging` (form, `apiKey` header, 201 with
//!   `SMSMessageData.Recipients[]`), then a form-encoded delivery report to the
//!   configured callback URL.
//! - Twilio: `POST /2010-04-01/Accounts/{Sid}/Messages.json` (Basic auth, form,
//!   201 with the Message resource; 400 with `{code, message}` errors), then
//!   `sent` and final status callbacks to the message's `StatusCallback`, signed
//!   with `X-Twilio-Signature`.
//! - SMTP: a sink that accepts mail and keeps it (RFC 5321's small subset a client
//!   needs: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT).
//!
//! Faults are switched on per test: the next N sends answer 500, a number is
//! invalid, a number has opted out (Twilio 21610), an address is refused.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

/// Credentials and behaviour of the stand-ins.
#[derive(Debug, Clone)]
pub struct Options {
    pub at_username: String,
    pub at_api_key: String,
    /// Where Africa's Talking delivery reports go (the dashboard setting in real life).
    pub at_delivery_callback: Option<String>,
    /// The report's `status`: `Success` (delivered), `Failed`, `Rejected`, `Expired`, ...
    pub at_report_status: String,
    pub twilio_account_sid: String,
    pub twilio_auth_token: String,
    /// The final Twilio status after `sent`: `delivered`, `undelivered`, `failed`.
    pub twilio_final_status: String,
    /// Pause before each callback, like a network's delivery receipt.
    pub report_delay: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            at_username: "sandbox".into(),
            at_api_key: "standin-at-api-key".into(),
            at_delivery_callback: None,
            at_report_status: "Success".into(),
            twilio_account_sid: "AC00000000000000000000000000000000".into(),
            twilio_auth_token: "standin-twilio-auth-token".into(),
            twilio_final_status: "delivered".into(),
            report_delay: Duration::from_millis(50),
        }
    }
}

/// One SMS as a gateway received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sms {
    /// `africastalking` | `twilio`
    pub gateway: &'static str,
    pub to: String,
    pub from: Option<String>,
    pub message: String,
    /// The id the gateway answered with.
    pub message_id: String,
}

/// One email as the SMTP sink received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Email {
    pub from: String,
    pub to: Vec<String>,
    /// The DATA section as sent (headers and body, dot-unstuffed).
    pub data: String,
}

#[derive(Default)]
struct Inner {
    sms: Vec<Sms>,
    emails: Vec<Email>,
    /// Every send request, including the ones answered with an error.
    attempts: u64,
    fail_next: u32,
    invalid: HashSet<String>,
    opted_out: HashSet<String>,
    refused_addresses: HashSet<String>,
    /// Delivery reports posted and the status their callback answered.
    callbacks: Vec<(String, u16)>,
    /// Replaces `Options::at_delivery_callback` once the receiver's address is known.
    at_delivery_callback: Option<String>,
}

#[derive(Clone)]
struct Shared {
    opts: Options,
    inner: Arc<Mutex<Inner>>,
    http: reqwest::Client,
}

/// The running stand-ins. Dropping it stops them.
pub struct StandIns {
    /// `http://127.0.0.1:<port>`: both Africa's Talking and Twilio live here.
    pub base_url: String,
    pub smtp_addr: SocketAddr,
    shared: Shared,
    shutdown: CancellationToken,
}

impl Drop for StandIns {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl StandIns {
    /// Binds 127.0.0.1 on free ports.
    pub async fn start(opts: Options) -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?, opts).await
    }

    pub async fn start_on(
        http: SocketAddr,
        smtp: SocketAddr,
        opts: Options,
    ) -> anyhow::Result<Self> {
        let shared = Shared {
            opts,
            inner: Arc::default(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        };
        let shutdown = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind(http).await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let app = Router::new()
            .route("/version1/messaging", post(at_send))
            .route(
                "/2010-04-01/Accounts/{sid}/Messages.json",
                post(twilio_send),
            )
            .with_state(shared.clone());
        let sd = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { sd.cancelled().await })
                .await;
        });
        let smtp_listener = tokio::net::TcpListener::bind(smtp).await?;
        let smtp_addr = smtp_listener.local_addr()?;
        tokio::spawn(smtp_sink(smtp_listener, shared.clone(), shutdown.clone()));
        Ok(Self {
            base_url,
            smtp_addr,
            shared,
            shutdown,
        })
    }

    /// Points Africa's Talking's delivery reports at `url` (the dashboard setting),
    /// for receivers whose address is known only after the stand-in started.
    pub fn set_at_delivery_callback(&self, url: impl Into<String>) {
        self.shared.inner.lock().unwrap().at_delivery_callback = Some(url.into());
    }

    pub fn options(&self) -> &Options {
        &self.shared.opts
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.inner.lock().expect("stand-in state")
    }

    /// The next `n` SMS send requests (either gateway) answer HTTP 500.
    pub fn fail_next(&self, n: u32) {
        self.inner().fail_next = n;
    }
    /// Sends to this number are refused as an invalid number (AT 403
    /// InvalidPhoneNumber, Twilio 21211).
    pub fn mark_invalid(&self, number: &str) {
        self.inner().invalid.insert(number.to_string());
    }
    /// Twilio refuses this number with 21610 (it replied STOP); AT with 406.
    pub fn mark_opted_out(&self, number: &str) {
        self.inner().opted_out.insert(number.to_string());
    }
    /// The SMTP sink refuses this recipient with 550.
    pub fn refuse_address(&self, address: &str) {
        self.inner()
            .refused_addresses
            .insert(address.to_ascii_lowercase());
    }
    /// SMS accepted so far, in order.
    pub fn sms(&self) -> Vec<Sms> {
        self.inner().sms.clone()
    }
    /// Emails accepted so far, in order.
    pub fn emails(&self) -> Vec<Email> {
        self.inner().emails.clone()
    }
    /// SMS send requests received, including refused and failed ones.
    pub fn attempts(&self) -> u64 {
        self.inner().attempts
    }
    /// Delivery callbacks made: (URL, HTTP status it answered).
    pub fn callbacks(&self) -> Vec<(String, u16)> {
        self.inner().callbacks.clone()
    }
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn field<'a>(f: &'a [(String, String)], name: &str) -> Option<&'a str> {
    f.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Counts the attempt; true if this one is to fail with a 500.
fn take_failure(s: &Shared) -> bool {
    let mut g = s.inner.lock().expect("state");
    g.attempts += 1;
    if g.fail_next > 0 {
        g.fail_next -= 1;
        true
    } else {
        false
    }
}

async fn at_send(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if take_failure(&s) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response();
    }
    let key = headers
        .get("apikey")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let f = form(&body);
    if key != s.opts.at_api_key || field(&f, "username") != Some(s.opts.at_username.as_str()) {
        return (
            StatusCode::UNAUTHORIZED,
            "The supplied authentication is invalid",
        )
            .into_response();
    }
    let (Some(to), Some(message)) = (field(&f, "to"), field(&f, "message")) else {
        return (
            StatusCode::BAD_REQUEST,
            "Request is missing required form field 'to'",
        )
            .into_response();
    };
    let from = field(&f, "from").map(str::to_string);
    let mut recipients = vec![];
    let mut accepted = vec![];
    for number in to.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let (invalid, opted_out) = {
            let g = s.inner.lock().expect("state");
            (g.invalid.contains(number), g.opted_out.contains(number))
        };
        if invalid {
            recipients.push(
                json!({"statusCode": 403, "number": number, "status": "InvalidPhoneNumber",
                                    "cost": "0", "messageId": "None"}),
            );
        } else if opted_out {
            recipients.push(
                json!({"statusCode": 406, "number": number, "status": "UserInBlacklist",
                                    "cost": "0", "messageId": "None"}),
            );
        } else {
            let id = format!("ATXid_{}", uuid::Uuid::new_v4().simple());
            recipients.push(
                json!({"statusCode": 101, "number": number, "status": "Success",
                                    "cost": "KES 0.8000", "messageId": id}),
            );
            s.inner.lock().expect("state").sms.push(Sms {
                gateway: "africastalking",
                to: number.to_string(),
                from: from.clone(),
                message: message.to_string(),
                message_id: id.clone(),
            });
            accepted.push((id, number.to_string()));
        }
    }
    let n = accepted.len();
    let url = s.inner.lock().unwrap().at_delivery_callback.clone();
    if let Some(url) = url.or_else(|| s.opts.at_delivery_callback.clone()) {
        for (id, number) in accepted {
            let s = s.clone();
            let url = url.clone();
            tokio::spawn(async move {
                tokio::time::sleep(s.opts.report_delay).await;
                let mut report = vec![
                    ("id", id),
                    ("status", s.opts.at_report_status.clone()),
                    ("phoneNumber", number),
                    ("networkCode", "99999".to_string()),
                ];
                if matches!(s.opts.at_report_status.as_str(), "Failed" | "Rejected") {
                    report.push(("failureReason", "DeliveryFailure".into()));
                }
                post_callback(&s, &url, &report, None).await;
            });
        }
    }
    (
        StatusCode::CREATED,
        Json(json!({"SMSMessageData": {
            "Message": format!("Sent to {n}/{} Total Cost: KES {:.4}", recipients.len(), 0.8 * n as f64),
            "Recipients": recipients,
        }})),
    )
        .into_response()
}

/// Posts a form-encoded callback, retrying a few times like the gateways do.
async fn post_callback(
    s: &Shared,
    url: &str,
    fields: &[(&str, String)],
    signature: Option<String>,
) {
    for attempt in 0..5u32 {
        let mut req = s.http.post(url).form(fields);
        if let Some(sig) = &signature {
            req = req.header("X-Twilio-Signature", sig);
        }
        let status = req.send().await.map(|r| r.status().as_u16()).unwrap_or(0);
        s.inner
            .lock()
            .expect("state")
            .callbacks
            .push((url.to_string(), status));
        if (200..300).contains(&status) || (400..500).contains(&status) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt))).await;
    }
}

/// Twilio's `X-Twilio-Signature`: base64(HMAC-SHA1(auth token, URL + sorted
/// name/value pairs)).
pub fn twilio_signature(auth_token: &str, url: &str, params: &[(&str, String)]) -> String {
    let mut sorted: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    sorted.sort();
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(auth_token.as_bytes()).expect("key");
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn twilio_error(status: StatusCode, code: u32, message: &str) -> Response {
    (
        status,
        Json(json!({"code": code, "message": message,
                    "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
                    "status": status.as_u16()})),
    )
        .into_response()
}

async fn twilio_send(
    State(s): State<Shared>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if take_failure(&s) {
        return twilio_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            20500,
            "Internal Server Error",
        );
    }
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            s.opts.twilio_account_sid, s.opts.twilio_auth_token
        ))
    );
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if given != expected || sid != s.opts.twilio_account_sid {
        return twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    let f = form(&body);
    let Some(to) = field(&f, "To").map(str::to_string) else {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21604,
            "A 'To' phone number is required.",
        );
    };
    let Some(text) = field(&f, "Body").map(str::to_string) else {
        return twilio_error(StatusCode::BAD_REQUEST, 21602, "Message body is required.");
    };
    let from = field(&f, "From")
        .or(field(&f, "MessagingServiceSid"))
        .map(str::to_string);
    if from.is_none() {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21603,
            "A 'From' phone number is required.",
        );
    }
    let (invalid, opted_out) = {
        let g = s.inner.lock().expect("state");
        (g.invalid.contains(&to), g.opted_out.contains(&to))
    };
    if invalid {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21211,
            &format!("The 'To' number {to} is not a valid phone number."),
        );
    }
    if opted_out {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21610,
            "Attempt to send to unsubscribed recipient",
        );
    }
    let msid = format!("SM{}", uuid::Uuid::new_v4().simple());
    s.inner.lock().expect("state").sms.push(Sms {
        gateway: "twilio",
        to: to.clone(),
        from: from.clone(),
        message: text.clone(),
        message_id: msid.clone(),
    });
    if let Some(cb) = field(&f, "StatusCallback").map(str::to_string) {
        let s2 = s.clone();
        let (msid2, to2, from2) = (msid.clone(), to.clone(), from.clone().unwrap_or_default());
        tokio::spawn(async move {
            for status in ["sent".to_string(), s2.opts.twilio_final_status.clone()] {
                tokio::time::sleep(s2.opts.report_delay).await;
                let mut fields = vec![
                    ("MessageSid", msid2.clone()),
                    ("SmsSid", msid2.clone()),
                    ("MessageStatus", status.clone()),
                    ("SmsStatus", status.clone()),
                    ("AccountSid", s2.opts.twilio_account_sid.clone()),
                    ("From", from2.clone()),
                    ("To", to2.clone()),
                    ("ApiVersion", "2010-04-01".to_string()),
                ];
                if status == "undelivered" || status == "failed" {
                    fields.push(("ErrorCode", "30003".into()));
                }
                if status == "delivered" || status == "undelivered" {
                    fields.push((
                        "RawDlrDoneDate",
                        chrono::Utc::now().format("%y%m%d%H%M").to_string(),
                    ));
                }
                let sig = twilio_signature(&s2.opts.twilio_auth_token, &cb, &fields);
                post_callback(&s2, &cb, &fields, Some(sig)).await;
            }
        });
    }
    let now = chrono::Utc::now().to_rfc2822();
    (
        StatusCode::CREATED,
        Json(json!({
            "account_sid": s.opts.twilio_account_sid, "api_version": "2010-04-01",
            "body": text, "date_created": now, "date_sent": null, "date_updated": now,
            "direction": "outbound-api", "error_code": null, "error_message": null,
            "from": from, "messaging_service_sid": field(&f, "MessagingServiceSid"),
            "num_media": "0", "num_segments": "1", "price": null, "price_unit": "USD",
            "sid": msid, "status": "queued", "to": to,
            "uri": format!("/2010-04-01/Accounts/{sid}/Messages/{msid}.json"),
        })),
    )
        .into_response()
}

async fn smtp_sink(listener: tokio::net::TcpListener, s: Shared, shutdown: CancellationToken) {
    loop {
        let conn = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = listener.accept() => c,
        };
        let Ok((stream, _)) = conn else { continue };
        let s = s.clone();
        tokio::spawn(async move {
            let _ = smtp_session(stream, s).await;
        });
    }
}

/// One SMTP session. Hand-written: a stand-in needs the few commands a client
/// sends, and an embedded server crate would bring its own threads and TLS.
async fn smtp_session(stream: tokio::net::TcpStream, s: Shared) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 standin.local ESMTP sink\r\n").await?;
    let (mut from, mut to, mut line) = (String::new(), Vec::<String>::new(), String::new());
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_string();
        let upper = cmd.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-standin.local\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 AUTH PLAIN LOGIN\r\n"
        } else if upper.starts_with("HELO") {
            b"250 standin.local\r\n"
        } else if upper.starts_with("AUTH") {
            b"235 2.7.0 Authentication successful\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            from = angle(&cmd[10..]);
            to.clear();
            b"250 2.1.0 OK\r\n"
        } else if upper.starts_with("RCPT TO:") {
            let rcpt = angle(&cmd[8..]);
            if s.inner
                .lock()
                .expect("state")
                .refused_addresses
                .contains(&rcpt.to_ascii_lowercase())
            {
                b"550 5.1.1 No such user here\r\n"
            } else {
                to.push(rcpt);
                b"250 2.1.5 OK\r\n"
            }
        } else if upper == "DATA" {
            w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                .await?;
            let mut data = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
            }
            s.inner.lock().expect("state").emails.push(Email {
                from: from.clone(),
                to: std::mem::take(&mut to),
                data,
            });
            b"250 2.0.0 OK queued\r\n"
        } else if upper == "RSET" {
            to.clear();
            b"250 2.0.0 OK\r\n"
        } else if upper == "NOOP" {
            b"250 2.0.0 OK\r\n"
        } else if upper == "QUIT" {
            w.write_all(b"221 2.0.0 Bye\r\n").await?;
            return Ok(());
        } else {
            b"502 5.5.2 Command not recognized\r\n"
        };
        w.write_all(reply).await?;
    }
}

fn angle(s: &str) -> String {
    let s = s.trim();
    let inner = s
        .strip_prefix('<')
        .and_then(|x| x.split_once('>'))
        .map(|(a, _)| a)
        .unwrap_or(s);
    inner.to_string()
}
