//! Africa's Talking SMS: `POST <base>/version1/messaging`, form-encoded, header
//! `apiKey`; success is HTTP 201 with a per-recipient `statusCode` (GATEWAYS.md
//! section 3). 100 Processed, 101 Sent and 102 Queued all mean the gateway took
//! the message (Accepted); delivery comes later in the delivery report.

use std::str::FromStr;

use async_trait::async_trait;
use isp_events::payloads::DeliveryStatus;
use rust_decimal::Decimal;
use serde::Deserialize;

use super::{transport_error, Outcome, Outgoing, Provider};

#[derive(Clone)]
pub struct AfricasTalkingConfig {
    pub username: String,
    pub api_key: String,
    /// Sender id or shortcode (`from`); the account's default when absent.
    pub sender_id: Option<String>,
    /// `https://api.africastalking.com`, the sandbox host, or a stand-in.
    pub base_url: String,
}

impl std::fmt::Debug for AfricasTalkingConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfricasTalkingConfig")
            .field("username", &self.username)
            .field("api_key", &"<redacted>")
            .field("sender_id", &self.sender_id)
            .field("base_url", &self.base_url)
            .finish()
    }
}

impl AfricasTalkingConfig {
    /// The live host, or the sandbox when the username is `sandbox` (as the SDKs do).
    pub fn default_base_url(username: &str) -> &'static str {
        if username == "sandbox" {
            "https://api.sandbox.africastalking.com"
        } else {
            "https://api.africastalking.com"
        }
    }
}

pub struct AfricasTalking {
    cfg: AfricasTalkingConfig,
    http: reqwest::Client,
}

impl AfricasTalking {
    pub fn new(cfg: AfricasTalkingConfig, http: reqwest::Client) -> Self {
        Self { cfg, http }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SendResponse {
    #[serde(rename = "SMSMessageData")]
    sms_message_data: MessageData,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct MessageData {
    #[serde(default)]
    message: String,
    #[serde(default)]
    recipients: Vec<Recipient>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Recipient {
    status_code: i64,
    #[serde(default)]
    status: String,
    #[serde(default)]
    cost: Option<String>,
    #[serde(default)]
    message_id: Option<String>,
}

/// `"KES 0.8000"` -> (0.8000, KES). Anything else: no cost rather than a guess.
pub fn parse_cost(s: &str) -> Option<(Decimal, String)> {
    let (cur, amount) = s.trim().split_once(' ')?;
    Some((Decimal::from_str(amount.trim()).ok()?, cur.to_string()))
}

/// A recipient's `statusCode` as an outcome.
fn classify(r: &Recipient) -> Outcome {
    match r.status_code {
        100..=102 => {
            let (cost, cur) = r
                .cost
                .as_deref()
                .and_then(parse_cost)
                .map(|(c, k)| (Some(c), Some(k)))
                .unwrap_or((None, None));
            Outcome::Accepted {
                status: DeliveryStatus::Accepted,
                provider_message_id: r.message_id.clone().filter(|m| m != "None"),
                cost,
                cost_currency: cur,
            }
        }
        // The gateway's own trouble: it may take the message a little later.
        500 | 501 => Outcome::transient(format!("{} ({})", r.status, r.status_code)),
        406 => Outcome::Permanent {
            reason: format!(
                "{} ({})",
                non_empty(&r.status, "UserInBlacklist"),
                r.status_code
            ),
            opted_out: true,
        },
        // 401 RiskHold, 402 InvalidSenderId, 403 InvalidPhoneNumber,
        // 404 UnsupportedNumberType, 405 InsufficientBalance, 407 CouldNotRoute,
        // 409 DoNotDisturbRejection, 502 RejectedByGateway.
        code => Outcome::permanent(format!("{} ({code})", non_empty(&r.status, "Rejected"))),
    }
}

fn non_empty<'a>(s: &'a str, default: &'a str) -> &'a str {
    if s.trim().is_empty() {
        default
    } else {
        s
    }
}

#[async_trait]
impl Provider for AfricasTalking {
    fn name(&self) -> &'static str {
        "africastalking"
    }

    async fn send(&self, msg: &Outgoing) -> Outcome {
        let mut form: Vec<(&str, &str)> = vec![
            ("username", &self.cfg.username),
            ("to", &msg.recipient),
            ("message", &msg.body),
            ("bulkSMSMode", "1"),
            ("enqueue", "1"),
        ];
        if let Some(from) = &self.cfg.sender_id {
            form.push(("from", from));
        }
        let url = format!(
            "{}/version1/messaging",
            self.cfg.base_url.trim_end_matches('/')
        );
        let res = match self
            .http
            .post(url)
            .header("apiKey", &self.cfg.api_key)
            .header("Accept", "application/json")
            .form(&form)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return transport_error("africastalking", &e),
        };
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        if status.is_server_error() || status.as_u16() == 429 {
            return Outcome::transient(format!("africastalking: HTTP {status}"));
        }
        if status.as_u16() == 401 || status.as_u16() == 403 {
            // Our credentials, not the message: retry, an operator can fix the key.
            return Outcome::transient(format!(
                "africastalking: HTTP {status} (check the API key)"
            ));
        }
        if !status.is_success() {
            return Outcome::permanent(format!(
                "africastalking: HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            ));
        }
        let parsed: SendResponse = match serde_json::from_str(&text) {
            Ok(p) => p,
            Err(e) => return Outcome::transient(format!("africastalking: unreadable answer: {e}")),
        };
        match parsed.sms_message_data.recipients.first() {
            Some(r) => classify(r),
            // No recipient row: AT refused the request as a whole
            // (e.g. "InvalidSenderId"); its message says why.
            None => Outcome::permanent(format!(
                "africastalking: {}",
                non_empty(&parsed.sms_message_data.message, "no recipient accepted")
            )),
        }
    }
}

/// A delivery report's `status` as ours (GATEWAYS.md: Success, Sent, Submitted,
/// Buffered, Rejected, Failed, AbsentSubscriber, Expired).
pub fn report_status(s: &str) -> Option<DeliveryStatus> {
    Some(match s {
        "Success" => DeliveryStatus::Delivered,
        "Sent" | "Buffered" => DeliveryStatus::Sent,
        "Submitted" => DeliveryStatus::Accepted,
        "Rejected" | "Failed" | "AbsentSubscriber" => DeliveryStatus::Undelivered,
        "Expired" => DeliveryStatus::Expired,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(code: i64, status: &str) -> Recipient {
        Recipient {
            status_code: code,
            status: status.into(),
            cost: Some("KES 0.8000".into()),
            message_id: Some("ATXid_1".into()),
        }
    }

    #[test]
    fn accepted_codes_are_accepted_not_delivered() {
        for code in 100..=102 {
            match classify(&r(code, "Success")) {
                Outcome::Accepted { status, cost, .. } => {
                    assert_eq!(status, DeliveryStatus::Accepted);
                    assert_eq!(cost, Some(Decimal::new(8000, 4)));
                }
                o => panic!("{code}: {o:?}"),
            }
        }
        assert!(
            matches!(classify(&r(403, "InvalidPhoneNumber")), Outcome::Permanent { reason, .. } if reason.contains("InvalidPhoneNumber"))
        );
        assert!(matches!(
            classify(&r(405, "InsufficientBalance")),
            Outcome::Permanent { .. }
        ));
        assert!(matches!(
            classify(&r(500, "InternalServerError")),
            Outcome::Transient { .. }
        ));
        assert!(matches!(
            classify(&r(406, "UserInBlacklist")),
            Outcome::Permanent {
                opted_out: true,
                ..
            }
        ));
    }
}
