//! Safaricom Daraja's wire format, all of it in this one module (GATEWAYS.md
//! section 1): the OAuth token shared by every replica, STK push and query, C2B
//! URL registration and callback bodies, B2C, Transaction Status and Pull
//! Transactions. A correction to the format is one edit here.
//!
//! We write our own thin client rather than use the `mpesa` crate: it caches the
//! token per process (Daraja cancels a token whenever another is issued), computes
//! the STK timestamp twice (a second boundary between the two fails with "Wrong
//! credentials"), has no callback types and pulls in OpenSSL.

use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use sha2::Digest;
use sqlx::PgPool;

/// Where and as whom we talk to Daraja (the `ISP_MPESA_*` settings).
#[derive(Clone)]
pub struct DarajaConfig {
    pub base_url: String,
    pub consumer_key: String,
    pub consumer_secret: String,
    /// BusinessShortCode (paybill, or the store number for a till).
    pub shortcode: String,
    pub passkey: String,
    /// `CustomerPayBillOnline` or `CustomerBuyGoodsOnline` (then PartyB is the till).
    pub transaction_type: String,
    pub party_b: String,
    /// The B2C paying shortcode (PartyA of B2C and Transaction Status).
    pub b2c_shortcode: String,
    pub initiator_name: String,
    pub initiator_password: String,
    /// Safaricom's API certificate (PEM), for the SecurityCredential.
    pub certificate_pem: Option<String>,
    pub timeout: Duration,
}

impl std::fmt::Debug for DarajaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DarajaConfig")
            .field("base_url", &self.base_url)
            .field("shortcode", &self.shortcode)
            .field("transaction_type", &self.transaction_type)
            .field("party_b", &self.party_b)
            .field("b2c_shortcode", &self.b2c_shortcode)
            .field("initiator_name", &self.initiator_name)
            .field("certificate", &self.certificate_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// A Daraja answer that is not a success: its error body
/// (`{requestId, errorCode, errorMessage}`) or a transport failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DarajaError {
    #[error("Daraja {status}: {code} {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        body: Value,
    },
    #[error("Daraja unreachable: {0}")]
    Transport(String),
    #[error("{0}")]
    Config(String),
}

impl DarajaError {
    pub fn code(&self) -> Option<&str> {
        match self {
            DarajaError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
    /// The STK query's answer while the customer is still deciding: pending, not failed.
    pub fn is_still_processing(&self) -> bool {
        matches!(self, DarajaError::Api { code, message, .. }
            if code == "500.001.1001" && message.to_lowercase().contains("being processed"))
    }
    /// `500.002.1001 Duplicate OriginatorConversationID`: Daraja has this payout.
    pub fn is_duplicate_originator(&self) -> bool {
        matches!(self, DarajaError::Api { code, message, .. }
            if code == "500.002.1001" && message.to_lowercase().contains("duplicate"))
    }
    pub fn body(&self) -> Value {
        match self {
            DarajaError::Api { body, .. } => body.clone(),
            e => json!({"error": e.to_string()}),
        }
    }
}

/// A ResultCode: a number in most bodies, a string in others (`"0"` in the STK
/// query, `"SFC_IC0003"` and `"R000002"` seen in callbacks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultCode(pub String);

impl ResultCode {
    pub fn is_success(&self) -> bool {
        self.0 == "0"
    }
}

impl<'de> Deserialize<'de> for ResultCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(ResultCode(text_of(&Value::deserialize(d)?)))
    }
}

/// A number or a string, as text (`"3599"`, `5.00`, `254708374149`).
fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

fn de_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(text_of(&Value::deserialize(d)?))
}

/// Money as Daraja sends it (`1.00`, `"5.00"`, `10`): exact decimal.
pub fn money_of(v: &Value) -> Option<Decimal> {
    let t = text_of(v);
    t.parse::<Decimal>().ok().filter(|d| *d > Decimal::ZERO)
}

/// Local time in Nairobi: Daraja's timestamps are EAT whatever the server's zone.
pub fn eat_now() -> DateTime<chrono_tz::Tz> {
    Utc::now().with_timezone(&chrono_tz::Africa::Nairobi)
}

