//! The state every service's handlers share.

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::auth::{HasKeys, Keys};
use crate::config::PlatformConfig;

pub struct ServiceContext {
    /// e.g. `core`, `wa-parser`: the URL prefix `/api/<name>`.
    pub name: &'static str,
    /// Event `source` and schema name (`wa_parser`).
    pub schema: &'static str,
    pub pool: PgPool,
    pub keys: Keys,
    pub config: PlatformConfig,
    pub nats: Option<async_nats::Client>,
    pub shutdown: CancellationToken,
}

impl ServiceContext {
    pub fn api_prefix(&self) -> String {
        format!("/api/{}", self.name)
    }
    /// Local calendar date in the ISP's time zone.
    pub fn today(&self) -> chrono::NaiveDate {
        chrono::Utc::now()
            .with_timezone(&self.config.timezone)
            .date_naive()
    }
}

impl HasKeys for std::sync::Arc<ServiceContext> {
    fn keys(&self) -> &Keys {
        &self.keys
    }
}
