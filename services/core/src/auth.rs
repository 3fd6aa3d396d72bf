//! Payload's auth operations on the staff collection: login, me, logout,
//! refresh-token, unlock. Failed logins lock an account for a while
//! (maxLoginAttempts / lockTime); Inactive staff cannot log in; logout and
//! role/status/password changes invalidate earlier tokens at once at core, and on
//! every other service once the `staff.updated` event carrying the new token
//! version has reached it (see `isp_platform::staff_access`).

use axum::extract::State;
use axum::Json;
use chrono::{Duration, Utc};
use isp_platform::auth::{bearer, password, Claims, Keys, Principal, Role};
use isp_platform::collection::Operation;
use isp_platform::config::env_parse;
use isp_platform::http::ApiJson;
use isp_platform::{ApiError, ApiResult};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::App;
use uuid::Uuid;

#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// `ISP_TOKEN_TTL_SECONDS` (default 7200, Payload's tokenExpiration).
    pub token_ttl: i64,
    /// `ISP_MAX_LOGIN_ATTEMPTS` (default 5).
    pub max_attempts: i32,
    /// `ISP_LOCK_TIME_SECONDS` (default 600).
    pub lock_time: i64,
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            token_ttl: env_parse("ISP_TOKEN_TTL_SECONDS", 7200)?,
            max_attempts: env_parse("ISP_MAX_LOGIN_ATTEMPTS", 5)?,
            lock_time: env_parse("ISP_LOCK_TIME_SECONDS", 600)?,
        })
    }
}

