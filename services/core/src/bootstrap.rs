//! The first Admin: created when the staff table is empty, from
//! `ISP_BOOTSTRAP_ADMIN_EMAIL` / `ISP_BOOTSTRAP_ADMIN_PASSWORD`, or with a generated
//! password printed once.

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
        // Printed once, on purpose, to the operator's terminal; never logged again.
        println!("\n  First Admin created: {email}\n  Password (shown only now): {pw}\n");
    } else {
        tracing::info!(%email, "first Admin created from ISP_BOOTSTRAP_ADMIN_EMAIL");
    }
    Ok(())
}
