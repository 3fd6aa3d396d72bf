//! A local Safaricom Daraja: the endpoints the M-Pesa service uses, in Daraja's
//! wire format (field names, string-or-number quirks, error bodies, the misspelt
//! `OriginatorCoversationID`), with its asynchronous callbacks sent after a short
//! delay. Tests start it in-process ([`Standin::spawn`]); `script/server` runs the
//! `daraja-standin` binary so anyone can pay an invoice on one machine.
//!
//! Outcomes are chosen the way Safaricom's sandbox lets testers choose them:
//!
//! | STK push | outcome |
//! |---|---|
//! | Amount 1032 / 1037 / 2001 / 1019 / 17 | callback with that ResultCode |
//! | Amount 1001 | ResultCode 1 (insufficient balance) |
//! | PhoneNumber 254700000500 | ResultCode `"SFC_IC0003"` (a string, as seen in production) |
//! | PhoneNumber 254700000404 | paid, but the callback is lost (only the STK query and Pull Transactions know) |
//! | anything else | paid after the delay, ResultCode 0 with a receipt |
//!
//! C2B simulate: Msisdn 254700000404 completes the payment without calling the
//! confirmation URL (Pull Transactions finds it). B2C: Amount 1111 sends the
//! queue-timeout callback and completes the payment (Transaction Status finds it);
//! 2040 fails (unregistered customer); a SecurityCredential that does not decrypt to
//! the initiator password fails with 2001. STK queries before the delay answer
//! `500.001.1001 "The transaction is being processed"`, as Daraja does.
//!
//! Control endpoints for tests (not Daraja's): `GET /standin/callbacks` (every
//! callback sent: url and body), `POST /standin/expire-token` (the current token
//! stops working, as when another client fetched a new one), `GET /standin/stats`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use chrono::{DateTime, Utc};
use rsa::pkcs8::DecodePrivateKey;
use rsa::{Pkcs1v15Encrypt, RsaPrivateKey};
use serde_json::{json, Value};
use sha2::Digest;

/// The certificate the stand-in's initiator credential is encrypted with (a test
/// certificate made for this stand-in; its private key is [`KEY_PEM`]).
pub const CERT_PEM: &str = include_str!("../certs/standin-cert.pem");
const KEY_PEM: &str = include_str!("../certs/standin-key.pem");

/// Daraja's sandbox passkey, the stand-in's default.
pub const SANDBOX_PASSKEY: &str =
    "bfb279f9aa9bdbcf158e97dd71a467cd2e0c893059b10f78e6b72ada1ed2c919";

#[derive(Debug, Clone)]
pub struct Config {
    pub consumer_key: String,
    pub consumer_secret: String,
    pub shortcode: String,
    pub passkey: String,
    pub initiator_name: String,
    pub initiator_password: String,
    /// How long the "customer" takes before Daraja calls back.
    pub callback_delay: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            consumer_key: "standin-consumer-key".into(),
            consumer_secret: "standin-consumer-secret".into(),
            shortcode: "174379".into(),
            passkey: SANDBOX_PASSKEY.into(),
            initiator_name: "testapi".into(),
            initiator_password: "Safaricom123!!".into(),
            callback_delay: Duration::from_millis(300),
        }
    }
}

/// A completed payment into the shortcode (what Pull Transactions and
/// Transaction Status report).
#[derive(Debug, Clone)]
struct Completed {
    receipt: String,
    msisdn: String,
    amount: i64,
    bill_ref: String,
    at: DateTime<Utc>,
    kind: &'static str,
}

#[derive(Debug, Clone)]
struct Stk {
    merchant: String,
    decides_at: DateTime<Utc>,
    code: Value,
    desc: String,
}

#[derive(Debug, Clone)]
struct Payout {
    receipt: Option<String>,
    amount: i64,
    party_b: String,
    at: DateTime<Utc>,
}

#[derive(Default)]
struct Inner {
    token: Option<(String, DateTime<Utc>)>,
    tokens_issued: u64,
    stk: HashMap<String, Stk>,
    completed: Vec<Completed>,
    c2b_urls: HashMap<String, (String, String, String)>,
    b2c_ids: HashSet<String>,
    payouts: HashMap<String, Payout>,
    callbacks: Vec<Value>,
}

#[derive(Clone)]
struct St {
    cfg: Arc<Config>,
    key: Arc<RsaPrivateKey>,
    inner: Arc<Mutex<Inner>>,
    http: reqwest::Client,
}

