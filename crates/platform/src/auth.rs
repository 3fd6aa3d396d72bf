//! Authentication and roles.
//!
//! Core signs JWTs with an Ed25519 private key; every other service verifies them
//! with the public key alone, so a compromised spoke cannot mint tokens. Staff
//! tokens carry the role; service tokens (minted by the launcher or `isp token`)
//! carry `scopes` naming exactly the operations one service may call on another.
//!
//! Service tokens live hours, not a year ([`service_token_ttl`], at most
//! [`MAX_SERVICE_TOKEN_TTL`]): the runtime mints a fresh one or renews it at core
//! before it is half spent (see [`crate::client::TokenSource`]). Each names its
//! audience, the services its scopes are for (`billing.subscribers.create` is for
//! `billing`), and a service refuses a service token not addressed to it.
//!
//! A valid signature is not enough for a staff token: logout, a password, role or
//! status change end it at once on every service. [`Keys`] of a running service
//! carry a [`StaffAccess`] (its own schema's `staff_access`, see
//! [`crate::staff_access`]) and the [`Principal`] extractor consults it.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use uuid::Uuid;

use crate::config::env_opt;
use crate::error::ApiError;
use crate::staff_access::StaffAccess;

/// The spec's staff roles (docs/contract.md#roles), spelled as the API spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    Admin,
    #[serde(rename = "Sales Agent")]
    SalesAgent,
    #[serde(rename = "Billing Manager")]
    BillingManager,
    #[serde(rename = "Network Engineer")]
    NetworkEngineer,
    Technician,
    #[serde(rename = "Support Agent")]
    SupportAgent,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Admin,
        Role::SalesAgent,
        Role::BillingManager,
        Role::NetworkEngineer,
        Role::Technician,
        Role::SupportAgent,
    ];
    pub const OPTIONS: &'static [&'static str] = &[
        "Admin",
        "Sales Agent",
        "Billing Manager",
        "Network Engineer",
        "Technician",
        "Support Agent",
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "Admin",
            Role::SalesAgent => "Sales Agent",
            Role::BillingManager => "Billing Manager",
            Role::NetworkEngineer => "Network Engineer",
            Role::Technician => "Technician",
            Role::SupportAgent => "Support Agent",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    const fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of roles, cheap to copy into static field tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Roles(u8);

impl Roles {
    pub const NONE: Roles = Roles(0);
    pub const ALL: Roles = Roles(0b11_1111);

    pub const fn of(roles: &[Role]) -> Roles {
        let mut bits = 0;
        let mut i = 0;
        while i < roles.len() {
            bits |= roles[i].bit();
            i += 1;
        }
        Roles(bits)
    }
    pub const fn contains(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }
    pub const fn with(self, role: Role) -> Roles {
        Roles(self.0 | role.bit())
    }
    pub const fn union(self, other: Roles) -> Roles {
        Roles(self.0 | other.0)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Staff id, or `service:<name>` for a service token.
    pub sub: String,
    pub exp: i64,
    pub iat: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Service tokens: the services the token may be presented to (RFC 7519
    /// `aud`, always an array here). Staff tokens have none: they are valid on
    /// every service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aud: Vec<String>,
    /// The member's token version when the token was issued. Logout and password,
    /// role and status changes bump the member's version; every service then
    /// refuses tokens carrying an older one.
    #[serde(default)]
    pub ver: i32,
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Principal {
    Staff {
        id: Uuid,
        email: String,
        role: Role,
        name: String,
        token_version: i32,
    },
    Service {
        name: String,
        scopes: Vec<String>,
    },
}

impl Principal {
    pub fn role(&self) -> Option<Role> {
        match self {
            Principal::Staff { role, .. } => Some(*role),
            Principal::Service { .. } => None,
        }
    }
    pub fn staff_id(&self) -> Option<Uuid> {
        match self {
            Principal::Staff { id, .. } => Some(*id),
            Principal::Service { .. } => None,
        }
    }
    pub fn is_admin(&self) -> bool {
        self.role() == Some(Role::Admin)
    }
    pub fn has_scope(&self, scope: &str) -> bool {
        matches!(self, Principal::Service { scopes, .. } if scopes.iter().any(|s| s == scope))
    }
    /// A staff member whose role is in `roles`.
    pub fn in_roles(&self, roles: Roles) -> bool {
        self.role().is_some_and(|r| roles.contains(r))
    }
    pub fn require_roles(&self, roles: Roles) -> Result<(), ApiError> {
        if self.in_roles(roles) {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "You are not allowed to perform this action.",
            ))
        }
    }
    /// Allowed when a staff role matches or a service carries the scope.
    pub fn require(&self, roles: Roles, scope: &str) -> Result<(), ApiError> {
        if self.in_roles(roles) || self.has_scope(scope) {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "You are not allowed to perform this action.",
            ))
        }
    }
    pub fn label(&self) -> String {
        match self {
            Principal::Staff { email, .. } => email.clone(),
            Principal::Service { name, .. } => format!("service:{name}"),
        }
    }
}