/// Payload's auth operations on staff, and the public key.
pub fn routes() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(me))
        .routes(routes!(logout))
        .routes(routes!(refresh))
        .routes(routes!(unlock))
        .routes(routes!(public_key))
        .routes(routes!(renew_service_token))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginInput {
    #[schema(pattern = r"^[^\u0000]*[^\s\u0000][^\u0000]*$")]
    email: String,
    #[schema(min_length = 1, format = Password, pattern = r"^[^\u0000]*$")]
    password: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnlockInput {
    #[schema(pattern = r"^[^\u0000]*[^\s\u0000][^\u0000]*$")]
    email: String,
}

const BAD_CREDENTIALS: &str = "The email or password provided is incorrect.";

#[derive(sqlx::FromRow)]
struct StaffAuthRow {
    id: Uuid,
    full_name: String,
    email: String,
    password_hash: String,
    role: String,
    status: isp_events::options::StaffStatus,
    login_attempts: i32,
    lock_until: Option<chrono::DateTime<Utc>>,
    token_version: i32,
}

async fn load(
    conn: &mut sqlx::PgConnection,
    by_email: Option<&str>,
    by_id: Option<Uuid>,
    lock: bool,
) -> ApiResult<Option<StaffAuthRow>> {
    let sql = format!(
        "SELECT id, full_name, email, password_hash, role, status, login_attempts, lock_until, token_version
         FROM staff WHERE lower(email) = lower($1) OR id = $2{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    Ok(sqlx::query_as::<_, StaffAuthRow>(&sql)
        .bind(by_email.unwrap_or(""))
        .bind(by_id.unwrap_or_default())
        .fetch_optional(&mut *conn)
        .await?)
}

fn issue(keys: &Keys, s: &StaffAuthRow, ttl: i64) -> ApiResult<(String, i64)> {
    let now = Utc::now().timestamp();
    let exp = now + ttl;
    let token = keys
        .sign(&Claims {
            sub: s.id.to_string(),
            exp,
            iat: now,
            email: Some(s.email.clone()),
            role: Role::parse(&s.role),
            name: Some(s.full_name.clone()),
            scopes: vec![],
            aud: vec![],
            ver: s.token_version,
        })
        .map_err(ApiError::Internal)?;
    Ok((token, exp))
}

async fn user_doc(st: &App, conn: &mut sqlx::PgConnection, id: Uuid) -> ApiResult<Value> {
    let doc = st
        .colls
        .staff
        .fetch(conn, id, false)
        .await?
        .ok_or_else(|| ApiError::not_found("Staff member"))?;
    let mut doc = doc;
    if let Value::Object(m) = &mut doc {
        m.remove("lockUntil");
    }
    Ok(doc)
}

#[utoipa::path(post, path = "/api/core/staff/login", tag = "staff", request_body = LoginInput,
    responses((status = 200, description = "{message, user, token, exp}"), (status = 401, description = "Wrong credentials, locked or inactive")))]
async fn login(
    State(st): State<App>,
    ApiJson(input): ApiJson<LoginInput>,
) -> ApiResult<Json<Value>> {
    if input.email.trim().is_empty() {
        return Err(ApiError::field("email", "email is required."));
    }
    if input.password.is_empty() {
        return Err(ApiError::field("password", "password is required."));
    }
    let mut tx = st.ctx.pool.begin().await?;
    let Some(row) = load(&mut tx, Some(input.email.trim()), None, true).await? else {
        // Spend the same time as a real check so timing does not reveal accounts.
        let _ = password::verify_async(input.password, DUMMY_HASH.to_string()).await;
        return Err(ApiError::unauthorized(BAD_CREDENTIALS));
    };
    if row.lock_until.is_some_and(|t| t > Utc::now()) {
        return Err(ApiError::unauthorized(
            "This account is locked after too many failed login attempts. Try again later or ask an Admin to unlock it.",
        ));
    }
    if !password::verify_async(input.password, row.password_hash.clone()).await {
        let attempts = row.login_attempts + 1;
        if attempts >= st.auth.max_attempts {
            sqlx::query("UPDATE staff SET login_attempts = 0, lock_until = $2 WHERE id = $1")
                .bind(row.id)
                .bind(Utc::now() + Duration::seconds(st.auth.lock_time))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Err(ApiError::unauthorized(format!(
                "This account is now locked for {} minutes after {} failed login attempts.",
                (st.auth.lock_time + 59) / 60,
                st.auth.max_attempts
            )));
        }
        sqlx::query("UPDATE staff SET login_attempts = $2 WHERE id = $1")
            .bind(row.id)
            .bind(attempts)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        return Err(ApiError::unauthorized(BAD_CREDENTIALS));
    }
    if row.status != isp_events::options::StaffStatus::Active {
        return Err(ApiError::unauthorized("This account is inactive."));
    }
    sqlx::query("UPDATE staff SET login_attempts = 0, lock_until = NULL WHERE id = $1")
        .bind(row.id)
        .execute(&mut *tx)
        .await?;
    let user = user_doc(&st, &mut tx, row.id).await?;
    tx.commit().await?;
    let (token, exp) = issue(&st.ctx.keys, &row, st.auth.token_ttl)?;
    Ok(Json(
        json!({"message": "Authentication Passed", "user": user, "token": token, "exp": exp}),
    ))
}

/// The staff row behind a still-valid token (current version, active).
async fn current(st: &App, parts_token: Option<&str>) -> ApiResult<(StaffAuthRow, Claims)> {
    let token = parts_token.ok_or_else(|| ApiError::unauthorized("You are not logged in."))?;
    let claims = st.ctx.keys.verify(token)?;
    let Principal::Staff {
        id, token_version, ..
    } = Principal::from_claims(claims.clone())?
    else {
        return Err(ApiError::unauthorized("Not a staff token."));
    };
    let mut conn = st.ctx.pool.acquire().await?;
    let row = load(&mut conn, None, Some(id), false)
        .await?
        .ok_or_else(|| ApiError::unauthorized("The account no longer exists."))?;
    if row.token_version != token_version {
        return Err(ApiError::unauthorized(
            "This session has ended. Please log in again.",
        ));
    }
    if row.status != isp_events::options::StaffStatus::Active {
        return Err(ApiError::unauthorized("This account is inactive."));
    }
    Ok((row, claims))
}

#[utoipa::path(get, path = "/api/core/staff/me", security(("jwt" = [])), tag = "staff", responses((status = 200, description = "{user, exp}"), (status = 401)))]
async fn me(State(st): State<App>, req: axum::http::request::Parts) -> ApiResult<Json<Value>> {
    let (row, claims) = current(&st, bearer(&req)).await?;
    let mut conn = st.ctx.pool.acquire().await?;
    let user = user_doc(&st, &mut conn, row.id).await?;
    Ok(Json(
        json!({"user": user, "exp": claims.exp, "collection": "staff"}),
    ))
}

#[utoipa::path(post, path = "/api/core/staff/logout", security(("jwt" = [])), tag = "staff", responses((status = 200), (status = 401)))]
async fn logout(State(st): State<App>, req: axum::http::request::Parts) -> ApiResult<Json<Value>> {
    let (row, _) = current(&st, bearer(&req)).await?;
    // Ends every token of the member here at once, and on the other services as
    // soon as they have the staff.updated event carrying the new version.
    let mut tx = st.ctx.pool.begin().await?;
    sqlx::query("UPDATE staff SET token_version = token_version + 1 WHERE id = $1")
        .bind(row.id)
        .execute(&mut *tx)
        .await?;
    let doc = st
        .colls
        .staff
        .fetch(&mut tx, row.id, false)
        .await?
        .ok_or_else(|| ApiError::unauthorized("The account no longer exists."))?;
    crate::collections::publish_staff(&mut tx, &st.ctx, &doc, false).await?;
    tx.commit().await?;
    Ok(Json(
        json!({"message": "You have been logged out successfully."}),
    ))
}

#[utoipa::path(post, path = "/api/core/staff/refresh-token", security(("jwt" = [])), tag = "staff", responses((status = 200, description = "{message, refreshedToken, exp, user}"), (status = 401)))]
async fn refresh(State(st): State<App>, req: axum::http::request::Parts) -> ApiResult<Json<Value>> {
    let (row, _) = current(&st, bearer(&req)).await?;
    let (token, exp) = issue(&st.ctx.keys, &row, st.auth.token_ttl)?;
    let mut conn = st.ctx.pool.acquire().await?;
    let user = user_doc(&st, &mut conn, row.id).await?;
    Ok(Json(
        json!({"message": "Token refresh successful", "refreshedToken": token, "exp": exp, "user": user}),
    ))
}

#[utoipa::path(post, path = "/api/core/staff/unlock", security(("jwt" = [])), tag = "staff", request_body = UnlockInput, responses((status = 200), (status = 403), (status = 404)))]
async fn unlock(
    State(st): State<App>,
    p: Principal,
    ApiJson(input): ApiJson<UnlockInput>,
) -> ApiResult<Json<Value>> {
    st.colls.staff.authorize(&p, Operation::Action("unlock"))?;
    let n = sqlx::query(
        "UPDATE staff SET login_attempts = 0, lock_until = NULL WHERE lower(email) = lower($1)",
    )
    .bind(input.email.trim())
    .execute(&st.ctx.pool)
    .await?
    .rows_affected();
    if n == 0 {
        return Err(ApiError::not_found("Staff member"));
    }
    Ok(Json(json!({"message": "Success"})))
}

#[utoipa::path(get, path = "/api/core/jwks", tag = "staff", responses((status = 200, description = "The Ed25519 public key that verifies staff and service tokens")))]
async fn public_key(State(st): State<App>) -> Json<Value> {
    Json(json!({"alg": "EdDSA", "crv": "Ed25519", "publicKey": st.ctx.keys.public_key_b64()}))
}

/// A service token, still valid, for another lifetime with the same rights
/// (subject, scopes, audience): how a service that cannot sign keeps its token
/// (see `isp_platform::client::TokenSource`). Staff tokens renew with
/// `refresh-token` instead.
#[utoipa::path(post, path = "/api/core/service-tokens/renew", security(("jwt" = [])), tag = "staff",
    responses((status = 200, description = "{token, exp}"), (status = 401, description = "Not a valid service token")))]