/// A running stand-in.
pub struct Standin {
    /// `http://127.0.0.1:<port>`
    pub base: String,
    pub config: Config,
    state: St,
}

impl Standin {
    /// Binds 127.0.0.1 on a free port and serves until the runtime ends.
    pub async fn spawn(config: Config) -> anyhow::Result<Standin> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Self::serve(listener, config).await
    }

    pub async fn serve(
        listener: tokio::net::TcpListener,
        config: Config,
    ) -> anyhow::Result<Standin> {
        let base = format!("http://{}", listener.local_addr()?);
        let state = St {
            cfg: Arc::new(config.clone()),
            key: Arc::new(RsaPrivateKey::from_pkcs8_pem(KEY_PEM)?),
            inner: Arc::new(Mutex::new(Inner::default())),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        };
        let app = router(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Standin {
            base,
            config,
            state,
        })
    }

    /// Every callback sent so far: `{url, body}`.
    pub fn callbacks(&self) -> Vec<Value> {
        self.state.inner.lock().expect("lock").callbacks.clone()
    }

    pub fn tokens_issued(&self) -> u64 {
        self.state.inner.lock().expect("lock").tokens_issued
    }

    /// Makes the current token invalid, as another client's token request would.
    pub fn expire_token(&self) {
        self.state.inner.lock().expect("lock").token = None;
    }
}

fn router(state: St) -> Router {
    Router::new()
        .route("/oauth/v1/generate", get(oauth))
        .route("/mpesa/stkpush/v1/processrequest", post(stk_push))
        .route("/mpesa/stkpushquery/v1/query", post(stk_query))
        .route("/mpesa/c2b/v2/registerurl", post(c2b_register))
        .route("/mpesa/c2b/v1/registerurl", post(c2b_register))
        .route("/mpesa/c2b/v2/simulate", post(c2b_simulate))
        .route("/mpesa/c2b/v1/simulate", post(c2b_simulate))
        .route("/pulltransactions/v1/register", post(pull_register))
        .route("/pulltransactions/v1/query", post(pull_query))
        .route("/mpesa/b2c/v3/paymentrequest", post(b2c))
        .route("/mpesa/transactionstatus/v1/query", post(tx_status))
        .route("/standin/callbacks", get(callbacks))
        .route("/standin/expire-token", post(expire))
        .route("/standin/stats", get(stats))
        .with_state(state)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"requestId": uuid::Uuid::new_v4().simple().to_string(), "errorCode": code, "errorMessage": message})),
    )
        .into_response()
}

fn eat_now() -> chrono::DateTime<chrono_tz::Tz> {
    Utc::now().with_timezone(&chrono_tz::Africa::Nairobi)
}

/// Ten upper-case letters and digits, like `NLJ7RT61SV`.
fn receipt() -> String {
    use rand::Rng;
    const CH: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut r = rand::thread_rng();
    let mut s = String::from("T");
    for _ in 0..9 {
        s.push(CH[r.gen_range(0..CH.len())] as char);
    }
    s
}

async fn oauth(
    State(s): State<St>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if q.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return error(
            StatusCode::BAD_REQUEST,
            "400.008.02",
            "Invalid grant type passed",
        );
    }
    let want = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", s.cfg.consumer_key, s.cfg.consumer_secret));
    let got = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "));
    if got != Some(want.as_str()) {
        return error(
            StatusCode::BAD_REQUEST,
            "400.008.01",
            "Invalid Authentication passed",
        );
    }
    let token = uuid::Uuid::new_v4().simple().to_string()[..28].to_string();
    let mut inner = s.inner.lock().expect("lock");
    // A new token replaces the consumer key's previous one, as on Daraja.
    inner.token = Some((token.clone(), Utc::now() + chrono::Duration::seconds(3599)));
    inner.tokens_issued += 1;
    Json(json!({"access_token": token, "expires_in": "3599"})).into_response()
}

// The error is the answer itself, returned at once: its size does not matter.
#[allow(clippy::result_large_err)]
fn authorized(s: &St, headers: &HeaderMap) -> Result<(), Response> {
    let got = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let inner = s.inner.lock().expect("lock");
    match (&inner.token, got) {
        (Some((t, exp)), Some(g)) if t == g && *exp > Utc::now() => Ok(()),
        _ => Err(error(
            StatusCode::NOT_FOUND,
            "404.001.03",
            "Invalid Access Token",
        )),
    }
}