/// Signing (core only) and verifying (everyone) keys, and, in a running service,
/// the check that a staff token has not been revoked since it was signed.
#[derive(Clone)]
pub struct Keys {
    encoding: Option<Arc<EncodingKey>>,
    decoding: Arc<DecodingKey>,
    public_raw: Vec<u8>,
    staff_access: Option<StaffAccess>,
    /// The service these keys verify for: service tokens must name it in `aud`.
    audience: Option<&'static str>,
}

/// Default lifetime of a service token (`ISP_SERVICE_TOKEN_TTL_SECONDS`): 4 hours.
pub const DEFAULT_SERVICE_TOKEN_TTL: i64 = 4 * 3600;
/// No service token is accepted whose lifetime (`exp - iat`) is longer: 24 hours.
pub const MAX_SERVICE_TOKEN_TTL: i64 = 24 * 3600;

/// `ISP_SERVICE_TOKEN_TTL_SECONDS` (default 4 h), at most [`MAX_SERVICE_TOKEN_TTL`].
pub fn service_token_ttl() -> anyhow::Result<i64> {
    let ttl: i64 = crate::config::env_parse("ISP_SERVICE_TOKEN_TTL_SECONDS", DEFAULT_SERVICE_TOKEN_TTL)?;
    anyhow::ensure!(
        (60..=MAX_SERVICE_TOKEN_TTL).contains(&ttl),
        "ISP_SERVICE_TOKEN_TTL_SECONDS={ttl}: must be between 60 and {MAX_SERVICE_TOKEN_TTL}"
    );
    Ok(ttl)
}

/// The services a set of scopes is for: the first segment of each
/// (`billing.subscribers.create` → `billing`), in order, without repeats.
pub fn audience_of<S: AsRef<str>>(scopes: &[S]) -> Vec<String> {
    let mut aud: Vec<String> = vec![];
    for s in scopes {
        let svc = s.as_ref().split('.').next().unwrap_or_default();
        if !svc.is_empty() && !aud.iter().any(|a| a == svc) {
            aud.push(svc.to_string());
        }
    }
    aud
}

/// Compares two secrets (webhook tokens, shared keys) in time that depends only on
/// their lengths, never on where they first differ.
pub fn secret_eq(given: &[u8], expected: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    given.ct_eq(expected).into()
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("can_sign", &self.encoding.is_some())
            .field("staff_access", &self.staff_access)
            .field("audience", &self.audience)
            .finish()
    }
}

