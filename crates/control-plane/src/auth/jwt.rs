//! Session and host tokens: HS256 JWTs signed with the control plane's secret. User tokens and
//! host tokens are told apart by `typ`, so a host token can never act as a user and vice versa.

use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Dashboard sessions last 6 hours (upstream).
pub const USER_TOKEN_TTL: Duration = Duration::from_secs(6 * 3600);
/// Host tokens last 7 days; agents refresh them.
pub const HOST_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The shortest secret the control plane accepts.
pub const MIN_SECRET_LEN: usize = 32;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UserClaims {
    /// `usr-…`
    pub sub: String,
    /// `team-…`: the team this session acts for.
    pub team_id: String,
    pub role: String,
    pub email: String,
    pub name: String,
    /// A UI hint only: admin routes re-check the database.
    pub is_admin: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
    pub iat: i64,
    pub exp: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostClaims {
    pub sub: String,
    /// `host-…`
    pub host_id: String,
    pub typ: String,
    pub iat: i64,
    pub exp: i64,
}

const HOST_TYP: &str = "host";

#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(..)")
    }
}

impl JwtKeys {
    pub fn new(secret: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            secret.len() >= MIN_SECRET_LEN,
            "JWT_SECRET must be at least {MIN_SECRET_LEN} characters (generate one with `openssl rand -hex 32`)"
        );
        Ok(Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
        })
    }

    fn validation() -> Validation {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 5;
        v
    }

    #[allow(clippy::too_many_arguments)]
    pub fn sign_user(
        &self,
        user_id: &str,
        team_id: &str,
        role: &str,
        email: &str,
        name: &str,
        is_admin: bool,
    ) -> anyhow::Result<String> {
        let now = Utc::now().timestamp();
        let claims = UserClaims {
            sub: user_id.into(),
            team_id: team_id.into(),
            role: role.into(),
            email: email.into(),
            name: name.into(),
            is_admin,
            typ: None,
            iat: now,
            exp: now + USER_TOKEN_TTL.as_secs() as i64,
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// A user session token; `None` for anything else (expired, forged, a host token).
    pub fn verify_user(&self, token: &str) -> Option<UserClaims> {
        let data =
            jsonwebtoken::decode::<UserClaims>(token, &self.decoding, &Self::validation()).ok()?;
        (data.claims.typ.is_none()).then_some(data.claims)
    }

    pub fn sign_host(&self, host_id: &str) -> anyhow::Result<String> {
        let now = Utc::now().timestamp();
        let claims = HostClaims {
            sub: host_id.into(),
            host_id: host_id.into(),
            typ: HOST_TYP.into(),
            iat: now,
            exp: now + HOST_TOKEN_TTL.as_secs() as i64,
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    pub fn verify_host(&self, token: &str) -> Option<HostClaims> {
        let data =
            jsonwebtoken::decode::<HostClaims>(token, &self.decoding, &Self::validation()).ok()?;
        (data.claims.typ == HOST_TYP).then_some(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_host_tokens_do_not_cross() {
        let keys = JwtKeys::new(&"k".repeat(32)).expect("keys");
        let user = keys
            .sign_user("usr-1", "team-1", "owner", "a@b.c", "A", false)
            .expect("sign");
        let host = keys.sign_host("host-1").expect("sign");
        assert_eq!(keys.verify_user(&user).expect("user").team_id, "team-1");
        assert!(keys.verify_host(&user).is_none());
        assert!(keys.verify_user(&host).is_none());
        assert_eq!(keys.verify_host(&host).expect("host").host_id, "host-1");
        let other = JwtKeys::new(&"x".repeat(32)).expect("keys");
        assert!(other.verify_user(&user).is_none(), "other secret");
        assert!(JwtKeys::new("short").is_err());
    }
}