#[allow(clippy::result_large_err)]
fn json_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, Response> {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/json") {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "400.002.02",
            "Bad Request - Invalid Content-Type",
        ));
    }
    serde_json::from_slice(body).map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            "400.002.02",
            "Bad Request - Invalid Body",
        )
    })
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

/// Daraja takes numbers as JSON numbers or strings.
fn int_of(v: &Value, k: &str) -> Option<i64> {
    match &v[k] {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse::<f64>().ok().map(|f| f as i64),
        _ => None,
    }
}

fn password_ok(s: &St, v: &Value) -> bool {
    let want = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}{}{}",
        str_of(v, "BusinessShortCode"),
        s.cfg.passkey,
        str_of(v, "Timestamp")
    ));
    str_of(v, "BusinessShortCode") == s.cfg.shortcode && str_of(v, "Password") == want
}

fn spawn_callback(s: &St, url: String, body: Value, delay: Duration) {
    let s = s.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        s.inner
            .lock()
            .expect("lock")
            .callbacks
            .push(json!({"url": url, "body": body}));
        if let Err(e) = s.http.post(&url).json(&body).send().await {
            tracing::warn!(%url, "stand-in callback failed: {e}");
        }
    });
}

async fn stk_push(State(s): State<St>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return r;
    }
    let v = match json_body(&headers, &body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mut bad = vec![];
    for k in [
        "BusinessShortCode",
        "Password",
        "Timestamp",
        "TransactionType",
        "PartyA",
        "PartyB",
        "PhoneNumber",
        "CallBackURL",
        "AccountReference",
    ] {
        if str_of(&v, k).is_empty() {
            bad.push(k);
        }
    }
    let amount = int_of(&v, "Amount");
    if let Some(k) = bad.first() {
        return error(
            StatusCode::BAD_REQUEST,
            "400.002.02",
            &format!("Bad Request - Invalid {k}"),
        );
    }
    let Some(amount) = amount.filter(|a| (1..=250_000).contains(a)) else {
        return error(
            StatusCode::BAD_REQUEST,
            "400.002.02",
            "Bad Request - Invalid Amount",
        );
    };
    if str_of(&v, "AccountReference").chars().count() > 12 {
        return error(
            StatusCode::BAD_REQUEST,
            "400.002.02",
            "Bad Request - Invalid AccountReference",
        );
    }
    if !password_ok(&s, &v) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "500.001.1001",
            "Wrong credentials",
        );
    }
    let phone = str_of(&v, "PhoneNumber").to_string();
    let merchant = format!("{}-{}-1", rand::random::<u16>(), rand::random::<u32>());
    let checkout = format!(
        "ws_CO_{}{}",
        eat_now().format("%d%m%Y%H%M%S"),
        rand::random::<u32>()
    );
    let (code, desc): (Value, &str) = match (amount, phone.as_str()) {
        (_, "254700000500") => (json!("SFC_IC0003"), "Operator does not exist"),
        (1032, _) => (json!(1032), "Request cancelled by user"),
        (1037, _) => (json!(1037), "DS timeout user cannot be reached"),
        (2001, _) => (json!(2001), "The initiator information is invalid."),
        (1019, _) => (json!(1019), "Transaction has expired"),
        (17, _) => (json!(17), "Rule limited."),
        (1001, _) => (json!(1), "The balance is insufficient for the transaction."),
        _ => (json!(0), "The service request is processed successfully."),
    };
    let decides_at =
        Utc::now() + chrono::Duration::from_std(s.cfg.callback_delay).unwrap_or_default();
    let mut cb = json!({"Body": {"stkCallback": {
        "MerchantRequestID": merchant, "CheckoutRequestID": checkout,
        "ResultCode": code, "ResultDesc": desc}}});
    if code == json!(0) {
        let r = receipt();
        let at = decides_at.with_timezone(&chrono_tz::Africa::Nairobi);
        cb["Body"]["stkCallback"]["CallbackMetadata"] = json!({"Item": [
            {"Name": "Amount", "Value": amount as f64},
            {"Name": "MpesaReceiptNumber", "Value": r},
            {"Name": "Balance"},
            {"Name": "TransactionDate", "Value": at.format("%Y%m%d%H%M%S").to_string().parse::<i64>().unwrap_or(0)},
            {"Name": "PhoneNumber", "Value": phone.parse::<i64>().unwrap_or(0)},
        ]});
        s.inner.lock().expect("lock").completed.push(Completed {
            receipt: r,
            msisdn: phone.clone(),
            amount,
            bill_ref: str_of(&v, "AccountReference").to_string(),
            at: decides_at,
            kind: "Pay Bill",
        });
    }
    s.inner.lock().expect("lock").stk.insert(
        checkout.clone(),
        Stk {
            merchant: merchant.clone(),
            decides_at,
            code,
            desc: desc.to_string(),
        },
    );
    if phone != "254700000404" {
        spawn_callback(
            &s,
            str_of(&v, "CallBackURL").to_string(),
            cb,
            s.cfg.callback_delay,
        );
    }
    Json(
        json!({"MerchantRequestID": merchant, "CheckoutRequestID": checkout,
        "ResponseCode": "0", "ResponseDescription": "Success. Request accepted for processing",
        "CustomerMessage": "Success. Request accepted for processing"}),
    )
    .into_response()
}