impl Keys {
    pub fn from_pkcs8(pkcs8: &[u8]) -> anyhow::Result<Self> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|e| anyhow::anyhow!("bad Ed25519 key: {e}"))?;
        let public_raw = pair.public_key().as_ref().to_vec();
        Ok(Self {
            encoding: Some(Arc::new(EncodingKey::from_ed_der(pkcs8))),
            decoding: Arc::new(DecodingKey::from_ed_der(&public_raw)),
            public_raw,
            staff_access: None,
            audience: None,
        })
    }

    pub fn verify_only(public_raw: &[u8]) -> Self {
        Self {
            encoding: None,
            decoding: Arc::new(DecodingKey::from_ed_der(public_raw)),
            public_raw: public_raw.to_vec(),
            staff_access: None,
            audience: None,
        }
    }

    pub fn generate() -> anyhow::Result<(Self, Vec<u8>)> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| anyhow::anyhow!("key generation failed"))?;
        let bytes = doc.as_ref().to_vec();
        Ok((Self::from_pkcs8(&bytes)?, bytes))
    }

    /// In this order: `ISP_JWT_PRIVATE_KEY` (base64 PKCS#8); the file named by
    /// `ISP_JWT_PRIVATE_KEY_FILE` (created if missing); for a service that only
    /// verifies, `ISP_JWT_PUBLIC_KEY` (base64 raw 32 bytes) or the file named by
    /// `ISP_JWT_PUBLIC_KEY_FILE` (never creating a key); else the default file
    /// `<data>/keys/jwt-ed25519.pk8`, created on first start.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        let b64 = base64::engine::general_purpose::STANDARD;
        if let Some(k) = env_opt("ISP_JWT_PRIVATE_KEY") {
            return Self::from_pkcs8(&b64.decode(k.trim())?);
        }
        let explicit_private = env_opt("ISP_JWT_PRIVATE_KEY_FILE").map(std::path::PathBuf::from);
        if explicit_private.is_none() {
            // A verify-only host must never mint itself a signing key.
            if let Some(p) = env_opt("ISP_JWT_PUBLIC_KEY") {
                return Ok(Self::verify_only(&b64.decode(p.trim())?));
            }
            if let Some(f) = env_opt("ISP_JWT_PUBLIC_KEY_FILE") {
                let text = std::fs::read_to_string(&f)
                    .map_err(|e| anyhow::anyhow!("ISP_JWT_PUBLIC_KEY_FILE={f}: {e}"))?;
                return Ok(Self::verify_only(&b64.decode(text.trim())?));
            }
        }
        let file =
            explicit_private.unwrap_or_else(|| data_dir.join("keys").join("jwt-ed25519.pk8"));
        if file.exists() {
            return Self::from_pkcs8(&b64.decode(std::fs::read_to_string(&file)?.trim())?);
        }
        let (keys, pkcs8) = Self::generate()?;
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match crate::config::write_secret_file(&file, &b64.encode(pkcs8), false) {
            Ok(()) => {
                tracing::info!(path = %file.display(), "generated a new JWT signing key");
                Ok(keys)
            }
            // Another process sharing the data folder created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                std::thread::sleep(std::time::Duration::from_millis(50));
                Self::from_pkcs8(&b64.decode(std::fs::read_to_string(&file)?.trim())?)
            }
            Err(e) => Err(anyhow::anyhow!("writing {}: {e}", file.display())),
        }
    }

    /// These keys, checking staff tokens against `access` in [`Keys::authenticate`]
    /// (and so in the [`Principal`] extractor). [`crate::runtime::context`] sets it
    /// for every service.
    pub fn with_staff_access(mut self, access: StaffAccess) -> Self {
        self.staff_access = Some(access);
        self
    }

    pub fn staff_access(&self) -> Option<&StaffAccess> {
        self.staff_access.as_ref()
    }

    /// These keys, verifying for the service `name`: a service token is accepted
    /// only if its `aud` names this service. [`crate::runtime::context`] sets it.
    pub fn with_audience(mut self, name: &'static str) -> Self {
        self.audience = Some(name);
        self
    }

    /// Who a bearer token names, if it may still be used: a valid signature and,
    /// for a staff token, a token version no older than the member's and an active
    /// member (when these keys carry a [`StaffAccess`]). A service token must be
    /// addressed to this service (when these keys have an audience) and have a
    /// lifetime of at most [`MAX_SERVICE_TOKEN_TTL`].
    pub async fn authenticate(&self, token: &str) -> Result<Principal, ApiError> {
        let claims = self.verify(token)?;
        if claims.sub.starts_with("service:") {
            self.check_service_claims(&claims)?;
        }
        let principal = Principal::from_claims(claims)?;
        if let (
            Some(access),
            Principal::Staff {
                id, token_version, ..
            },
        ) = (&self.staff_access, &principal)
        {
            access.check(*id, *token_version, token).await?;
        }
        Ok(principal)
    }

    /// A service token's lifetime is bounded and, where these keys verify for one
    /// service, it names that service in `aud`.
    pub fn check_service_claims(&self, c: &Claims) -> Result<(), ApiError> {
        if c.exp - c.iat > MAX_SERVICE_TOKEN_TTL {
            return Err(ApiError::unauthorized(
                "This service token lives longer than a service token may; mint a new one.",
            ));
        }
        if let Some(me) = self.audience {
            if !c.aud.iter().any(|a| a == me) {
                return Err(ApiError::unauthorized(format!(
                    "This service token is not meant for {me}."
                )));
            }
        }
        Ok(())
    }

    /// Whether these keys can sign (only core's can, in a distributed deployment).
    pub fn can_sign(&self) -> bool {
        self.encoding.is_some()
    }

    pub fn public_key_b64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.public_raw)
    }

    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        let key = self
            .encoding
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("this process has no signing key"))?;
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::EdDSA),
            claims,
            key,
        )?)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let mut v = Validation::new(Algorithm::EdDSA);
        v.leeway = 5;
        v.required_spec_claims = ["exp", "sub"].into_iter().map(String::from).collect();
        // `aud` is checked by `authenticate` against the service verifying, not here:
        // core's renewal endpoint reads tokens addressed to other services.
        v.validate_aud = false;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    ApiError::unauthorized("Your session has expired.")
                }
                _ => ApiError::unauthorized("The token is not valid."),
            })
    }

    /// A token for one service calling others, limited to `scopes`, addressed to
    /// the services they name, living [`service_token_ttl`].
    pub fn service_token(&self, service: &str, scopes: &[&str]) -> anyhow::Result<String> {
        self.service_token_for(service, scopes, service_token_ttl()?)
    }

    /// [`Keys::service_token`] with an explicit lifetime (at most [`MAX_SERVICE_TOKEN_TTL`]).
    pub fn service_token_for(
        &self,
        service: &str,
        scopes: &[&str],
        ttl_seconds: i64,
    ) -> anyhow::Result<String> {
        anyhow::ensure!(
            ttl_seconds <= MAX_SERVICE_TOKEN_TTL,
            "a service token lives at most {MAX_SERVICE_TOKEN_TTL} s"
        );
        let now = chrono::Utc::now().timestamp();
        self.sign(&Claims {
            sub: format!("service:{service}"),
            exp: now + ttl_seconds,
            iat: now,
            email: None,
            role: None,
            name: Some(service.to_string()),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            aud: audience_of(scopes),
            ver: 0,
        })
    }

    /// The same rights as the service token `claims` (same subject, scopes and
    /// audience) for another [`service_token_ttl`]: what core's renewal endpoint
    /// signs. The caller has checked that `claims` came from a valid token.
    pub fn renew_service_token(&self, claims: &Claims) -> anyhow::Result<(String, i64)> {
        anyhow::ensure!(claims.sub.starts_with("service:"), "not a service token");
        let now = chrono::Utc::now().timestamp();
        let exp = now + service_token_ttl()?;
        let token = self.sign(&Claims {
            exp,
            iat: now,
            ..claims.clone()
        })?;
        Ok((token, exp))
    }
}

