//! Notify's settings, from `ISP_NOTIFY_*` (all listed in services/notify/README.md).
//! Credentials are read here and never printed: every config type redacts them
//! in `Debug`.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use isp_platform::config::{env_opt, env_or, env_parse, PlatformConfig};
use ring::rand::SecureRandom;

use crate::provider::africastalking::AfricasTalkingConfig;
use crate::provider::smtp::{SmtpConfig, SmtpTls};
use crate::provider::twilio::TwilioConfig;

#[derive(Debug, Clone)]
pub enum SmsProvider {
    Log,
    AfricasTalking(AfricasTalkingConfig),
    Twilio(TwilioConfig),
}

#[derive(Debug, Clone)]
pub enum EmailProvider {
    Log,
    Smtp(SmtpConfig),
}

#[derive(Clone)]
pub struct Settings {
    pub sms: SmsProvider,
    pub email: EmailProvider,
    /// Sends per second per channel's provider; 0 = as fast as it answers.
    pub sms_rate_per_second: f64,
    pub email_rate_per_second: f64,
    /// Sends in flight at once per channel.
    pub concurrency: usize,
    /// Pullers sharing the request consumer (requests are recorded in parallel).
    pub request_consumers: usize,
    /// Attempts before a transiently failing message is Failed.
    pub max_attempts: i32,
    /// Backoff after the n-th transient failure: base * 2^(n-1), capped.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Timeout of one request to a gateway.
    pub request_timeout: Duration,
    /// How long a claimed message is ours before another worker may retry it.
    pub lease: Duration,
    /// Poll interval when no wake-up arrives.
    pub poll_interval: Duration,
    /// The path token in Africa's Talking's callback URLs (it does not sign them).
    pub at_callback_token: String,
    /// Twilio's auth token for checking `X-Twilio-Signature` on callbacks (also
    /// when SMS is sent by another provider, e.g. during a switch-over).
    pub twilio_auth_token: Option<String>,
    /// The exact URLs Twilio calls (it signs the URL it called).
    pub twilio_status_url: String,
    pub twilio_inbound_url: String,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("sms", &self.sms)
            .field("email", &self.email)
            .field("sms_rate_per_second", &self.sms_rate_per_second)
            .field("email_rate_per_second", &self.email_rate_per_second)
            .field("concurrency", &self.concurrency)
            .field("request_consumers", &self.request_consumers)
            .field("max_attempts", &self.max_attempts)
            .field("retry_base", &self.retry_base)
            .field("retry_max", &self.retry_max)
            .field("request_timeout", &self.request_timeout)
            .field("lease", &self.lease)
            .field("at_callback_token", &"<redacted>")
            .field(
                "twilio_auth_token",
                &self.twilio_auth_token.as_ref().map(|_| "<redacted>"),
            )
            .field("twilio_status_url", &self.twilio_status_url)
            .field("twilio_inbound_url", &self.twilio_inbound_url)
            .finish()
    }
}

fn secs(key: &str, default: f64) -> anyhow::Result<Duration> {
    let v: f64 = env_parse(key, default)?;
    anyhow::ensure!(
        v >= 0.0 && v.is_finite(),
        "{key} must be a number of seconds >= 0"
    );
    Ok(Duration::from_secs_f64(v))
}

impl Settings {
    /// SMS through `sms`, email logged, unthrottled, with short retries: what tests
    /// and benchmarks run with against a local stand-in.
    pub fn unthrottled(sms: SmsProvider, at_callback_token: &str) -> Self {
        Self {
            sms,
            email: EmailProvider::Log,
            sms_rate_per_second: 0.0,
            email_rate_per_second: 0.0,
            concurrency: 4,
            request_consumers: 2,
            max_attempts: 5,
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_millis(500),
            request_timeout: Duration::from_secs(5),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(200),
            at_callback_token: at_callback_token.into(),
            twilio_auth_token: None,
            twilio_status_url: "http://127.0.0.1:9/unused".into(),
            twilio_inbound_url: "http://127.0.0.1:9/unused".into(),
        }
    }