async fn stk_query(State(s): State<St>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return r;
    }
    let v = match json_body(&headers, &body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !password_ok(&s, &v) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "500.001.1001",
            "Wrong credentials",
        );
    }
    let id = str_of(&v, "CheckoutRequestID");
    let stk = s.inner.lock().expect("lock").stk.get(id).cloned();
    let Some(stk) = stk else {
        return error(
            StatusCode::BAD_REQUEST,
            "400.002.02",
            "Bad Request - Invalid CheckoutRequestID",
        );
    };
    if stk.decides_at > Utc::now() {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "500.001.1001",
            "The transaction is being processed",
        );
    }
    // The query's ResultCode is a string, unlike the callback's.
    let code = match &stk.code {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => "1".into(),
    };
    Json(json!({"ResponseCode": "0", "ResponseDescription": "The service request has been accepted successsfully",
        "MerchantRequestID": stk.merchant, "CheckoutRequestID": id,
        "ResultCode": code, "ResultDesc": stk.desc}))
    .into_response()
}

const BANNED: &[&str] = &[
    "mpesa",
    "m-pesa",
    "m_pesa",
    "safaricom",
    "exe",
    "exec",
    "cmd",
    "sql",
    "query",
];

async fn c2b_register(
    State(s): State<St>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return r;
    }
    let v = match json_body(&headers, &body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let rt = str_of(&v, "ResponseType");
    if rt != "Completed" && rt != "Cancelled" {
        return error(
            StatusCode::BAD_REQUEST,
            "400.002.02",
            "Bad Request - Invalid ResponseType",
        );
    }
    for k in ["ConfirmationURL", "ValidationURL"] {
        let url = str_of(&v, k).to_lowercase();
        if url.is_empty() || BANNED.iter().any(|b| url.contains(b)) {
            return error(
                StatusCode::BAD_REQUEST,
                "400.002.02",
                &format!("Bad Request - Invalid {k}"),
            );
        }
    }
    s.inner.lock().expect("lock").c2b_urls.insert(
        str_of(&v, "ShortCode").to_string(),
        (
            str_of(&v, "ValidationURL").to_string(),
            str_of(&v, "ConfirmationURL").to_string(),
            rt.to_string(),
        ),
    );
    Json(
        json!({"OriginatorCoversationID": uuid::Uuid::new_v4().to_string(),
        "ResponseCode": "0", "ResponseDescription": "Success"}),
    )
    .into_response()
}

