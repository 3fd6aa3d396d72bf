//! A fresh Postgres database per test, on the private server `script/test` starts.
//!
//! `ISP_TEST_PG_ADMIN_URL` (default `postgres://postgres@127.0.0.1:55432/postgres`)
//! names a superuser connection to that server. Each [`TestDb`] is a new database
//! `isp_test_<uuid>`, dropped again when the `TestDb` is dropped (set
//! `ISP_TEST_KEEP_DB=1` to keep it for a post-mortem).

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:55432/postgres";

/// A database of its own for one test.
#[derive(Debug)]
pub struct TestDb {
    /// Superuser URL pointing at this test's database.
    pub admin_url: String,
    /// The database name, `isp_test_<uuid>`.
    pub name: String,
    pub host: String,
    pub port: u16,
    /// The server-level admin URL it was created through (for dropping it).
    server_url: String,
}

impl TestDb {
    /// Creates a fresh, empty database.
    pub async fn create() -> anyhow::Result<TestDb> {
        let server_url = std::env::var("ISP_TEST_PG_ADMIN_URL")
            .unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_string());
        let mut conn = tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(&server_url))
            .await
            .map_err(|_| anyhow::anyhow!("timed out"))
            .and_then(|r| r.map_err(anyhow::Error::from))
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot reach the test Postgres at {server_url}: {e}. \
                     Start the private servers with `script/test` (it starts Postgres on port 55432), \
                     or point ISP_TEST_PG_ADMIN_URL at a superuser connection."
                )
            })?;

        let name = format!("isp_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .with_context(|| format!("creating database {name}"))?;
        let _ = conn.close().await;

        let mut url = reqwest::Url::parse(&server_url).context("parsing ISP_TEST_PG_ADMIN_URL")?;
        url.set_path(&format!("/{name}"));
        let opts = PgConnectOptions::from_str(&server_url)?;
        Ok(TestDb {
            admin_url: url.to_string(),
            name,
            host: opts.get_host().to_string(),
            port: opts.get_port(),
            server_url,
        })
    }

    /// A URL to this database as `user` with `password` (e.g. a role a test created).
    pub fn url_for(&self, user: &str, password: &str) -> String {
        let mut url = reqwest::Url::parse(&self.admin_url).expect("admin_url is a valid URL");
        let _ = url.set_username(user);
        let _ = url.set_password(if password.is_empty() {
            None
        } else {
            Some(password)
        });
        url.to_string()
    }

    /// Superuser connect options for this database.
    pub fn connect_options(&self) -> PgConnectOptions {
        PgConnectOptions::from_str(&self.admin_url).expect("admin_url is a valid Postgres URL")
    }

    /// A superuser pool whose connections use `search_path = <schema>` (the schema
    /// is created if missing), the way a service connects to its own schema.
    pub async fn schema_pool(&self, schema: &str, max_connections: u32) -> anyhow::Result<PgPool> {
        let quoted = format!("\"{}\"", schema.replace('"', "\"\""));
        let mut conn = PgConnection::connect_with(&self.connect_options()).await?;
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {quoted}"))
            .execute(&mut conn)
            .await?;
        let _ = conn.close().await;
        let opts = self.connect_options().options([("search_path", schema)]);
        Ok(PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await?)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::env::var("ISP_TEST_KEEP_DB").is_ok_and(|v| !v.is_empty() && v != "0") {
            return;
        }
        // Drop runs inside the test's runtime, which cannot be blocked on; do it
        // on a thread with its own small runtime. FORCE ends the test's still-open
        // connections (pools are closed lazily).
        let server_url = self.server_url.clone();
        let name = self.name.clone();
        let dropper = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(_) => return,
            };
            rt.block_on(async move {
                let connect = tokio::time::timeout(
                    Duration::from_secs(5),
                    PgConnection::connect(&server_url),
                );
                if let Ok(Ok(mut conn)) = connect.await {
                    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                    let _ = tokio::time::timeout(
                        Duration::from_secs(10),
                        sqlx::query(&sql).execute(&mut conn),
                    )
                    .await;
                    let _ = conn.close().await;
                }
            });
        });
        let _ = dropper.join();
    }
}
