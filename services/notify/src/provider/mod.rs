//! The providers behind one interface. Each adapter speaks its gateway's own wire
//! format; which one serves a channel is configuration ([`crate::settings`]).

use std::time::Duration;

use async_trait::async_trait;
use isp_events::payloads::{DeliveryStatus, NotificationChannel};
use rust_decimal::Decimal;
use uuid::Uuid;

pub mod africastalking;
pub mod log;
pub mod smtp;
pub mod twilio;

/// One message as the worker hands it to a provider.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub id: Uuid,
    pub channel: NotificationChannel,
    pub recipient: String,
    pub subject: Option<String>,
    pub body: String,
}

/// What a send attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The provider took it. `status` is `Accepted` (a report will follow) or
    /// `Sent` (nothing will: SMTP, log).
    Accepted {
        status: DeliveryStatus,
        provider_message_id: Option<String>,
        cost: Option<Decimal>,
        cost_currency: Option<String>,
    },
    /// Worth trying again later (timeouts, 5xx, rate limiting, a gateway down).
    Transient { reason: String },
    /// Trying again cannot help (invalid number, insufficient balance, opted out).
    /// `opted_out`: the provider says the recipient opted out (Twilio 21610,
    /// AT's blacklist), so the recipient also goes on the suppression list.
    Permanent { reason: String, opted_out: bool },
}

impl Outcome {
    pub fn transient(reason: impl Into<String>) -> Self {
        Self::Transient {
            reason: reason.into(),
        }
    }
    pub fn permanent(reason: impl Into<String>) -> Self {
        Self::Permanent {
            reason: reason.into(),
            opted_out: false,
        }
    }
}

#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// `africastalking` | `twilio` | `smtp` | `log`: stored with each delivery and
    /// used to match delivery reports.
    fn name(&self) -> &'static str;
    async fn send(&self, msg: &Outgoing) -> Outcome;
}

/// HTTP client for the gateways: bounded, so a hung gateway is a transient
/// failure rather than a stuck worker.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .build()
        .expect("reqwest client")
}

/// An HTTP error that says nothing about the message itself.
pub(crate) fn transport_error(provider: &str, e: &reqwest::Error) -> Outcome {
    // Without the URL: it may carry credentials (Twilio's account path is not
    // secret, but keep one rule for all).
    let e = e.without_url_ref();
    Outcome::transient(format!("{provider}: {e}"))
}

trait WithoutUrl {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_ref(&self) -> String {
        if self.is_timeout() {
            "timed out".into()
        } else if self.is_connect() {
            "could not connect".into()
        } else {
            let mut s = self.to_string();
            if let Some(u) = self.url() {
                s = s.replace(u.as_str(), "<url>");
            }
            s
        }
    }
}
