//! The first Admin: created when the staff table is empty, from
//! `ISP_BOOTSTRAP_ADMIN_EMAIL` / `ISP_BOOTSTRAP_ADMIN_PASSWORD`, or with a generated
//! password. A generated password is printed once when standard output is a
//! terminal (an operator is watching); otherwise (a service manager, a container,
//! a log collector) it is written to `<data>/bootstrap-admin-password`, readable by
//! its owner only, and only that file's path is logged.

use isp_platform::auth::{password, Principal};
use isp_platform::collection::Collection;
use isp_platform::config::env_opt;
use isp_platform::ServiceContext;
use serde_json::{json, Map};

pub async fn ensure_admin(ctx: &ServiceContext, staff: &Collection) -> anyhow::Result<()> {
    let mut tx = ctx.pool.begin().await?;
    // Two replicas starting together must not both create an admin.
    sqlx::query("SELECT pg_advisory_xact_lock(7340102)")
        .execute(&mut *tx)
        .await?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM staff")
        .fetch_one(&mut *tx)
        .await?;
    if count > 0 {
        return Ok(());
    }
    let email =
        env_opt("ISP_BOOTSTRAP_ADMIN_EMAIL").unwrap_or_else(|| "admin@isp.local".to_string());
    let (pw, generated) = match env_opt("ISP_BOOTSTRAP_ADMIN_PASSWORD") {
        Some(p) => (p, false),
        None => (password::generate(20), true),
    };
    let system = Principal::Service {
        name: "core-bootstrap".into(),
        scopes: vec![],
    };
    let body = json!({"fullName": "Administrator", "email": email, "password": pw, "role": "Admin", "status": "Active"});
    let data: Map<String, serde_json::Value> = staff
        .validate_input(&system, &body, true)
        .map_err(|e| anyhow::anyhow!("ISP_BOOTSTRAP_ADMIN_*: {:?}", e.errors()))?;
    staff
        .create_in(&mut tx, ctx, &system, data)
        .await
        .map_err(|e| anyhow::anyhow!("creating the first admin: {e:?}"))?;
    tx.commit().await?;
    if generated {
        hand_over(&ctx.config.data_dir, &email, &pw)?;
    } else {
        tracing::info!(%email, "first Admin created from ISP_BOOTSTRAP_ADMIN_EMAIL");
    }
    Ok(())
}

/// File name, under the data folder, of a generated first-Admin password that
/// could not be shown on a terminal.
pub const PASSWORD_FILE: &str = "bootstrap-admin-password";

/// Shows a generated password to the operator's terminal, or, without one, puts
/// it in an owner-only file: a password must never reach a log.
fn hand_over(data_dir: &std::path::Path, email: &str, pw: &str) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        println!("\n  First Admin created: {email}\n  Password (shown only now): {pw}\n");
        return Ok(());
    }
    let file = data_dir.join(PASSWORD_FILE);
    isp_platform::config::write_secret_file(&file, &format!("{email}\n{pw}\n"), true)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", file.display()))?;
    tracing::info!(
        %email,
        path = %file.display(),
        "first Admin created; its generated password is in this file (owner-only); delete it once read"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Under `cargo test` standard output is captured, not a terminal: the
    /// password goes to an owner-only file and nowhere else.
    #[test]
    fn without_a_terminal_the_password_goes_to_an_owner_only_file() {
        let dir = std::env::temp_dir().join(format!("isp-boot-{}", uuid::Uuid::new_v4().simple()));
        super::hand_over(&dir, "admin@isp.local", "Generated-Pass-123").unwrap();
        let file = dir.join(super::PASSWORD_FILE);
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "admin@isp.local\nGenerated-Pass-123\n"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