async fn renew_service_token(
    State(st): State<App>,
    req: axum::http::request::Parts,
) -> ApiResult<Json<Value>> {
    let token = bearer(&req).ok_or_else(|| ApiError::unauthorized("You are not logged in."))?;
    // Not `authenticate`: the token is addressed to the services it calls, not core.
    let claims = st.ctx.keys.verify(token)?;
    if !claims.sub.starts_with("service:") {
        return Err(ApiError::unauthorized(
            "Only service tokens are renewed here; staff use /api/core/staff/refresh-token.",
        ));
    }
    // A year-long token from before lifetimes were bounded is not renewed either.
    if claims.exp - claims.iat > isp_platform::auth::MAX_SERVICE_TOKEN_TTL {
        return Err(ApiError::unauthorized(
            "This service token lives longer than a service token may; mint a new one.",
        ));
    }
    let (token, exp) = st
        .ctx
        .keys
        .renew_service_token(&claims)
        .map_err(ApiError::Internal)?;
    tracing::info!(service = %claims.sub, "renewed a service token");
    Ok(Json(json!({"token": token, "exp": exp})))
}

/// An argon2id hash of a random string, for constant-time failure on unknown emails.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$8d2I9o1+Vv3cCUSrmV8XTQ0rz2Ue3gVd3b8nW0Vb0tQ";
