//! `/health`, `/init`, `/envs`, `/metrics` and `/snapshot/prepare`.

use crate::auth::ACCESS_TOKEN_HEADER;
use crate::conntrack::ConnId;
use crate::error::{EnvdError, Result};
use crate::state::SharedState;
use crate::user::Account;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

pub async fn health(State(state): State<SharedState>) -> Response {
    no_store(Json(serde_json::json!({ "version": state.settings.version })).into_response())
}

pub async fn envs(State(state): State<SharedState>) -> Response {
    no_store(Json(state.defaults().env_vars).into_response())
}

pub async fn metrics(State(state): State<SharedState>) -> Result<Response> {
    let m = state
        .metrics
        .sample()
        .map_err(|e| EnvdError::Internal(format!("reading metrics: {e}")))?;
    Ok(no_store(Json(m).into_response()))
}

#[derive(Debug, Deserialize)]
pub struct VolumeMount {
    pub nfs_target: String,
    pub path: String,
}

/// The body of `POST /init`; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitRequest {
    pub access_token: Option<String>,
    pub default_user: Option<String>,
    pub default_workdir: Option<String>,
    pub env_vars: Option<BTreeMap<String, String>>,
    #[serde(rename = "hyperloopIP")]
    pub hyperloop_ip: Option<String>,
    /// RFC 3339; an `/init` older than the last one applied changes nothing.
    pub timestamp: Option<String>,
    pub volume_mounts: Option<Vec<VolumeMount>>,
}

fn parse_timestamp(ts: &str) -> Result<i128> {
    // Accept RFC 3339 with any fractional precision; compare as nanoseconds since the epoch.
    let parsed = httpdate_free_rfc3339(ts)
        .ok_or_else(|| EnvdError::InvalidArgument(format!("timestamp {ts:?} is not RFC 3339")))?;
    Ok(parsed)
}

/// Minimal RFC 3339 parser (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`) to nanoseconds.
fn httpdate_free_rfc3339(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut nanos: i128 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = s.get(start..i)?;
        let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
        nanos = digits.parse::<i128>().ok()?;
    }
    let offset_secs: i64 = match s.get(i..)? {
        "Z" | "z" => 0,
        tz if tz.len() == 6 => {
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            sign * (tz.get(1..3)?.parse::<i64>().ok()? * 3600
                + tz.get(4..6)?.parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset_secs;
    Some(secs as i128 * 1_000_000_000 + nanos)
}

pub async fn init(
    State(state): State<SharedState>,
    conn: Option<axum::Extension<ConnId>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response> {
    let req: InitRequest = if body.iter().all(u8::is_ascii_whitespace) {
        InitRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| EnvdError::InvalidArgument(format!("malformed /init body: {e}")))?
    };
    // With a token set, the caller proves it knows it (header, or the same token in the body).
    if state.has_access_token() {
        let header_ok = state.token_matches(
            headers
                .get(ACCESS_TOKEN_HEADER)
                .and_then(|v| v.to_str().ok()),
        );
        let body_ok = state.token_matches(req.access_token.as_deref());
        if !header_ok && !body_ok {
            return Err(EnvdError::Unauthenticated(
                "/init needs the current access token".into(),
            ));
        }
    }

    let fresh = match req.timestamp.as_deref() {
        Some(ts) => {
            let ts = parse_timestamp(ts)?;
            let mut last = state
                .last_init_timestamp
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|l| ts <= l) {
                false
            } else {
                *last = Some(ts);
                true
            }
        }
        None => true,
    };

    if fresh {
        apply_init(&state, req).await?;
        // A VM restored from a snapshot learns its new identity here.
        crate::metadata::spawn_poll(&state, Some(crate::metadata::REPOLL_CAP));
    } else {
        tracing::info!("stale /init ignored (older timestamp than the last one applied)");
    }

    state
        .restore_if_needed(conn.map(|axum::Extension(c)| c))
        .await;
    if !state.ports.is_running() {
        state.ports.start().await;
    }
    Ok(no_store(StatusCode::NO_CONTENT.into_response()))
}

async fn apply_init(state: &SharedState, req: InitRequest) -> Result<()> {
    // Validate everything before changing anything.
    if let Some(user) = req.default_user.as_deref().filter(|u| !u.is_empty()) {
        Account::lookup(user)?;
    }
    let user_for_paths = req
        .default_user
        .clone()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| state.defaults().user);
    let workdir = match req.default_workdir.as_deref().filter(|w| !w.is_empty()) {
        Some(w) => {
            let dir = Account::lookup(&user_for_paths)?.resolve_path(w)?;
            if !dir.is_dir() {
                return Err(EnvdError::InvalidArgument(format!(
                    "default workdir {} is not a directory",
                    dir.display()
                )));
            }
            Some(dir)
        }
        None => None,
    };

    {
        let mut d = state.defaults.write().unwrap_or_else(|p| p.into_inner());
        if let Some(vars) = req.env_vars {
            d.env_vars.extend(vars);
        }
        if let Some(user) = req.default_user.filter(|u| !u.is_empty()) {
            d.user = user;
        }
        if workdir.is_some() {
            d.workdir = workdir;
        }
        if let Some(ip) = req.hyperloop_ip.as_deref().filter(|ip| !ip.is_empty()) {
            d.env_vars
                .insert("WRENN_EVENTS_ADDRESS".into(), format!("http://{ip}"));
        }
    }
    if let Some(token) = req.access_token {
        state.set_access_token((!token.is_empty()).then_some(token));
    }
    if state.settings.in_vm {
        if let Some(ip) = req.hyperloop_ip.as_deref().filter(|ip| !ip.is_empty()) {
            crate::guest::set_hosts_entry("events.wrenn.local", ip)?;
        }
        for m in req.volume_mounts.unwrap_or_default() {
            crate::guest::mount_nfs(&m.nfs_target, &m.path).await?;
        }
    }
    Ok(())
}

/// `/snapshot/prepare` options; upstream sends none.
#[derive(Debug, Deserialize)]
pub struct PrepareQuery {
    /// Dropping the page cache shrinks a snapshot only when freed guest pages leave it (a
    /// balloon, or a VMM that writes memory itself). With QEMU's shared RAM file they stay, so
    /// the host agent turns it off there and the guest keeps its warm cache.
    #[serde(default = "default_true")]
    drop_page_cache: bool,
}

fn default_true() -> bool {
    true
}

/// Quiesces envd before the VM is frozen.
pub async fn snapshot_prepare(
    State(state): State<SharedState>,
    query: std::result::Result<Query<PrepareQuery>, QueryRejection>,
) -> Result<Response> {
    let Query(q) = query.map_err(|e| EnvdError::InvalidArgument(e.body_text()))?;
    state.ports.stop().await;
    let closing = state.conns.prepare();
    state.needs_restore.store(true, Ordering::Release);
    if state.settings.in_vm && q.drop_page_cache {
        crate::guest::drop_page_cache();
    }
    tokio::task::spawn_blocking(nix::unistd::sync).await.ok();
    tracing::info!(closing_connections = closing, "prepared for snapshot");
    Ok(no_store(StatusCode::NO_CONTENT.into_response()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(httpdate_free_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            httpdate_free_rfc3339("1970-01-01T00:00:01.5Z"),
            Some(1_500_000_000)
        );
        assert_eq!(httpdate_free_rfc3339("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(
            httpdate_free_rfc3339("2024-02-29T12:00:00Z"),
            Some(1_709_208_000 * 1_000_000_000)
        );
        assert_eq!(httpdate_free_rfc3339("yesterday"), None);
    }
}