    pub fn from_env(platform: &PlatformConfig) -> anyhow::Result<Self> {
        let public = platform.public_url.trim_end_matches('/').to_string();
        let twilio_status_url = env_or(
            "ISP_NOTIFY_TWILIO_STATUS_CALLBACK_URL",
            &format!("{public}/api/notify/callbacks/twilio/status"),
        );
        let twilio_inbound_url = env_or(
            "ISP_NOTIFY_TWILIO_INBOUND_URL",
            &format!("{public}/api/notify/callbacks/twilio/inbound"),
        );
        let twilio_auth_token = env_opt("ISP_NOTIFY_TWILIO_AUTH_TOKEN");

        let at = || -> anyhow::Result<AfricasTalkingConfig> {
            let username = env_opt("ISP_NOTIFY_AT_USERNAME").ok_or_else(|| {
                anyhow::anyhow!("ISP_NOTIFY_AT_USERNAME is required for africastalking")
            })?;
            let api_key = env_opt("ISP_NOTIFY_AT_API_KEY").ok_or_else(|| {
                anyhow::anyhow!("ISP_NOTIFY_AT_API_KEY is required for africastalking")
            })?;
            Ok(AfricasTalkingConfig {
                base_url: env_or(
                    "ISP_NOTIFY_AT_BASE_URL",
                    AfricasTalkingConfig::default_base_url(&username),
                ),
                sender_id: env_opt("ISP_NOTIFY_AT_SENDER_ID"),
                username,
                api_key,
            })
        };
        let twilio = || -> anyhow::Result<TwilioConfig> {
            let account_sid = env_opt("ISP_NOTIFY_TWILIO_ACCOUNT_SID").ok_or_else(|| {
                anyhow::anyhow!("ISP_NOTIFY_TWILIO_ACCOUNT_SID is required for twilio")
            })?;
            let auth_token = twilio_auth_token.clone().ok_or_else(|| {
                anyhow::anyhow!("ISP_NOTIFY_TWILIO_AUTH_TOKEN is required for twilio")
            })?;
            let from = env_opt("ISP_NOTIFY_TWILIO_FROM");
            let messaging_service_sid = env_opt("ISP_NOTIFY_TWILIO_MESSAGING_SERVICE_SID");
            anyhow::ensure!(
                from.is_some() || messaging_service_sid.is_some(),
                "twilio needs ISP_NOTIFY_TWILIO_FROM or ISP_NOTIFY_TWILIO_MESSAGING_SERVICE_SID"
            );
            Ok(TwilioConfig {
                account_sid,
                auth_token,
                from,
                messaging_service_sid,
                base_url: env_or("ISP_NOTIFY_TWILIO_BASE_URL", "https://api.twilio.com"),
                status_callback_url: twilio_status_url.clone(),
            })
        };
        // Explicit choice, else the first gateway with credentials, else log-only.
        let sms = match env_opt("ISP_NOTIFY_SMS_PROVIDER").as_deref() {
            Some("log") => SmsProvider::Log,
            Some("africastalking") => SmsProvider::AfricasTalking(at()?),
            Some("twilio") => SmsProvider::Twilio(twilio()?),
            Some(other) => anyhow::bail!(
                "ISP_NOTIFY_SMS_PROVIDER={other:?}: expected log, africastalking or twilio"
            ),
            None if env_opt("ISP_NOTIFY_AT_API_KEY").is_some() => {
                SmsProvider::AfricasTalking(at()?)
            }
            None if env_opt("ISP_NOTIFY_TWILIO_ACCOUNT_SID").is_some() => {
                SmsProvider::Twilio(twilio()?)
            }
            None => SmsProvider::Log,
        };
        let smtp = || -> anyhow::Result<SmtpConfig> {
            let host = env_opt("ISP_NOTIFY_SMTP_HOST")
                .ok_or_else(|| anyhow::anyhow!("ISP_NOTIFY_SMTP_HOST is required for smtp"))?;
            let tls = match env_or("ISP_NOTIFY_SMTP_TLS", "starttls").as_str() {
                "none" => SmtpTls::None,
                "starttls" => SmtpTls::StartTls,
                "tls" => SmtpTls::Tls,
                other => {
                    anyhow::bail!("ISP_NOTIFY_SMTP_TLS={other:?}: expected none, starttls or tls")
                }
            };
            let default_port = match tls {
                SmtpTls::None => 25,
                SmtpTls::StartTls => 587,
                SmtpTls::Tls => 465,
            };
            Ok(SmtpConfig {
                host,
                port: env_parse("ISP_NOTIFY_SMTP_PORT", default_port)?,
                tls,
                username: env_opt("ISP_NOTIFY_SMTP_USERNAME"),
                password: env_opt("ISP_NOTIFY_SMTP_PASSWORD"),
                from: env_or("ISP_NOTIFY_SMTP_FROM", "ISP <noreply@isp.local>"),
                default_subject: env_or(
                    "ISP_NOTIFY_EMAIL_DEFAULT_SUBJECT",
                    "A message from your ISP",
                ),
            })
        };
        let email = match env_opt("ISP_NOTIFY_EMAIL_PROVIDER").as_deref() {
            Some("log") => EmailProvider::Log,
            Some("smtp") => EmailProvider::Smtp(smtp()?),
            Some(other) => {
                anyhow::bail!("ISP_NOTIFY_EMAIL_PROVIDER={other:?}: expected log or smtp")
            }
            None if env_opt("ISP_NOTIFY_SMTP_HOST").is_some() => EmailProvider::Smtp(smtp()?),
            None => EmailProvider::Log,
        };
        let at_callback_token = match env_opt("ISP_NOTIFY_AT_CALLBACK_TOKEN") {
            Some(t) => t,
            None => load_or_create_token(&platform.data_dir)?,
        };
        let s = Settings {
            sms,
            email,
            sms_rate_per_second: env_parse("ISP_NOTIFY_SMS_RATE_PER_SECOND", 10.0)?,
            email_rate_per_second: env_parse("ISP_NOTIFY_EMAIL_RATE_PER_SECOND", 5.0)?,
            concurrency: env_parse("ISP_NOTIFY_CONCURRENCY", 16usize)?,
            request_consumers: env_parse("ISP_NOTIFY_REQUEST_CONSUMERS", 4usize)?,
            max_attempts: env_parse("ISP_NOTIFY_MAX_ATTEMPTS", 8)?,
            retry_base: secs("ISP_NOTIFY_RETRY_BASE_SECONDS", 5.0)?,
            retry_max: secs("ISP_NOTIFY_RETRY_MAX_SECONDS", 900.0)?,
            request_timeout: secs("ISP_NOTIFY_REQUEST_TIMEOUT_SECONDS", 15.0)?,
            lease: secs("ISP_NOTIFY_LEASE_SECONDS", 120.0)?,
            poll_interval: Duration::from_secs(1),
            at_callback_token,
            twilio_auth_token,
            twilio_status_url,
            twilio_inbound_url,
        };
        s.check()?;
        Ok(s)
    }

    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.sms_rate_per_second >= 0.0,
            "ISP_NOTIFY_SMS_RATE_PER_SECOND must be >= 0"
        );
        anyhow::ensure!(
            self.email_rate_per_second >= 0.0,
            "ISP_NOTIFY_EMAIL_RATE_PER_SECOND must be >= 0"
        );
        anyhow::ensure!(self.concurrency >= 1, "ISP_NOTIFY_CONCURRENCY must be >= 1");
        anyhow::ensure!(
            (1..=32).contains(&self.request_consumers),
            "ISP_NOTIFY_REQUEST_CONSUMERS must be 1 to 32"
        );
        anyhow::ensure!(
            self.max_attempts >= 1,
            "ISP_NOTIFY_MAX_ATTEMPTS must be >= 1"
        );
        anyhow::ensure!(
            self.at_callback_token.len() >= 16,
            "ISP_NOTIFY_AT_CALLBACK_TOKEN must be at least 16 characters"
        );
        Ok(())
    }

    /// Backoff before attempt `attempts + 1`.
    pub fn backoff(&self, attempts: i32) -> Duration {
        let exp = attempts.saturating_sub(1).clamp(0, 20) as u32;
        self.retry_base
            .saturating_mul(1u32 << exp)
            .min(self.retry_max)
    }
}