async fn c2b_simulate(
    State(s): State<St>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return r;
    }
    let v = match json_body(&headers, &body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let shortcode = str_of(&v, "ShortCode").to_string();
    let Some(urls) = s
        .inner
        .lock()
        .expect("lock")
        .c2b_urls
        .get(&shortcode)
        .cloned()
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "400.002.02",
            "Bad Request - Invalid ShortCode (no URLs registered)",
        );
    };
    let Some(amount) = int_of(&v, "Amount").filter(|a| *a >= 1) else {
        return error(
            StatusCode::BAD_REQUEST,
            "400.002.02",
            "Bad Request - Invalid Amount",
        );
    };
    let msisdn = v["Msisdn"]
        .as_str()
        .map(String::from)
        .or_else(|| v["Msisdn"].as_i64().map(|n| n.to_string()))
        .unwrap_or_default();
    let bill_ref = str_of(&v, "BillRefNumber").to_string();
    let s2 = s.clone();
    tokio::spawn(async move {
        tokio::time::sleep(s2.cfg.callback_delay).await;
        let now = eat_now();
        let trans = receipt();
        let (validation, confirmation, response_type) = urls;
        let mut body = json!({
            "TransactionType": "Pay Bill", "TransID": trans,
            "TransTime": now.format("%Y%m%d%H%M%S").to_string(),
            "TransAmount": format!("{amount}.00"), "BusinessShortCode": shortcode,
            "BillRefNumber": bill_ref, "InvoiceNumber": "", "OrgAccountBalance": "",
            "ThirdPartyTransID": "",
            // v2 confirmations carry the payer's number as a SHA-256 hash.
            "MSISDN": hex::encode(sha2::Sha256::digest(msisdn.as_bytes())),
            "FirstName": "JOHN", "MiddleName": "", "LastName": "DOE"});
        s2.inner
            .lock()
            .expect("lock")
            .callbacks
            .push(json!({"url": validation, "body": body}));
        let answer = s2
            .http
            .post(&validation)
            .timeout(Duration::from_secs(8))
            .json(&body)
            .send()
            .await;
        let accepted = match answer {
            Ok(r) => match r.json::<Value>().await {
                Ok(a) => {
                    if a["ThirdPartyTransID"].is_string() {
                        body["ThirdPartyTransID"] = a["ThirdPartyTransID"].clone();
                    }
                    a["ResultCode"] == json!("0") || a["ResultCode"] == json!(0)
                }
                Err(_) => response_type == "Completed",
            },
            Err(_) => response_type == "Completed",
        };
        if !accepted {
            return;
        }
        s2.inner.lock().expect("lock").completed.push(Completed {
            receipt: trans,
            msisdn: msisdn.clone(),
            amount,
            bill_ref,
            at: now.with_timezone(&Utc),
            kind: "Pay Bill",
        });
        if msisdn != "254700000404" {
            s2.inner
                .lock()
                .expect("lock")
                .callbacks
                .push(json!({"url": confirmation, "body": body}));
            let _ = s2.http.post(&confirmation).json(&body).send().await;
        }
    });
    Json(
        json!({"OriginatorCoversationID": uuid::Uuid::new_v4().to_string(),
        "ResponseCode": "0", "ResponseDescription": "Accept the service request successfully."}),
    )
    .into_response()
}

async fn pull_register(
    State(s): State<St>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return r;
    }
    if let Err(r) = json_body(&headers, &body) {
        return r;
    }
    Json(
        json!({"ResponseRefID": uuid::Uuid::new_v4().to_string(), "ResponseStatus": "1001",
        "ShortCode": s.cfg.shortcode, "ResponseDescription": "ShortCode already Registered"}),
    )
    .into_response()
}

async fn pull_query(State(s): State<St>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return r;
    }
    let v = match json_body(&headers, &body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let parse = |k: &str| {
        chrono::NaiveDateTime::parse_from_str(str_of(&v, k), "%Y-%m-%d %H:%M:%S")
            .ok()
            .and_then(|d| d.and_local_timezone(chrono_tz::Africa::Nairobi).single())
            .map(|d| d.with_timezone(&Utc))
    };
    let (Some(from), Some(to)) = (parse("StartDate"), parse("EndDate")) else {
        return error(
            StatusCode::BAD_REQUEST,
            "400.002.02",
            "Bad Request - Invalid StartDate/EndDate",
        );
    };
    let offset = int_of(&v, "OffSetValue").unwrap_or(0).max(0) as usize;
    let rows: Vec<Value> = s
        .inner
        .lock()
        .expect("lock")
        .completed
        .iter()
        .filter(|c| c.at >= from && c.at <= to)
        .skip(offset)
        .take(1000)
        .map(|c| {
            json!({"transactionId": c.receipt,
                "trxDate": c.at.with_timezone(&chrono_tz::Africa::Nairobi).format("%Y-%m-%dT%H:%M:%S").to_string(),
                "msisdn": c.msisdn.parse::<i64>().unwrap_or(0), "sender": "MPESA",
                "transactiontype": if c.kind == "Pay Bill" { "c2b-pay-bill-debit" } else { "c2b-buy-goods-debit" },
                "billreference": c.bill_ref, "amount": format!("{}.0", c.amount),
                "organizationname": "ISP"})
        })
        .collect();
    if rows.is_empty() {
        return Json(
            json!({"ResponseRefID": uuid::Uuid::new_v4().to_string(), "ResponseCode": "1001",
            "ResponseMessage": "No transactions found", "Response": [[]]}),
        )
        .into_response();
    }
    Json(
        json!({"ResponseRefID": uuid::Uuid::new_v4().to_string(), "ResponseCode": "1000",
        "ResponseMessage": "Success", "Response": [rows]}),
    )
    .into_response()
}