/// `YYYYMMDDHHmmss` in EAT, as in `TransactionDate` and `TransTime`.
pub fn parse_compact_time(s: &str) -> Option<DateTime<Utc>> {
    let n = NaiveDateTime::parse_from_str(s.trim(), "%Y%m%d%H%M%S").ok()?;
    chrono_tz::Africa::Nairobi
        .from_local_datetime(&n)
        .earliest()
        .map(|d| d.with_timezone(&Utc))
}

/// sha256 of the 12-digit `2547...` form: how C2B v2 confirmations carry the payer.
pub fn msisdn_sha256(msisdn: &str) -> String {
    hex::encode(sha2::Sha256::digest(
        msisdn.trim_start_matches('+').as_bytes(),
    ))
}

/// The words Safaricom refuses in callback URLs (any case).
pub const BANNED_URL_WORDS: &[&str] = &[
    "mpesa",
    "m-pesa",
    "m_pesa",
    "m pesa",
    "safaricom",
    "exe",
    "exec",
    "cmd",
    "sql",
    "query",
];

pub fn banned_word(url: &str) -> Option<&'static str> {
    let l = url.to_lowercase();
    BANNED_URL_WORDS.iter().copied().find(|w| l.contains(w))
}

// ---------------------------------------------------------------------------
// callback bodies
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Deserialize)]
pub struct StkCallbackBody {
    #[serde(rename = "Body")]
    pub body: StkCallbackInner,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StkCallbackInner {
    #[serde(rename = "stkCallback")]
    pub callback: StkCallback,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StkCallback {
    #[serde(rename = "MerchantRequestID", deserialize_with = "de_text")]
    pub merchant_request_id: String,
    #[serde(rename = "CheckoutRequestID", deserialize_with = "de_text")]
    pub checkout_request_id: String,
    pub result_code: ResultCode,
    #[serde(default, deserialize_with = "de_text")]
    pub result_desc: String,
    #[serde(default)]
    pub callback_metadata: Option<Metadata>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    #[serde(rename = "Item", default)]
    pub item: Vec<MetadataItem>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MetadataItem {
    #[serde(rename = "Name")]
    pub name: String,
    /// Absent on `Balance`.
    #[serde(rename = "Value", default)]
    pub value: Option<Value>,
}

impl StkCallback {
    /// Looked up by name; every item is optional and present only on success.
    pub fn item(&self, name: &str) -> Option<&Value> {
        self.callback_metadata
            .as_ref()?
            .item
            .iter()
            .find(|i| i.name == name)?
            .value
            .as_ref()
    }
    pub fn receipt(&self) -> Option<String> {
        self.item("MpesaReceiptNumber")
            .map(text_of)
            .filter(|s| !s.is_empty())
    }
    pub fn amount(&self) -> Option<Decimal> {
        self.item("Amount").and_then(money_of)
    }
    pub fn phone(&self) -> Option<String> {
        self.item("PhoneNumber").map(text_of)
    }
    pub fn transaction_time(&self) -> Option<DateTime<Utc>> {
        self.item("TransactionDate")
            .and_then(|v| parse_compact_time(&text_of(v)))
    }
}

/// A C2B validation or confirmation body: strings, though we take numbers too.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct C2bBody {
    #[serde(default, deserialize_with = "de_text")]
    pub transaction_type: String,
    #[serde(rename = "TransID", deserialize_with = "de_text")]
    pub trans_id: String,
    #[serde(default, deserialize_with = "de_text")]
    pub trans_time: String,
    #[serde(deserialize_with = "de_text")]
    pub trans_amount: String,
    #[serde(default, deserialize_with = "de_text")]
    pub business_short_code: String,
    #[serde(default, deserialize_with = "de_text")]
    pub bill_ref_number: String,
    #[serde(rename = "MSISDN", default, deserialize_with = "de_text")]
    pub msisdn: String,
    #[serde(default, deserialize_with = "de_text")]
    pub first_name: String,
    #[serde(default, deserialize_with = "de_text")]
    pub last_name: String,
}

impl C2bBody {
    pub fn amount(&self) -> Option<Decimal> {
        money_of(&Value::String(self.trans_amount.clone()))
    }
    pub fn time(&self) -> Option<DateTime<Utc>> {
        parse_compact_time(&self.trans_time)
    }
    /// The payer as 64 hex sha256 (v2), masked, or plain (v1); the hash either way.
    pub fn payer_sha256(&self) -> Option<String> {
        let m = self.msisdn.trim();
        if m.len() == 64 && m.chars().all(|c| c.is_ascii_hexdigit()) {
            Some(m.to_lowercase())
        } else if m.len() == 12 && m.starts_with("254") && m.chars().all(|c| c.is_ascii_digit()) {
            Some(msisdn_sha256(m))
        } else {
            None
        }
    }
}

/// The C2B validation answer Daraja expects.
pub fn c2b_accept() -> Value {
    json!({"ResultCode": "0", "ResultDesc": "Accepted"})
}
pub fn c2b_reject(code: &str) -> Value {
    json!({"ResultCode": code, "ResultDesc": "Rejected"})
}
/// The confirmation acknowledgement.
pub fn c2b_ack() -> Value {
    json!({"ResultCode": 0, "ResultDesc": "Success"})
}

/// A B2C or Transaction Status result (`{"Result": {...}}`) or queue timeout.
#[derive(Debug, Clone, Deserialize)]
pub struct ResultBody {
    #[serde(rename = "Result")]
    pub result: ResultInner,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ResultInner {
    #[serde(default)]
    pub result_code: Option<ResultCode>,
    #[serde(default, deserialize_with = "de_text")]
    pub result_desc: String,
    #[serde(
        rename = "OriginatorConversationID",
        default,
        deserialize_with = "de_text"
    )]
    pub originator_conversation_id: String,
    #[serde(rename = "ConversationID", default, deserialize_with = "de_text")]
    pub conversation_id: String,
    #[serde(rename = "TransactionID", default, deserialize_with = "de_text")]
    pub transaction_id: String,
    #[serde(default)]
    pub result_parameters: Option<Value>,
}

impl ResultInner {
    /// A result parameter by key (`ResultParameter` is a list, or one object).
    pub fn param(&self, key: &str) -> Option<String> {
        let p = self.result_parameters.as_ref()?.get("ResultParameter")?;
        let list: Vec<&Value> = match p {
            Value::Array(a) => a.iter().collect(),
            v => vec![v],
        };
        list.into_iter()
            .find(|kv| kv["Key"] == key)
            .map(|kv| text_of(&kv["Value"]))
            .filter(|s| !s.is_empty())
    }
}

// ---------------------------------------------------------------------------
// the client
// ---------------------------------------------------------------------------

/// What an STK push asks for.
#[derive(Debug, Clone)]
pub struct StkPush {
    /// Whole KES, 1..=250000.
    pub amount: i64,
    /// `2547XXXXXXXX`
    pub phone: String,
    /// <= 12 characters, shown in the prompt.
    pub account_reference: String,
    /// <= 13 characters.
    pub description: String,
    pub callback_url: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StkAck {
    #[serde(rename = "MerchantRequestID", deserialize_with = "de_text")]
    pub merchant_request_id: String,
    #[serde(rename = "CheckoutRequestID", deserialize_with = "de_text")]
    pub checkout_request_id: String,
    #[serde(rename = "ResponseCode", deserialize_with = "de_text")]
    pub response_code: String,
    #[serde(rename = "CustomerMessage", default, deserialize_with = "de_text")]
    pub customer_message: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StkQueryAnswer {
    #[serde(rename = "ResultCode")]
    pub result_code: ResultCode,
    #[serde(rename = "ResultDesc", default, deserialize_with = "de_text")]
    pub result_desc: String,
}

/// One row of Pull Transactions.
#[derive(Debug, Clone, Deserialize)]
pub struct PulledTransaction {
    #[serde(rename = "transactionId", deserialize_with = "de_text")]
    pub transaction_id: String,
    #[serde(rename = "trxDate", default, deserialize_with = "de_text")]
    pub trx_date: String,
    #[serde(default, deserialize_with = "de_text")]
    pub msisdn: String,
    #[serde(default, deserialize_with = "de_text")]
    pub billreference: String,
    #[serde(deserialize_with = "de_text")]
    pub amount: String,
}

impl PulledTransaction {
    pub fn time(&self) -> Option<DateTime<Utc>> {
        let t = self.trx_date.trim();
        ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(t, f).ok())
            .and_then(|n| {
                chrono_tz::Africa::Nairobi
                    .from_local_datetime(&n)
                    .earliest()
            })
            .map(|d| d.with_timezone(&Utc))
    }
}

/// The Daraja client. The OAuth token lives in `daraja_tokens`, shared by every
/// replica of the service.
#[derive(Clone)]
pub struct Daraja {
    cfg: DarajaConfig,
    http: reqwest::Client,
    pool: PgPool,
    key_id: String,
    public_key: Option<rsa::RsaPublicKey>,
}

/// Renew this long before Daraja's expiry, so no request carries a token that
/// expires on the way.
const RENEW_BEFORE: chrono::Duration = chrono::Duration::seconds(120);

impl Daraja {
    pub fn new(cfg: DarajaConfig, pool: PgPool) -> anyhow::Result<Self> {
        let public_key = match &cfg.certificate_pem {
            Some(pem) => Some(public_key_of(pem)?),
            None => None,
        };
        Ok(Self {
            key_id: hex::encode(sha2::Sha256::digest(cfg.consumer_key.as_bytes())),
            http: reqwest::Client::builder().timeout(cfg.timeout).build()?,
            cfg,
            pool,
            public_key,
        })
    }

