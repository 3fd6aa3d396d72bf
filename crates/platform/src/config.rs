//! Settings come from environment variables; every one has a default that works on
//! a developer's machine after `script/server`, and all are listed in the README.

use std::net::SocketAddr;
use std::path::PathBuf;

pub fn env_or(key: &str, default: &str) -> String {
    std::env::var(key)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

pub fn env_opt(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

pub fn env_parse<T: std::str::FromStr>(key: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match env_opt(key) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|e| anyhow::anyhow!("{key}={v:?} is not valid: {e}")),
    }
}

/// Settings every service reads. Service-specific settings live in the service.
#[derive(Clone)]
pub struct PlatformConfig {
    /// `ISP_DATA_DIR` (default `.data`): keys, uploads, private servers' data.
    pub data_dir: PathBuf,
    /// `ISP_DATABASE_ADMIN_URL`: a role that may create roles and schemas. Used at start
    /// to provision each service's own role and schema, then dropped. `none`: the
    /// roles exist already (provisioned by `isp init`); connect as the service's own
    /// role only, and never hold a superuser password.
    pub database_admin_url: Option<String>,
    /// `ISP_DATABASE_HOST`/`ISP_DATABASE_PORT`/`ISP_DATABASE_NAME`: where each service's
    /// own role connects (derived from the admin URL when that is set).
    pub database_host: String,
    pub database_port: u16,
    pub database_name: String,
    /// `ISP_NATS_URL` (default `nats://127.0.0.1:54222`).
    pub nats_url: String,
    /// `ISP_TIMEZONE` (default `Africa/Nairobi`): the ISP's local dates.
    pub timezone: chrono_tz::Tz,
    /// `ISP_PUBLIC_URL` (default `http://127.0.0.1:8080`): how others reach us (callbacks).
    pub public_url: String,
    /// `ISP_INTERNAL_URL` (default same as public): how services call each other.
    pub internal_url: String,
}

impl std::fmt::Debug for PlatformConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformConfig")
            .field("data_dir", &self.data_dir)
            .field(
                "database_admin_url",
                &self.database_admin_url.as_ref().map(|_| "<redacted>"),
            )
            .field("database_host", &self.database_host)
            .field("database_port", &self.database_port)
            .field("database_name", &self.database_name)
            .field("nats_url", &self.nats_url)
            .field("timezone", &self.timezone)
            .finish()
    }
}

impl PlatformConfig {
    pub fn from_env() -> anyhow::Result<Self> {
        let admin = match env_opt("ISP_DATABASE_ADMIN_URL") {
            Some(v) if v.eq_ignore_ascii_case("none") => None,
            Some(v) => Some(v),
            None => Some("postgres://postgres@127.0.0.1:55432/isp".to_string()),
        };
        let (host, port, name) = match admin.as_deref().map(parse_pg_url) {
            Some(Ok(parts)) => parts,
            _ => ("127.0.0.1".to_string(), 55432, "isp".to_string()),
        };
        let public_url = env_or("ISP_PUBLIC_URL", "http://127.0.0.1:8080");
        Ok(Self {
            data_dir: PathBuf::from(env_or("ISP_DATA_DIR", ".data")),
            database_admin_url: admin,
            database_host: env_or("ISP_DATABASE_HOST", &host),
            database_port: env_parse("ISP_DATABASE_PORT", port)?,
            database_name: env_or("ISP_DATABASE_NAME", &name),
            nats_url: env_or("ISP_NATS_URL", "nats://127.0.0.1:54222"),
            timezone: env_or("ISP_TIMEZONE", "Africa/Nairobi")
                .parse()
                .map_err(|e| anyhow::anyhow!("ISP_TIMEZONE: {e}"))?,
            internal_url: env_or("ISP_INTERNAL_URL", &public_url),
            public_url,
        })
    }
}

/// Host, port and database name of a `postgres://` URL.
pub fn parse_pg_url(url: &str) -> anyhow::Result<(String, u16, String)> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| anyhow::anyhow!("not a postgres URL"))?;
    let rest = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
    let (hostport, db) = rest.split_once('/').unwrap_or((rest, "postgres"));
    let db = db.split('?').next().unwrap_or("postgres");
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse()?),
        None => (hostport.to_string(), 5432),
    };
    Ok((host, port, db.to_string()))
}

/// The listen address of one service: `ISP_<SVC>_HTTP_ADDR`, else `ISP_HTTP_ADDR`,
/// else 127.0.0.1 on the service's port from DESIGN.md.
pub fn service_addr(service: &str, default_port: u16) -> anyhow::Result<SocketAddr> {
    let key = format!("ISP_{}_HTTP_ADDR", service.to_uppercase().replace('-', "_"));
    let v = env_opt(&key)
        .or_else(|| env_opt("ISP_HTTP_ADDR"))
        .unwrap_or_else(|| format!("127.0.0.1:{default_port}"));
    v.parse().map_err(|e| anyhow::anyhow!("{key}={v:?}: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_pg_urls() {
        assert_eq!(
            super::parse_pg_url("postgres://postgres@127.0.0.1:55432/isp").unwrap(),
            ("127.0.0.1".into(), 55432, "isp".into())
        );
        assert_eq!(
            super::parse_pg_url("postgresql://u:p@db/x?sslmode=disable").unwrap(),
            ("db".into(), 5432, "x".into())
        );
    }
}
