//! One database, one schema and one Postgres role per service.
//!
//! At start a service (or the launcher, for all of them) provisions its role and
//! schema through the admin URL, then connects as its own role, whose search_path is
//! its schema and which has no privilege on any other service's schema. A bug or an
//! injection in CRM therefore cannot read Billing's tables: the database refuses.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor, PgPool};
use std::time::Duration;

use crate::config::{env_opt, env_parse, PlatformConfig};

/// One service's database identity.
#[derive(Clone)]
pub struct ServiceDb {
    /// Postgres role, e.g. `isp_core`.
    pub role: String,
    /// Schemas the role owns; the first is its search_path.
    pub schemas: Vec<String>,
    pub password: String,
}

impl std::fmt::Debug for ServiceDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceDb")
            .field("role", &self.role)
            .field("schemas", &self.schemas)
            .finish()
    }
}

impl ServiceDb {
    /// `schema` is the service's schema name (`wa_parser` for wa-parser). The password
    /// comes from `ISP_<SCHEMA>_DATABASE_PASSWORD`, default `isp_<schema>` for a dev box.
    pub fn for_service(schema: &str) -> Self {
        let role = format!("isp_{schema}");
        let password = env_opt(&format!("ISP_{}_DATABASE_PASSWORD", schema.to_uppercase()))
            .unwrap_or_else(|| role.clone());
        Self {
            role,
            schemas: vec![schema.to_string()],
            password,
        }
    }

    pub fn with_schema(mut self, schema: &str) -> Self {
        self.schemas.push(schema.to_string());
        self
    }
}

/// Extra login roles that are not services but read a service's schema (FreeRADIUS).
#[derive(Clone)]
pub struct ReaderRole {
    pub role: String,
    pub password: String,
    pub schema: String,
}

/// Creates (idempotently) each service's role and schemas in the database behind
/// `admin_url`. Safe to run concurrently from several processes: the work is
/// serialized by an advisory lock, because CREATE ROLE has no IF NOT EXISTS.
///
/// Roles are cluster-wide while advisory locks are per database, so processes
/// provisioning different databases of one cluster (test runs, several platforms
/// on one server) can still collide on the role catalog ("tuple concurrently
/// updated", duplicate role): those attempts are retried.
pub async fn provision(
    admin_url: &str,
    services: &[ServiceDb],
    readers: &[ReaderRole],
) -> anyhow::Result<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut conn = sqlx::PgConnection::connect(admin_url).await?;
        conn.execute("SELECT pg_advisory_lock(7340001)").await?;
        let result = provision_locked(&mut conn, services, readers).await;
        let _ = conn.execute("SELECT pg_advisory_unlock(7340001)").await;
        match result {
            Err(e) if attempt < 8 && is_catalog_race(&e) => {
                let jitter = rand::random::<u64>() % 200;
                tokio::time::sleep(Duration::from_millis(50 + jitter)).await;
            }
            other => return other,
        }
    }
}

fn is_catalog_race(e: &anyhow::Error) -> bool {
    match e.downcast_ref::<sqlx::Error>() {
        Some(sqlx::Error::Database(db)) => {
            matches!(
                db.code().as_deref(),
                Some("XX000") | Some("23505") | Some("42710") | Some("40001")
            ) || db.message().contains("concurrently")
        }
        _ => false,
    }
}

/// `ALTER ROLE .. SET search_path` only when it differs: catalog writes are what
/// concurrent starts collide on.
async fn set_search_path(
    conn: &mut sqlx::PgConnection,
    role: &str,
    schema: &str,
) -> anyhow::Result<()> {
    let wanted = format!("search_path={schema}");
    let current: Option<Vec<String>> =
        sqlx::query_scalar("SELECT rolconfig FROM pg_roles WHERE rolname = $1")
            .bind(role)
            .fetch_one(&mut *conn)
            .await?;
    if !current.unwrap_or_default().contains(&wanted) {
        conn.execute(format!("ALTER ROLE {role} SET search_path = {schema}").as_str())
            .await?;
    }
    Ok(())
}

async fn provision_locked(
    conn: &mut sqlx::PgConnection,
    services: &[ServiceDb],
    readers: &[ReaderRole],
) -> anyhow::Result<()> {
    for s in services {
        ensure_role(conn, &s.role, &s.password).await?;
        for schema in &s.schemas {
            check_ident(schema)?;
            conn.execute(
                format!(
                    "CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {}",
                    s.role
                )
                .as_str(),
            )
            .await?;
            // A schema created earlier by someone else still ends up the service's.
            conn.execute(format!("ALTER SCHEMA {schema} OWNER TO {}", s.role).as_str())
                .await?;
        }
        set_search_path(conn, &s.role, &s.schemas[0]).await?;
    }
    for r in readers {
        ensure_role(conn, &r.role, &r.password).await?;
        check_ident(&r.schema)?;
        conn.execute(format!("CREATE SCHEMA IF NOT EXISTS {}", r.schema).as_str())
            .await?;
        conn.execute(format!("GRANT USAGE ON SCHEMA {} TO {}", r.schema, r.role).as_str())
            .await?;
        set_search_path(conn, &r.role, &r.schema).await?;
    }
    // Nobody but the owner may create objects in `public` (PG 15's default, made explicit).
    conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        .await?;
    Ok(())
}

async fn ensure_role(
    conn: &mut sqlx::PgConnection,
    role: &str,
    password: &str,
) -> anyhow::Result<()> {
    check_ident(role)?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(role)
            .fetch_one(&mut *conn)
            .await?;
    let verb = if exists { "ALTER" } else { "CREATE" };
    // Passwords cannot be bound parameters in DDL; quote them as literals.
    let sql = format!(
        "{verb} ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT PASSWORD {}",
        quote_literal(password)
    );
    conn.execute(sql.as_str()).await?;
    Ok(())
}

fn check_ident(s: &str) -> anyhow::Result<()> {
    if s.is_empty()
        || !s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        anyhow::bail!("{s:?} is not a plain lower-case identifier");
    }
    Ok(())
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A pool connected as the service's own role with its schema as search_path.
pub async fn connect(cfg: &PlatformConfig, db: &ServiceDb) -> anyhow::Result<PgPool> {
    let opts = PgConnectOptions::new();
    // A host starting with `/` is a Unix socket directory (libpq's rule).
    let opts = if cfg.database_host.starts_with('/') {
        opts.socket(&cfg.database_host)
    } else {
        opts.host(&cfg.database_host)
    };
    let opts = opts
        .port(cfg.database_port)
        .database(&cfg.database_name)
        .username(&db.role)
        .password(&db.password)
        .options([("search_path", db.schemas[0].as_str()), ("timezone", "UTC")]);
    let max: u32 = env_parse("ISP_DATABASE_POOL_SIZE", 10)?;
    let pool = PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts)
        .await?;
    Ok(pool)
}