    pub fn config(&self) -> &DarajaConfig {
        &self.cfg
    }

    /// The current token: the shared one while it has time left, else renewed
    /// under the row's lock, so concurrent callers (any replica) wait for one
    /// renewal instead of cancelling each other's tokens. `stale` is a token
    /// Daraja just refused: renew unless someone already replaced it.
    pub async fn token(&self, stale: Option<&str>) -> Result<String, DarajaError> {
        let db = |e: sqlx::Error| DarajaError::Transport(format!("token store: {e}"));
        if stale.is_none() {
            let row: Option<(Option<String>, Option<DateTime<Utc>>)> = sqlx::query_as(
                "SELECT access_token, expires_at FROM daraja_tokens WHERE consumer_key_sha256 = $1",
            )
            .bind(&self.key_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
            if let Some((Some(t), Some(exp))) = row {
                if exp - RENEW_BEFORE > Utc::now() {
                    return Ok(t);
                }
            }
        }
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query(
            "INSERT INTO daraja_tokens (consumer_key_sha256) VALUES ($1) ON CONFLICT DO NOTHING",
        )
        .bind(&self.key_id)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let (current, exp): (Option<String>, Option<DateTime<Utc>>) = sqlx::query_as(
            "SELECT access_token, expires_at FROM daraja_tokens WHERE consumer_key_sha256 = $1 FOR UPDATE",
        )
        .bind(&self.key_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        if let (Some(t), Some(exp)) = (&current, exp) {
            if exp - RENEW_BEFORE > Utc::now() && stale != Some(t.as_str()) {
                return Ok(t.clone());
            }
        }
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            self.cfg.consumer_key, self.cfg.consumer_secret
        ));
        let res = self
            .http
            .get(format!(
                "{}/oauth/v1/generate?grant_type=client_credentials",
                self.cfg.base_url
            ))
            .header("authorization", format!("Basic {basic}"))
            .send()
            .await
            .map_err(|e| DarajaError::Transport(e.to_string()))?;
        let body = answer(res).await?;
        let token = text_of(&body["access_token"]);
        if token.is_empty() {
            return Err(DarajaError::Transport(
                "OAuth answer without access_token".into(),
            ));
        }
        // `expires_in` is a string ("3599").
        let secs: i64 = text_of(&body["expires_in"]).parse().unwrap_or(3599);
        sqlx::query(
            "UPDATE daraja_tokens SET access_token = $2, expires_at = $3, renewed_at = now()
             WHERE consumer_key_sha256 = $1",
        )
        .bind(&self.key_id)
        .bind(&token)
        .bind(Utc::now() + chrono::Duration::seconds(secs))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        tracing::info!("Daraja access token renewed");
        Ok(token)
    }

