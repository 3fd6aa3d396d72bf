//! Twilio Programmable Messaging: `POST <base>/2010-04-01/Accounts/{Sid}/Messages.json`,
//! Basic auth (AccountSid:AuthToken), form `To`, `From` or `MessagingServiceSid`,
//! `Body`, `StatusCallback`. Twilio sends no callback for the initial status, so
//! the answer's `status` (queued / accepted) is recorded as Accepted.

use async_trait::async_trait;
use base64::Engine;
use hmac::{Hmac, Mac};
use isp_events::payloads::DeliveryStatus;
use serde::Deserialize;
use sha1::Sha1;

use super::{transport_error, Outcome, Outgoing, Provider};

#[derive(Clone)]
pub struct TwilioConfig {
    pub account_sid: String,
    pub auth_token: String,
    /// A Twilio number (`From`)...
    pub from: Option<String>,
    /// ...or a Messaging Service (`MessagingServiceSid`), which wins when both are set.
    pub messaging_service_sid: Option<String>,
    /// `https://api.twilio.com` or a stand-in.
    pub base_url: String,
    /// The exact URL Twilio posts status callbacks to (it signs this URL).
    pub status_callback_url: String,
}

impl std::fmt::Debug for TwilioConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioConfig")
            .field("account_sid", &self.account_sid)
            .field("auth_token", &"<redacted>")
            .field("from", &self.from)
            .field("messaging_service_sid", &self.messaging_service_sid)
            .field("base_url", &self.base_url)
            .field("status_callback_url", &self.status_callback_url)
            .finish()
    }
}

pub struct Twilio {
    cfg: TwilioConfig,
    http: reqwest::Client,
}

impl Twilio {
    pub fn new(cfg: TwilioConfig, http: reqwest::Client) -> Self {
        Self { cfg, http }
    }
}

#[derive(Debug, Deserialize)]
struct Created {
    sid: String,
    #[serde(default)]
    status: String,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    message: String,
}

/// Twilio error 21610: the recipient replied STOP to this sender.
pub const UNSUBSCRIBED: i64 = 21610;

#[async_trait]
impl Provider for Twilio {
    fn name(&self) -> &'static str {
        "twilio"
    }

    async fn send(&self, msg: &Outgoing) -> Outcome {
        let mut form: Vec<(&str, &str)> = vec![
            ("To", &msg.recipient),
            ("Body", &msg.body),
            ("StatusCallback", &self.cfg.status_callback_url),
        ];
        match (&self.cfg.messaging_service_sid, &self.cfg.from) {
            (Some(ms), _) => form.push(("MessagingServiceSid", ms)),
            (None, Some(from)) => form.push(("From", from)),
            (None, None) => {
                return Outcome::permanent("twilio: neither From nor MessagingServiceSid is set")
            }
        }
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            self.cfg.base_url.trim_end_matches('/'),
            self.cfg.account_sid
        );
        let res = match self
            .http
            .post(url)
            .basic_auth(&self.cfg.account_sid, Some(&self.cfg.auth_token))
            .form(&form)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return transport_error("twilio", &e),
        };
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        if status.is_success() {
            return match serde_json::from_str::<Created>(&text) {
                Ok(c) => Outcome::Accepted {
                    status: status_of(&c.status)
                        .filter(|s| s.rank() <= DeliveryStatus::Sent.rank())
                        .unwrap_or(DeliveryStatus::Accepted),
                    provider_message_id: Some(c.sid),
                    // Twilio prices a message only after sending (`price` is null here).
                    cost: None,
                    cost_currency: None,
                },
                Err(e) => Outcome::transient(format!("twilio: unreadable answer: {e}")),
            };
        }
        if status.is_server_error() || status.as_u16() == 429 {
            return Outcome::transient(format!("twilio: HTTP {status}"));
        }
        if status.as_u16() == 401 {
            return Outcome::transient("twilio: HTTP 401 (check the account SID and auth token)");
        }
        let err: ApiError = serde_json::from_str(&text).unwrap_or(ApiError {
            code: None,
            message: text.chars().take(200).collect(),
        });
        let reason = match err.code {
            Some(c) => format!("Twilio {c}: {}", err.message),
            None => format!("twilio: HTTP {status}: {}", err.message),
        };
        Outcome::Permanent {
            reason,
            opted_out: err.code == Some(UNSUBSCRIBED),
        }
    }
}

/// Twilio's `MessageStatus` as ours; `None` for statuses that say nothing about
/// an outbound message (`receiving`, `received`, `read`, ...).
pub fn status_of(s: &str) -> Option<DeliveryStatus> {
    Some(match s {
        "queued" | "accepted" | "scheduled" => DeliveryStatus::Accepted,
        "sending" | "sent" => DeliveryStatus::Sent,
        "delivered" => DeliveryStatus::Delivered,
        "undelivered" | "partially_delivered" => DeliveryStatus::Undelivered,
        "failed" | "canceled" => DeliveryStatus::Failed,
        _ => return None,
    })
}

type HmacSha1 = Hmac<Sha1>;

/// `X-Twilio-Signature` for a form-encoded request: base64(HMAC-SHA1(auth token,
/// URL + every POST parameter's name and value, sorted by name)). Hand-written
/// because no maintained crate does only this; it is the documented recipe.
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac = HmacSha1::new_from_slice(auth_token.as_bytes()).expect("any key length");
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Checks `given` against the expected signature in constant time.
pub fn verify(auth_token: &str, url: &str, params: &[(String, String)], given: &str) -> bool {
    use subtle::ConstantTimeEq;
    let expected = signature(auth_token, url, params);
    expected.as_bytes().ct_eq(given.trim().as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha1_over_url_and_sorted_fields() {
        // Twilio's guide's request (params deliberately not in order); the
        // expected value was computed independently with Python's hmac module.
        let params: Vec<(String, String)> = [
            ("Digits", "1234"),
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let url = "https://example.com/myapp";
        assert_eq!(
            signature("12345", url, &params),
            "NGAgWNhdnsLF8j385frvrQoi9sg="
        );
        assert!(verify(
            "12345",
            url,
            &params,
            "NGAgWNhdnsLF8j385frvrQoi9sg="
        ));
        assert!(!verify(
            "12345",
            url,
            &params,
            "NGAgWNhdnsLF8j385frvrQoi9sg"
        ));
        assert!(!verify(
            "54321",
            url,
            &params,
            "NGAgWNhdnsLF8j385frvrQoi9sg="
        ));
    }
}
