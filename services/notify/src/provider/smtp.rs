//! Email over SMTP with `lettre`. An SMTP server that accepts the message has
//! done all we will hear of (no delivery reports), so acceptance is `Sent`; a
//! 5xx reply is permanent, a 4xx or a connection failure transient.

use async_trait::async_trait;
use isp_events::payloads::DeliveryStatus;
use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{Outcome, Outgoing, Provider};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain SMTP (a local relay or the test sink).
    None,
    /// STARTTLS on the submission port (587).
    StartTls,
    /// Implicit TLS (465).
    Tls,
}

#[derive(Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<String>,
    pub from: String,
    /// Used when a request has no subject.
    pub default_subject: String,
}

impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("from", &self.from)
            .finish()
    }
}

pub struct Smtp {
    cfg: SmtpConfig,
    from: Mailbox,
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl Smtp {
    pub fn new(cfg: SmtpConfig) -> anyhow::Result<Self> {
        let from: Mailbox = cfg
            .from
            .parse()
            .map_err(|e| anyhow::anyhow!("ISP_NOTIFY_SMTP_FROM={:?}: {e}", cfg.from))?;
        let mut b = match cfg.tls {
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.host),
            SmtpTls::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&cfg.host)?,
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&cfg.host)?,
        }
        .port(cfg.port)
        .timeout(Some(std::time::Duration::from_secs(20)));
        if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
            b = b.credentials(Credentials::new(u.clone(), p.clone()));
        }
        Ok(Self {
            transport: b.build(),
            from,
            cfg,
        })
    }
}

/// Whether `s` is an address we can put in `To`.
pub fn valid_address(s: &str) -> bool {
    s.parse::<lettre::Address>().is_ok()
}

#[async_trait]
impl Provider for Smtp {
    fn name(&self) -> &'static str {
        "smtp"
    }

    async fn send(&self, msg: &Outgoing) -> Outcome {
        let to: Mailbox = match msg.recipient.parse() {
            Ok(m) => m,
            Err(e) => return Outcome::permanent(format!("InvalidRecipient: {e}")),
        };
        let message_id = format!("<{}@{}>", msg.id, self.from.email.domain());
        let email = match Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(
                msg.subject
                    .clone()
                    .unwrap_or_else(|| self.cfg.default_subject.clone()),
            )
            .message_id(Some(message_id.clone()))
            .header(ContentType::TEXT_PLAIN)
            .body(msg.body.clone())
        {
            Ok(m) => m,
            Err(e) => return Outcome::permanent(format!("smtp: cannot build the message: {e}")),
        };
        match self.transport.send(email).await {
            Ok(_) => Outcome::Accepted {
                status: DeliveryStatus::Sent,
                provider_message_id: Some(message_id),
                cost: None,
                cost_currency: None,
            },
            Err(e) if e.is_permanent() => Outcome::permanent(format!("smtp: {e}")),
            Err(e) => Outcome::transient(format!("smtp: {e}")),
        }
    }
}