fn credential_ok(s: &St, v: &Value) -> bool {
    let Ok(ct) = base64::engine::general_purpose::STANDARD.decode(str_of(v, "SecurityCredential"))
    else {
        return false;
    };
    s.key
        .decrypt(Pkcs1v15Encrypt, &ct)
        .map(|p| p == s.cfg.initiator_password.as_bytes())
        .unwrap_or(false)
}

async fn b2c(State(s): State<St>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return r;
    }
    let v = match json_body(&headers, &body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let ocid = str_of(&v, "OriginatorConversationID").to_string();
    if ocid.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "400.002.02",
            "Bad Request - Invalid OriginatorConversationID",
        );
    }
    if !s.inner.lock().expect("lock").b2c_ids.insert(ocid.clone()) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "500.002.1001",
            "Duplicate OriginatorConversationID.",
        );
    }
    let Some(amount) = int_of(&v, "Amount") else {
        return error(
            StatusCode::BAD_REQUEST,
            "400.002.02",
            "Bad Request - Invalid Amount",
        );
    };
    let conv = format!(
        "AG_{}_{}",
        eat_now().format("%Y%m%d"),
        uuid::Uuid::new_v4().simple()
    );
    let party_b = str_of(&v, "PartyB").to_string();
    let result_url = str_of(&v, "ResultURL").to_string();
    let timeout_url = str_of(&v, "QueueTimeOutURL").to_string();
    let mut result = json!({"Result": {"ResultType": 0, "OriginatorConversationID": ocid,
        "ConversationID": conv,
        "ReferenceData": {"ReferenceItem": {"Key": "QueueTimeoutURL", "Value": timeout_url}}}});
    let r = &mut result["Result"];
    let fail = |r: &mut Value, code: i64, desc: &str| {
        r["ResultCode"] = json!(code);
        r["ResultDesc"] = json!(desc);
        r["TransactionID"] = json!(receipt());
    };
    let mut paid = None;
    if str_of(&v, "InitiatorName") != s.cfg.initiator_name || !credential_ok(&s, &v) {
        fail(r, 2001, "The initiator information is invalid.");
    } else if amount < 10 {
        fail(
            r,
            2,
            "Declined due to limit rule: less than the minimum transaction amount.",
        );
    } else if amount > 250_000 {
        fail(
            r,
            3,
            "Declined due to limit rule: greater than the maximum transaction amount.",
        );
    } else if amount == 2040 {
        fail(r, 2040, "Credit Party customer type (Unregistered or Registered Customer) can't be supported by the service.");
    } else {
        let rc = receipt();
        let now = eat_now();
        r["ResultCode"] = json!(0);
        r["ResultDesc"] = json!("The service request is processed successfully.");
        r["TransactionID"] = json!(rc);
        r["ResultParameters"] = json!({"ResultParameter": [
            {"Key": "TransactionAmount", "Value": amount},
            {"Key": "TransactionReceipt", "Value": rc},
            {"Key": "ReceiverPartyPublicName", "Value": format!("{party_b} - PARTNER")},
            {"Key": "TransactionCompletedDateTime", "Value": now.format("%d.%m.%Y %H:%M:%S").to_string()},
            {"Key": "B2CUtilityAccountAvailableFunds", "Value": 100000.00},
            {"Key": "B2CWorkingAccountAvailableFunds", "Value": 0.00},
            {"Key": "B2CRecipientIsRegisteredCustomer", "Value": "Y"},
            {"Key": "B2CChargesPaidAccountAvailableFunds", "Value": -33.00},
        ]});
        paid = Some(rc);
    }
    s.inner.lock().expect("lock").payouts.insert(
        ocid.clone(),
        Payout {
            receipt: paid,
            amount,
            party_b,
            at: Utc::now(),
        },
    );
    if amount == 1111 {
        let timeout = json!({"Result": {"ResultType": 1, "ResultCode": "SVC0403",
            "ResultDesc": "Request timeout", "OriginatorConversationID": ocid, "ConversationID": conv}});
        spawn_callback(&s, timeout_url, timeout, s.cfg.callback_delay);
    } else {
        spawn_callback(&s, result_url, result, s.cfg.callback_delay);
    }
    Json(
        json!({"ConversationID": conv, "OriginatorConversationID": ocid,
        "ResponseCode": "0", "ResponseDescription": "Accept the service request successfully."}),
    )
    .into_response()
}

