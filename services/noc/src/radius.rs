//! Writes to FreeRADIUS's own tables (schema `radius`, docs/operations.md), always
//! inside the caller's transaction so a RADIUS account changes exactly when the
//! NOC's decision commits.

use sqlx::PgConnection;
use uuid::Uuid;

/// The group whose check item `Auth-Type := Reject` (seeded by the migration)
/// refuses every member.
pub const SUSPENDED_GROUP: &str = "suspended";

/// MikroTik reads `rx/tx` from the router's side: rx is the subscriber's upload.
pub fn rate_limit(upload_mbps: i32, download_mbps: i32) -> String {
    format!("{upload_mbps}M/{download_mbps}M")
}

/// Credentials, rate limit and (static plans) the address, replacing what was there.
pub async fn write_account(
    tx: &mut PgConnection,
    username: &str,
    password: &str,
    rate_limit: &str,
    framed_ip: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query(
        "DELETE FROM radius.radcheck WHERE username = $1 AND attribute = 'Cleartext-Password'",
    )
    .bind(username)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO radius.radcheck (username, attribute, op, value) VALUES ($1, 'Cleartext-Password', ':=', $2)",
    )
    .bind(username)
    .bind(password)
    .execute(&mut *tx)
    .await?;
    set_rate_limit(tx, username, rate_limit).await?;
    set_framed_ip(tx, username, framed_ip).await
}

pub async fn set_rate_limit(tx: &mut PgConnection, username: &str, rate: &str) -> sqlx::Result<()> {
    sqlx::query(
        "DELETE FROM radius.radreply WHERE username = $1 AND attribute = 'Mikrotik-Rate-Limit'",
    )
    .bind(username)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO radius.radreply (username, attribute, op, value) VALUES ($1, 'Mikrotik-Rate-Limit', ':=', $2)",
    )
    .bind(username)
    .bind(rate)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub async fn set_framed_ip(
    tx: &mut PgConnection,
    username: &str,
    ip: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query(
        "DELETE FROM radius.radreply WHERE username = $1 AND attribute = 'Framed-IP-Address'",
    )
    .bind(username)
    .execute(&mut *tx)
    .await?;
    if let Some(ip) = ip {
        sqlx::query(
            "INSERT INTO radius.radreply (username, attribute, op, value) VALUES ($1, 'Framed-IP-Address', ':=', $2)",
        )
        .bind(username)
        .bind(ip)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

pub async fn set_suspended(
    tx: &mut PgConnection,
    username: &str,
    suspended: bool,
) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM radius.radusergroup WHERE username = $1 AND groupname = $2")
        .bind(username)
        .bind(SUSPENDED_GROUP)
        .execute(&mut *tx)
        .await?;
    if suspended {
        sqlx::query(
            "INSERT INTO radius.radusergroup (username, groupname, priority) VALUES ($1, $2, 0)",
        )
        .bind(username)
        .bind(SUSPENDED_GROUP)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Removes every RADIUS row of the user (deactivation).
pub async fn remove_account(tx: &mut PgConnection, username: &str) -> sqlx::Result<()> {
    for table in ["radcheck", "radreply", "radusergroup"] {
        sqlx::query(&format!("DELETE FROM radius.{table} WHERE username = $1"))
            .bind(username)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// Queues a Disconnect- or CoA-Request for each of the user's open sessions
/// (radacct rows without a stop time); the dynauth worker sends them after commit.
/// Returns how many were queued.
pub async fn queue_for_open_sessions(
    tx: &mut PgConnection,
    kind: &str,
    subscriber: Uuid,
    username: &str,
    rate_limit: Option<&str>,
) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "INSERT INTO dynauth_requests (kind, subscriber, username, acct_session_id, nas_ip, rate_limit)
         SELECT $1, $2, username, acctsessionid, host(nasipaddress), $4
         FROM radius.radacct WHERE username = $3 AND acctstoptime IS NULL",
    )
    .bind(kind)
    .bind(subscriber)
    .bind(username)
    .bind(rate_limit)
    .execute(&mut *tx)
    .await?
    .rows_affected())
}

#[cfg(test)]
mod tests {
    #[test]
    fn rate_limit_is_upload_then_download() {
        assert_eq!(super::rate_limit(5, 10), "5M/10M");
    }
}