impl Principal {
    pub fn from_claims(c: Claims) -> Result<Principal, ApiError> {
        if let Some(name) = c.sub.strip_prefix("service:") {
            return Ok(Principal::Service {
                name: name.to_string(),
                scopes: c.scopes,
            });
        }
        let id = Uuid::parse_str(&c.sub)
            .map_err(|_| ApiError::unauthorized("The token is not valid."))?;
        let role = c
            .role
            .ok_or_else(|| ApiError::unauthorized("The token is not valid."))?;
        Ok(Principal::Staff {
            id,
            email: c.email.unwrap_or_default(),
            role,
            name: c.name.unwrap_or_default(),
            token_version: c.ver,
        })
    }
}

/// Anything that can hand out the verifying keys (every service's state).
pub trait HasKeys {
    fn keys(&self) -> &Keys;
}

/// `Authorization: JWT <token>` (Payload's spelling) or `Bearer <token>`.
pub fn bearer(parts: &Parts) -> Option<&str> {
    let h = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = h.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("jwt") || scheme.eq_ignore_ascii_case("bearer"))
        .then(|| token.trim())
}

impl<S> FromRequestParts<S> for Principal
where
    S: HasKeys + Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token =
            bearer(parts).ok_or_else(|| ApiError::unauthorized("You are not logged in."))?;
        state.keys().authenticate(token).await
    }
}

/// Argon2id password hashing with the crate's recommended parameters.
pub mod password {
    use argon2::password_hash::{
        rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
    };
    use argon2::Argon2;