async fn tx_status(State(s): State<St>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return r;
    }
    let v = match json_body(&headers, &body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let own = uuid::Uuid::new_v4().to_string();
    let conv = format!(
        "AG_{}_{}",
        eat_now().format("%Y%m%d"),
        uuid::Uuid::new_v4().simple()
    );
    let original = str_of(&v, "OriginalConversationID").to_string();
    let txid = str_of(&v, "TransactionID").to_string();
    let found = {
        let inner = s.inner.lock().expect("lock");
        inner.payouts.get(&original).cloned().or_else(|| {
            inner
                .payouts
                .values()
                .find(|p| !txid.is_empty() && p.receipt.as_deref() == Some(txid.as_str()))
                .cloned()
        })
    };
    let mut result = json!({"Result": {"ResultType": 0, "OriginatorConversationID": own,
        "ConversationID": conv}});
    let r = &mut result["Result"];
    if !credential_ok(&s, &v) {
        r["ResultCode"] = json!(2001);
        r["ResultDesc"] = json!("The initiator information is invalid.");
    } else {
        match found {
            Some(Payout {
                receipt: Some(rc),
                amount,
                party_b,
                at,
            }) => {
                let t = at
                    .with_timezone(&chrono_tz::Africa::Nairobi)
                    .format("%Y%m%d%H%M%S")
                    .to_string();
                r["ResultCode"] = json!(0);
                r["ResultDesc"] = json!("The service request is processed successfully.");
                r["TransactionID"] = json!(rc);
                r["ResultParameters"] = json!({"ResultParameter": [
                    {"Key": "DebitPartyName", "Value": format!("{} - ISP", s.cfg.shortcode)},
                    {"Key": "CreditPartyName", "Value": format!("{party_b} - PARTNER")},
                    {"Key": "OriginatorConversationID", "Value": original},
                    {"Key": "InitiatedTime", "Value": t},
                    {"Key": "DebitAccountType", "Value": "Utility Account"},
                    {"Key": "DebitPartyCharges", "Value": ""},
                    {"Key": "TransactionReason", "Value": ""},
                    {"Key": "ReasonType", "Value": "Business Payment to Customer via API"},
                    {"Key": "TransactionStatus", "Value": "Completed"},
                    {"Key": "FinalisedTime", "Value": t},
                    {"Key": "Amount", "Value": format!("{amount}.00")},
                    {"Key": "ConversationID", "Value": ""},
                    {"Key": "ReceiptNo", "Value": rc},
                ]});
            }
            Some(_) => {
                r["ResultCode"] = json!(0);
                r["ResultDesc"] = json!("The service request is processed successfully.");
                r["ResultParameters"] = json!({"ResultParameter": [
                    {"Key": "OriginatorConversationID", "Value": original},
                    {"Key": "TransactionStatus", "Value": "Failed"},
                ]});
            }
            None => {
                r["ResultCode"] = json!("R000002");
                r["ResultDesc"] = json!("The OriginalConversationID or TransactionID is invalid.");
            }
        }
    }
    spawn_callback(
        &s,
        str_of(&v, "ResultURL").to_string(),
        result,
        s.cfg.callback_delay,
    );
    Json(
        json!({"OriginatorConversationID": own, "ConversationID": conv,
        "ResponseCode": "0", "ResponseDescription": "Accept the service request successfully."}),
    )
    .into_response()
}

async fn callbacks(State(s): State<St>) -> Json<Value> {
    Json(Value::Array(
        s.inner.lock().expect("lock").callbacks.clone(),
    ))
}

async fn expire(State(s): State<St>) -> StatusCode {
    s.inner.lock().expect("lock").token = None;
    StatusCode::NO_CONTENT
}

async fn stats(State(s): State<St>) -> Json<Value> {
    let i = s.inner.lock().expect("lock");
    Json(
        json!({"tokensIssued": i.tokens_issued, "completed": i.completed.len(), "callbacks": i.callbacks.len()}),
    )
}
