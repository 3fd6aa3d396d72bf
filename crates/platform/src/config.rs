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
        let (host, port, name) = match admin.as_deref().map(db_target) {
            Some(parts) => parts.map_err(|e| anyhow::anyhow!("ISP_DATABASE_ADMIN_URL: {e}"))?,
            None => ("127.0.0.1".to_string(), 55432, "isp".to_string()),
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

/// Host, port and database name of a `postgres://` URL, parsed by sqlx itself
/// (libpq's URL rules: percent-encoded user and password, `[::1]` IPv6 hosts,
/// `?host=/run/postgresql` sockets), so the services' own roles connect where the
/// admin URL points. A socket directory is returned as the host (it starts with `/`).
pub fn db_target(url: &str) -> anyhow::Result<(String, u16, String)> {
    use std::str::FromStr;
    // sqlx reads any URL's parts; a mistyped scheme should not pass for Postgres.
    anyhow::ensure!(
        url.starts_with("postgres://") || url.starts_with("postgresql://"),
        "not a postgres:// URL"
    );
    let opts = sqlx::postgres::PgConnectOptions::from_str(url)
        .map_err(|e| anyhow::anyhow!("not a valid postgres URL: {e}"))?;
    let host = match opts.get_socket() {
        Some(dir) => dir.display().to_string(),
        None => opts.get_host().trim_matches(['[', ']']).to_string(),
    };
    Ok((
        host,
        opts.get_port(),
        opts.get_database().unwrap_or("postgres").to_string(),
    ))
}

/// The listen address of one service: `ISP_<SVC>_HTTP_ADDR`, else `ISP_HTTP_ADDR`,
/// else 127.0.0.1 on the service's port in docs/contract.md#services.
pub fn service_addr(service: &str, default_port: u16) -> anyhow::Result<SocketAddr> {
    let key = format!("ISP_{}_HTTP_ADDR", service.to_uppercase().replace('-', "_"));
    let v = env_opt(&key)
        .or_else(|| env_opt("ISP_HTTP_ADDR"))
        .unwrap_or_else(|| format!("127.0.0.1:{default_port}"));
    v.parse().map_err(|e| anyhow::anyhow!("{key}={v:?}: {e}"))
}

/// Writes a secret (a key, a token, a password) readable by its owner only (0600 on
/// Unix), creating the folder. `replace`: overwrite an existing file (its mode is
/// set to 0600 too); otherwise an existing file is an `AlreadyExists` error, so two
/// processes generating the same secret on first start keep the first one.
pub fn write_secret_file(path: &std::path::Path, contents: &str, replace: bool) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if replace {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        opts.mode(0o600);
        let mut f = opts.open(path)?;
        // `mode` applies only when the file is created; an older file may be wider.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()
    }
    #[cfg(not(unix))]
    {
        let mut f = opts.open(path)?;
        f.write_all(contents.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_pg_urls() {
        assert_eq!(
            super::db_target("postgres://postgres@127.0.0.1:55432/isp").unwrap(),
            ("127.0.0.1".into(), 55432, "isp".into())
        );
        assert_eq!(
            super::db_target("postgresql://u:p@db/x?sslmode=disable").unwrap(),
            ("db".into(), 5432, "x".into())
        );
        // A password with URL-reserved characters, percent-encoded; an IPv6 host.
        assert_eq!(
            super::db_target("postgres://isp:p%40ss%2Fw%3Ard@[::1]:6543/isp%20prod").unwrap(),
            ("::1".into(), 6543, "isp prod".into())
        );
        assert_eq!(
            super::db_target("postgres://u@[2001:db8::7]/x").unwrap(),
            ("2001:db8::7".into(), 5432, "x".into())
        );
        assert_eq!(
            super::db_target("postgresql:///isp?host=/run/postgresql&port=5433").unwrap(),
            ("/run/postgresql".into(), 5433, "isp".into())
        );
        assert!(super::db_target("mysql://x@y/z").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn secret_files_are_owner_only_even_when_replacing_a_wider_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("isp-secret-{}", uuid::Uuid::new_v4().simple()));
        let file = dir.join("a").join("token");
        super::write_secret_file(&file, "one", false).unwrap();
        let mode = |f: &std::path::Path| std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        let e = super::write_secret_file(&file, "two", false).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        super::write_secret_file(&file, "three", true).unwrap();
        assert_eq!(mode(&file), 0o600);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "three");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