/// `<data>/keys/notify-africastalking.token`, created on first start.
fn load_or_create_token(data_dir: &Path) -> anyhow::Result<String> {
    let file = data_dir.join("keys").join("notify-africastalking.token");
    if file.exists() {
        return Ok(std::fs::read_to_string(&file)?.trim().to_string());
    }
    let mut raw = [0u8; 24];
    ring::rand::SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| anyhow::anyhow!("no randomness"))?;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&file, &token)?;
    tracing::info!(path = %file.display(), "generated the Africa's Talking callback path token");
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_has_no_secrets() {
        let s = Settings {
            sms: SmsProvider::AfricasTalking(AfricasTalkingConfig {
                username: "isp".into(),
                api_key: "at-secret-key".into(),
                sender_id: None,
                base_url: "https://api.africastalking.com".into(),
            }),
            email: EmailProvider::Smtp(SmtpConfig {
                host: "smtp.example.com".into(),
                port: 587,
                tls: SmtpTls::StartTls,
                username: Some("mailer".into()),
                password: Some("smtp-secret-pw".into()),
                from: "ISP <noreply@isp.local>".into(),
                default_subject: "Hi".into(),
            }),
            sms_rate_per_second: 1.0,
            email_rate_per_second: 1.0,
            concurrency: 1,
            request_consumers: 1,
            max_attempts: 1,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            lease: Duration::from_secs(1),
            poll_interval: Duration::from_secs(1),
            at_callback_token: "path-token-secret-0123".into(),
            twilio_auth_token: Some("twilio-secret-tok".into()),
            twilio_status_url: String::new(),
            twilio_inbound_url: String::new(),
        };
        let out = format!("{s:?}");
        for secret in [
            "at-secret-key",
            "smtp-secret-pw",
            "path-token-secret-0123",
            "twilio-secret-tok",
        ] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
    }
}
