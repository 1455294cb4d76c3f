//! Password login (rate limited per email and client address) and switching a session's team.

use super::{USER_COLUMNS, UserRow, ensure_default_team, issue_session, normalize_email};
use crate::auth::UserSession;
use crate::auth::password::{hash_password, verify_password, verify_password_blocking};
use crate::error::{ApiError, ApiResult};
use crate::ids::{self, IdKind};
use crate::state::App;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};
use wrenn_api_types::ErrorCode;
use wrenn_api_types::auth::{AuthResponse, LoginRequest, SwitchTeamRequest};

/// Failed logins allowed per (email, client address) within [`LOGIN_WINDOW`].
pub const MAX_LOGIN_FAILURES: usize = 10;
pub const LOGIN_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Above this many tracked keys, keys without recent failures are dropped.
const MAX_TRACKED_KEYS: usize = 10_000;

const BAD_CREDENTIALS: &str = "invalid email or password";

type LimiterKey = (String, Option<IpAddr>);

/// Counts failed logins per (email, client address) in a sliding window. In memory: it is a
/// brake on password guessing, not state, so losing it on restart is fine.
#[derive(Debug)]
pub struct LoginLimiter {
    max_failures: usize,
    window: Duration,
    failures: Mutex<HashMap<LimiterKey, VecDeque<Instant>>>,
}

impl LoginLimiter {
    pub fn new(max_failures: usize, window: Duration) -> Self {
        Self {
            max_failures,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LimiterKey, VecDeque<Instant>>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Err(retry_after)` while the key has used up its failures.
    pub fn check(&self, key: &LimiterKey) -> Result<(), Duration> {
        let now = Instant::now();
        let mut map = self.lock();
        let Some(times) = map.get_mut(key) else {
            return Ok(());
        };
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            times.pop_front();
        }
        if times.len() < self.max_failures {
            return Ok(());
        }
        let oldest = times.front().copied().unwrap_or(now);
        Err(self.window.saturating_sub(now.duration_since(oldest)))
    }

    pub fn record_failure(&self, key: LimiterKey) {
        let now = Instant::now();
        let mut map = self.lock();
        if map.len() >= MAX_TRACKED_KEYS {
            let window = self.window;
            map.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < window)
            });
        }
        let times = map.entry(key).or_default();
        times.push_back(now);
        while times.len() > self.max_failures {
            times.pop_front();
        }
    }

    pub fn clear(&self, key: &LimiterKey) {
        self.lock().remove(key);
    }
}

/// The process's login limiter. Process-wide rather than per-`App` so it needs no field in the
/// shared state; keys carry the email, so separate apps in one process never share a key.
static LOGIN_LIMITER: LazyLock<LoginLimiter> =
    LazyLock::new(|| LoginLimiter::new(MAX_LOGIN_FAILURES, LOGIN_WINDOW));

/// A valid hash of a random password, verified for unknown emails so that "no such user" costs
/// as long as "wrong password".
static DUMMY_HASH: LazyLock<Option<String>> = LazyLock::new(|| {
    hash_password(&crate::auth::secrets::random_hex(16))
        .map_err(|e| tracing::error!(error = %e, "could not build the login timing decoy"))
        .ok()
});

/// Checks email and password; `client` is the peer address when the server knows it.
pub async fn login(
    app: &App,
    req: LoginRequest,
    client: Option<IpAddr>,
) -> ApiResult<AuthResponse> {
    // A malformed email is just another wrong credential.
    let email = normalize_email(&req.email).unwrap_or_else(|_| req.email.trim().to_lowercase());
    let key = (email.clone(), client);
    if let Err(retry_after) = LOGIN_LIMITER.check(&key) {
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            format!(
                "too many failed logins; try again in {} minutes",
                retry_after.as_secs().div_ceil(60).max(1)
            ),
        ));
    }
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE email = $1 AND status <> 'deleted'");
    let user: Option<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(&email)
        .fetch_optional(&app.db)
        .await?;
    let stored = user.as_ref().and_then(|u| u.password_hash.clone());
    let matched = match stored {
        Some(hash) => verify_password_blocking(req.password, hash).await,
        None => {
            // Off the async workers, like a real check (the first call also builds the hash).
            let _ = tokio::task::spawn_blocking(move || {
                DUMMY_HASH
                    .as_deref()
                    .is_some_and(|dummy| verify_password(&req.password, dummy))
            })
            .await;
            false
        }
    };
    let Some(user) = user.filter(|_| matched) else {
        LOGIN_LIMITER.record_failure(key);
        return Err(ApiError::unauthorized(BAD_CREDENTIALS));
    };
    match user.status.as_str() {
        "active" => {}
        "inactive" => {
            return Err(ApiError::new(
                ErrorCode::AccountNotActivated,
                "this account is not activated yet: open the link in the activation email",
            ));
        }
        _ => {
            return Err(ApiError::new(
                ErrorCode::AccountDisabled,
                "this account has been disabled",
            ));
        }
    }
    LOGIN_LIMITER.clear(&key);
    let mut tx = app.db.begin().await?;
    let (team_id, _) = ensure_default_team(&mut tx, user.id).await?;
    tx.commit().await?;
    issue_session(app, user.id, team_id).await
}

/// A new session for another team the caller belongs to.
pub async fn switch_team(
    app: &App,
    session: &UserSession,
    req: SwitchTeamRequest,
) -> ApiResult<AuthResponse> {
    let not_found = || ApiError::not_found(format!("team {} not found", req.team_id));
    let team_id = ids::decode(IdKind::Team, &req.team_id).ok_or_else(not_found)?;
    let member: Option<bool> = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM users_teams WHERE team_id = t.id AND user_id = $2)
           FROM teams t WHERE t.id = $1 AND t.deleted_at IS NULL",
    )
    .bind(team_id)
    .bind(session.user_id)
    .fetch_optional(&app.db)
    .await?;
    match member {
        None => Err(not_found()),
        Some(false) => Err(ApiError::forbidden("you are not a member of that team")),
        Some(true) => issue_session(app, session.user_id, team_id).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_blocks_after_max_failures_per_key() {
        let limiter = LoginLimiter::new(3, Duration::from_secs(60));
        let a = ("a@x.test".to_string(), None);
        let b = ("a@x.test".to_string(), Some(IpAddr::from([10, 0, 0, 1])));
        for _ in 0..3 {
            assert!(limiter.check(&a).is_ok());
            limiter.record_failure(a.clone());
        }
        let wait = limiter.check(&a).expect_err("blocked");
        assert!(wait <= Duration::from_secs(60) && wait > Duration::from_secs(50));
        assert!(limiter.check(&b).is_ok(), "another address is its own key");
        limiter.clear(&a);
        assert!(limiter.check(&a).is_ok());
    }

    #[test]
    fn limiter_forgets_failures_outside_the_window() {
        let limiter = LoginLimiter::new(1, Duration::from_millis(30));
        let a = ("a@x.test".to_string(), None);
        limiter.record_failure(a.clone());
        assert!(limiter.check(&a).is_err());
        std::thread::sleep(Duration::from_millis(40));
        assert!(limiter.check(&a).is_ok());
    }
}