    pub fn hash(password: &str) -> anyhow::Result<String> {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))
    }

    pub fn verify(password: &str, hash: &str) -> bool {
        PasswordHash::new(hash).is_ok_and(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
    }

    /// Hashing costs ~20 ms of CPU; run it off the async workers.
    pub async fn hash_async(password: String) -> anyhow::Result<String> {
        tokio::task::spawn_blocking(move || hash(&password)).await?
    }
    pub async fn verify_async(password: String, hash: String) -> bool {
        tokio::task::spawn_blocking(move || verify(&password, &hash))
            .await
            .unwrap_or(false)
    }

    /// A random password for generated credentials (bootstrap admin).
    pub fn generate(len: usize) -> String {
        use rand::Rng;
        const CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
        let mut rng = rand::thread_rng();
        (0..len)
            .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_tampering() {
        let (keys, _) = Keys::generate().unwrap();
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: Uuid::new_v4().to_string(),
            exp: now + 60,
            iat: now,
            email: Some("a@b.c".into()),
            role: Some(Role::SalesAgent),
            name: None,
            scopes: vec![],
            aud: vec![],
            ver: 0,
        };
        let t = keys.sign(&claims).unwrap();
        assert_eq!(keys.verify(&t).unwrap().role, Some(Role::SalesAgent));
        let verifier = Keys::verify_only(&keys.public_raw);
        assert!(verifier.verify(&t).is_ok());
        let (other, _) = Keys::generate().unwrap();
        assert!(other.verify(&t).is_err());
        assert!(verifier.sign(&claims).is_err());
    }

    #[tokio::test]
    async fn service_tokens_live_hours_and_are_refused_by_services_they_do_not_name() {
        let (keys, _) = Keys::generate().unwrap();
        let t = keys
            .service_token("crm", &["billing.subscribers.create", "billing.subscribers.firstName.write"])
            .unwrap();
        let c = keys.verify(&t).unwrap();
        assert_eq!(c.aud, vec!["billing".to_string()]);
        assert_eq!(c.exp - c.iat, DEFAULT_SERVICE_TOKEN_TTL);
        let billing = keys.clone().with_audience("billing");
        let p = billing.authenticate(&t).await.expect("billing accepts");
        assert!(p.has_scope("billing.subscribers.create"));
        let noc = keys.clone().with_audience("noc");
        let e = noc.authenticate(&t).await.unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::UNAUTHORIZED);
        // A year-long token, as minted before lifetimes were bounded, is refused.
        let now = chrono::Utc::now().timestamp();
        let old = keys
            .sign(&Claims {
                exp: now + 365 * 24 * 3600,
                ..c.clone()
            })
            .unwrap();
        assert!(billing.authenticate(&old).await.is_err());
        assert!(keys.service_token_for("crm", &["billing.x.read"], MAX_SERVICE_TOKEN_TTL + 1).is_err());
        // Renewal keeps the rights and moves the expiry.
        let (renewed, exp) = keys.renew_service_token(&c).unwrap();
        let r = keys.verify(&renewed).unwrap();
        assert_eq!((r.sub, r.scopes, r.aud), (c.sub, c.scopes, c.aud));
        assert!(exp >= c.exp);
    }

    #[test]
    fn secrets_compare_by_value() {
        assert!(secret_eq(b"s3cret-token", b"s3cret-token"));
        assert!(!secret_eq(b"s3cret-tokem", b"s3cret-token"));
        assert!(!secret_eq(b"s3cret", b"s3cret-token"));
        assert!(!secret_eq(b"", b"x"));
    }

    #[test]
    fn role_sets() {
        let s = Roles::of(&[Role::Admin, Role::BillingManager]);
        assert!(s.contains(Role::Admin) && s.contains(Role::BillingManager));
        assert!(!s.contains(Role::Technician));
        assert_eq!(Role::parse("Network Engineer"), Some(Role::NetworkEngineer));
        assert_eq!(
            serde_json::to_string(&Role::SupportAgent).unwrap(),
            "\"Support Agent\""
        );
    }

    #[test]
    fn passwords_hash_and_verify() {
        let h = password::hash("correct horse").unwrap();
        assert!(password::verify("correct horse", &h));
        assert!(!password::verify("wrong", &h));
    }
}
