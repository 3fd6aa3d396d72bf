//! `ISP_WA_PARSER_*` settings (README.md "Settings"). Every one has a default that
//! works on one machine: replies are logged instead of sent when no Cloud API URL
//! is set, and SMS replies go through Notify, which has a log-only mode of its own.

use std::time::Duration;

use ipnet::IpNet;
use isp_platform::config::{env_opt, env_or, env_parse};

/// Development defaults for the two WhatsApp secrets, used only when nothing is
/// configured; the service warns at start while they are in use.
pub const DEV_VERIFY_TOKEN: &str = "isp-dev-verify-token";
pub const DEV_APP_SECRET: &str = "isp-dev-app-secret";
pub const DEV_SMS_PATH_TOKEN: &str = "isp-dev-sms-token";

#[derive(Clone)]
pub struct Settings {
    /// `hub.verify_token` of the webhook handshake.
    pub verify_token: String,
    /// App secret: the key of `X-Hub-Signature-256`.
    pub app_secret: String,
    /// e.g. `https://graph.facebook.com/v21.0`; `None`: replies are logged, not sent.
    pub cloud_api_url: Option<String>,
    pub cloud_api_token: String,
    /// Our WhatsApp business number's id (the messages endpoint's path).
    pub phone_number_id: String,
    /// The unguessable path segment of the Africa's Talking callback URL.
    pub sms_path_token: String,
    /// The shortcode partners text; messages to any other number are ignored.
    pub sms_shortcode: Option<String>,
    /// Source addresses allowed to POST the SMS callback; empty: any.
    pub sms_allowlist: Vec<IpNet>,
    /// CRM's base URL; `None`: `ISP_INTERNAL_URL`.
    pub crm_url: Option<String>,
    /// Backoff of a message whose CRM call failed: base doubling up to max.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// How long a worker's claim on a message lasts before another may take it.
    pub lease: Duration,
}

impl std::fmt::Debug for Settings {
    // Secrets are never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("cloud_api_url", &self.cloud_api_url)
            .field("phone_number_id", &self.phone_number_id)
            .field("sms_shortcode", &self.sms_shortcode)
            .field("sms_allowlist", &self.sms_allowlist)
            .field("crm_url", &self.crm_url)
            .finish_non_exhaustive()
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            verify_token: DEV_VERIFY_TOKEN.into(),
            app_secret: DEV_APP_SECRET.into(),
            cloud_api_url: None,
            cloud_api_token: String::new(),
            phone_number_id: "100000000000001".into(),
            sms_path_token: DEV_SMS_PATH_TOKEN.into(),
            sms_shortcode: None,
            sms_allowlist: vec![],
            crm_url: None,
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(300),
            lease: Duration::from_secs(60),
        }
    }
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        let d = Settings::default();
        let allowlist = env_or("ISP_WA_PARSER_SMS_ALLOWLIST", "");
        let mut sms_allowlist = vec![];
        for item in allowlist.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let net: IpNet = match item.parse() {
                Ok(n) => n,
                Err(_) => item
                    .parse::<std::net::IpAddr>()
                    .map(IpNet::from)
                    .map_err(|_| anyhow::anyhow!("ISP_WA_PARSER_SMS_ALLOWLIST: {item:?} is not an address or CIDR"))?,
            };
            sms_allowlist.push(net);
        }
        Ok(Settings {
            verify_token: env_or("ISP_WA_PARSER_VERIFY_TOKEN", &d.verify_token),
            app_secret: env_or("ISP_WA_PARSER_APP_SECRET", &d.app_secret),
            cloud_api_url: env_opt("ISP_WA_PARSER_CLOUD_API_URL")
                .map(|u| u.trim_end_matches('/').to_string()),
            cloud_api_token: env_or("ISP_WA_PARSER_CLOUD_API_TOKEN", ""),
            phone_number_id: env_or("ISP_WA_PARSER_PHONE_NUMBER_ID", &d.phone_number_id),
            sms_path_token: env_or("ISP_WA_PARSER_SMS_PATH_TOKEN", &d.sms_path_token),
            sms_shortcode: env_opt("ISP_WA_PARSER_SMS_SHORTCODE"),
            sms_allowlist,
            crm_url: env_opt("ISP_WA_PARSER_CRM_URL"),
            retry_base: Duration::from_millis(env_parse("ISP_WA_PARSER_RETRY_BASE_MS", 2000u64)?),
            retry_max: Duration::from_secs(env_parse("ISP_WA_PARSER_RETRY_MAX_SECONDS", 300u64)?),
            lease: d.lease,
        })
    }

    /// Backoff before attempt `attempts + 1`.
    pub fn backoff(&self, attempts: i32) -> Duration {
        let exp = attempts.clamp(1, 20) as u32 - 1;
        self.retry_base
            .saturating_mul(2u32.saturating_pow(exp))
            .min(self.retry_max)
    }

    pub fn warn_on_dev_secrets(&self) {
        for (name, value, dev) in [
            ("ISP_WA_PARSER_VERIFY_TOKEN", &self.verify_token, DEV_VERIFY_TOKEN),
            ("ISP_WA_PARSER_APP_SECRET", &self.app_secret, DEV_APP_SECRET),
            ("ISP_WA_PARSER_SMS_PATH_TOKEN", &self.sms_path_token, DEV_SMS_PATH_TOKEN),
        ] {
            if value == dev {
                tracing::warn!("{name} is not set: using the development default; set it in production");
            }
        }
        if self.cloud_api_url.is_none() {
            tracing::info!("ISP_WA_PARSER_CLOUD_API_URL is not set: WhatsApp replies are logged, not sent");
        }
    }
}