    /// POSTs JSON with the shared token; on `404.001.03 Invalid Access Token`
    /// renews once and tries again.
    async fn post(&self, path: &str, body: &Value) -> Result<Value, DarajaError> {
        let mut token = self.token(None).await?;
        for attempt in 0..2 {
            let res = self
                .http
                .post(format!("{}{path}", self.cfg.base_url))
                .bearer_auth(&token)
                .json(body)
                .send()
                .await
                .map_err(|e| DarajaError::Transport(e.to_string()))?;
            match answer(res).await {
                Err(e) if attempt == 0 && e.code() == Some("404.001.03") => {
                    token = self.token(Some(&token)).await?;
                }
                other => return other,
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// `Password` and `Timestamp` from one instant in EAT.
    fn password(&self) -> (String, String) {
        let ts = eat_now().format("%Y%m%d%H%M%S").to_string();
        let pw = base64::engine::general_purpose::STANDARD
            .encode(format!("{}{}{ts}", self.cfg.shortcode, self.cfg.passkey));
        (pw, ts)
    }

    /// The request body (for the transaction log) and Daraja's answer.
    pub async fn stk_push(&self, req: &StkPush) -> (Value, Result<StkAck, DarajaError>) {
        let (password, timestamp) = self.password();
        let body = json!({
            "BusinessShortCode": self.cfg.shortcode, "Password": password, "Timestamp": timestamp,
            "TransactionType": self.cfg.transaction_type, "Amount": req.amount,
            "PartyA": req.phone, "PartyB": self.cfg.party_b, "PhoneNumber": req.phone,
            "CallBackURL": req.callback_url, "AccountReference": req.account_reference,
            "TransactionDesc": req.description,
        });
        let logged = redact(&body, &["Password"]);
        let res = self
            .post("/mpesa/stkpush/v1/processrequest", &body)
            .await
            .and_then(|v| {
                serde_json::from_value::<StkAck>(v.clone())
                    .map_err(|e| DarajaError::Transport(format!("unexpected STK answer {v}: {e}")))
            });
        (logged, res)
    }

    pub async fn stk_query(
        &self,
        checkout_request_id: &str,
    ) -> Result<(Value, StkQueryAnswer), DarajaError> {
        let (password, timestamp) = self.password();
        let body = json!({"BusinessShortCode": self.cfg.shortcode, "Password": password,
            "Timestamp": timestamp, "CheckoutRequestID": checkout_request_id});
        let v = self.post("/mpesa/stkpushquery/v1/query", &body).await?;
        let a = serde_json::from_value::<StkQueryAnswer>(v.clone())
            .map_err(|e| DarajaError::Transport(format!("unexpected STK query answer {v}: {e}")))?;
        Ok((v, a))
    }

    /// Registers the C2B URLs (`ResponseType` Completed: money is accepted when
    /// our validation does not answer in time).
    pub async fn c2b_register(
        &self,
        validation: &str,
        confirmation: &str,
    ) -> (Value, Result<Value, DarajaError>) {
        let body = json!({"ShortCode": self.cfg.shortcode, "ResponseType": "Completed",
            "ConfirmationURL": confirmation, "ValidationURL": validation});
        let res = self.post("/mpesa/c2b/v2/registerurl", &body).await;
        (body, res)
    }

    /// Pull Transactions for `[from, to]` (at most the last 48 hours), every page.
    pub async fn pull_transactions(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<(Value, Vec<PulledTransaction>), DarajaError> {
        let f = |d: DateTime<Utc>| {
            d.with_timezone(&chrono_tz::Africa::Nairobi)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        };
        let mut out = vec![];
        let mut raw = vec![];
        let mut offset = 0usize;
        loop {
            let body = json!({"ShortCode": self.cfg.shortcode, "StartDate": f(from),
                "EndDate": f(to), "OffSetValue": offset.to_string()});
            let v = self.post("/pulltransactions/v1/query", &body).await?;
            raw.push(v.clone());
            if text_of(&v["ResponseCode"]) != "1000" {
                break;
            }
            let rows: Vec<PulledTransaction> = v["Response"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|page| page.as_array().cloned().unwrap_or_default())
                .filter_map(|r| serde_json::from_value(r).ok())
                .collect();
            let n = rows.len();
            out.extend(rows);
            if n < 1000 {
                break;
            }
            offset += n;
        }
        Ok((Value::Array(raw), out))
    }

    /// The initiator password encrypted with the certificate's RSA key (PKCS#1
    /// v1.5, not OAEP), base64.
    pub fn security_credential(&self) -> Result<String, DarajaError> {
        let key = self.public_key.as_ref().ok_or_else(|| {
            DarajaError::Config(
                "No Safaricom certificate is configured (ISP_MPESA_CERTIFICATE_FILE).".into(),
            )
        })?;
        let ct = key
            .encrypt(
                &mut rand::thread_rng(),
                rsa::Pkcs1v15Encrypt,
                self.cfg.initiator_password.as_bytes(),
            )
            .map_err(|e| DarajaError::Config(format!("encrypting the initiator password: {e}")))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(ct))
    }

    /// B2C `BusinessPayment` to a partner. `originator` is ours, tied to the
    /// commission: Daraja refuses a reused one, so a retry cannot pay twice.
    #[allow(clippy::too_many_arguments)]
    pub async fn b2c(
        &self,
        originator: &str,
        amount: i64,
        phone: &str,
        remarks: &str,
        result_url: &str,
        timeout_url: &str,
    ) -> (Value, Result<Value, DarajaError>) {
        let cred = match self.security_credential() {
            Ok(c) => c,
            Err(e) => return (json!({}), Err(e)),
        };
        let body = json!({"OriginatorConversationID": originator,
            "InitiatorName": self.cfg.initiator_name, "SecurityCredential": cred,
            "CommandID": "BusinessPayment", "Amount": amount, "PartyA": self.cfg.b2c_shortcode,
            "PartyB": phone, "Remarks": remarks, "QueueTimeOutURL": timeout_url,
            "ResultURL": result_url, "Occassion": "Commission"});
        let res = self.post("/mpesa/b2c/v3/paymentrequest", &body).await;
        (redact(&body, &["SecurityCredential"]), res)
    }

    /// Transaction Status by our OriginatorConversationID (asynchronous result).
    pub async fn transaction_status(
        &self,
        original_conversation_id: &str,
        result_url: &str,
        timeout_url: &str,
    ) -> (Value, Result<Value, DarajaError>) {
        let cred = match self.security_credential() {
            Ok(c) => c,
            Err(e) => return (json!({}), Err(e)),
        };
        let body = json!({"Initiator": self.cfg.initiator_name, "SecurityCredential": cred,
            "CommandID": "TransactionStatusQuery", "OriginalConversationID": original_conversation_id,
            "PartyA": self.cfg.b2c_shortcode, "IdentifierType": "4", "ResultURL": result_url,
            "QueueTimeOutURL": timeout_url, "Remarks": "Commission status", "Occasion": "Commission"});
        let res = self.post("/mpesa/transactionstatus/v1/query", &body).await;
        (redact(&body, &["SecurityCredential"]), res)
    }
}

/// The certificate's RSA public key (`x509-cert` parses it; no OpenSSL).
fn public_key_of(pem: &str) -> anyhow::Result<rsa::RsaPublicKey> {
    use rsa::pkcs8::DecodePublicKey;
    use x509_cert::der::{DecodePem, Encode};
    let cert = x509_cert::Certificate::from_pem(pem.as_bytes()).map_err(|e| {
        anyhow::anyhow!("the M-Pesa certificate is not a PEM X.509 certificate: {e}")
    })?;
    let spki = cert.tbs_certificate.subject_public_key_info.to_der()?;
    rsa::RsaPublicKey::from_public_key_der(&spki)
        .map_err(|e| anyhow::anyhow!("the M-Pesa certificate has no RSA public key: {e}"))
}

/// Secrets never reach the transaction log.
fn redact(body: &Value, keys: &[&str]) -> Value {
    let mut b = body.clone();
    for k in keys {
        if b.get(*k).is_some() {
            b[*k] = json!("<redacted>");
        }
    }
    b
}

/// A 2xx JSON body, or Daraja's error body as [`DarajaError::Api`].
async fn answer(res: reqwest::Response) -> Result<Value, DarajaError> {
    let status = res.status();
    let text = res
        .text()
        .await
        .map_err(|e| DarajaError::Transport(e.to_string()))?;
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| json!({"text": text}));
    if status.is_success() {
        return Ok(body);
    }
    Err(DarajaError::Api {
        status: status.as_u16(),
        code: text_of(&body["errorCode"]),
        message: text_of(&body["errorMessage"]),
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_codes_are_numbers_or_strings() {
        let c: StkCallbackBody = serde_json::from_value(json!({"Body": {"stkCallback": {
            "MerchantRequestID": "1", "CheckoutRequestID": "ws_1", "ResultCode": "SFC_IC0003",
            "ResultDesc": "x"}}}))
        .unwrap();
        assert_eq!(c.body.callback.result_code.0, "SFC_IC0003");
        assert!(!c.body.callback.result_code.is_success());
        let c: StkCallbackBody = serde_json::from_value(json!({"Body": {"stkCallback": {
            "MerchantRequestID": "1", "CheckoutRequestID": "ws_1", "ResultCode": 0, "ResultDesc": "ok",
            "CallbackMetadata": {"Item": [{"Name": "Amount", "Value": 1.00},
                {"Name": "MpesaReceiptNumber", "Value": "NLJ7RT61SV"}, {"Name": "Balance"},
                {"Name": "TransactionDate", "Value": 20191219102115i64},
                {"Name": "PhoneNumber", "Value": 254708374149i64}]}}}}))
        .unwrap();
        let cb = c.body.callback;
        assert!(cb.result_code.is_success());
        assert_eq!(cb.receipt().as_deref(), Some("NLJ7RT61SV"));
        assert_eq!(cb.amount(), Some(Decimal::new(1, 0)));
        assert_eq!(cb.phone().as_deref(), Some("254708374149"));
        // 10:21:15 in Nairobi is 07:21:15 UTC.
        assert_eq!(
            cb.transaction_time().unwrap().to_rfc3339(),
            "2019-12-19T07:21:15+00:00"
        );
    }

    #[test]
    fn payer_hash_is_sha256_of_the_12_digit_form() {
        let h = msisdn_sha256("+254708374149");
        assert_eq!(h, msisdn_sha256("254708374149"));
        assert_eq!(h.len(), 64);
        let b: C2bBody = serde_json::from_value(
            json!({"TransID": "X", "TransAmount": "5.00", "MSISDN": h.to_uppercase()}),
        )
        .unwrap();
        assert_eq!(b.payer_sha256().as_deref(), Some(h.as_str()));
        assert_eq!(b.amount(), Some(Decimal::new(500, 2)));
    }

    #[test]
    fn banned_words_are_found_in_any_case() {
        assert_eq!(banned_word("https://x.ke/M-PESA/cb"), Some("m-pesa"));
        assert_eq!(banned_word("https://x.ke/hooks/daraja/abc/stk"), None);
        assert!(banned_word("https://x.ke/QUERY").is_some());
    }

    #[test]
    fn b2c_result_parameters_by_key() {
        let r: ResultBody = serde_json::from_value(json!({"Result": {"ResultType": 0, "ResultCode": 0,
            "ResultDesc": "ok", "OriginatorConversationID": "o", "ConversationID": "c", "TransactionID": "T1",
            "ResultParameters": {"ResultParameter": [{"Key": "TransactionReceipt", "Value": "T1"},
                {"Key": "TransactionAmount", "Value": 10}]}}}))
        .unwrap();
        assert_eq!(r.result.param("TransactionAmount").as_deref(), Some("10"));
        assert_eq!(r.result.param("TransactionReceipt").as_deref(), Some("T1"));
        let r: ResultBody = serde_json::from_value(json!({"Result": {"ResultCode": "R000002",
            "ResultParameters": {"ResultParameter": {"Key": "A", "Value": "b"}}}}))
        .unwrap();
        assert_eq!(r.result.param("A").as_deref(), Some("b"));
    }
}
