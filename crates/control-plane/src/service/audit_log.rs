//! Reading the audit log: newest first, keyset-paginated on (created_at, id).

use crate::auth::UserSession;
use crate::error::{ApiError, ApiResult};
use crate::ids::{self, IdKind};
use crate::service::teams::PLATFORM_TEAM;
use crate::state::App;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;
use wrenn_api_types::auth::{AuditLogEntry, AuditLogPage};

pub const DEFAULT_PAGE: i64 = 50;
pub const MAX_PAGE: i64 = 200;

/// The query of `GET /v1/audit-logs`. `resource_type` and `action` may repeat and may be comma
/// lists, so the query arrives as raw pairs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditQuery {
    pub before: Option<DateTime<Utc>>,
    pub before_id: Option<Uuid>,
    pub limit: i64,
    pub resource_types: Vec<String>,
    pub actions: Vec<String>,
}

impl AuditQuery {
    pub fn from_pairs(pairs: &[(String, String)]) -> ApiResult<Self> {
        let mut q = Self {
            limit: DEFAULT_PAGE,
            ..Self::default()
        };
        for (key, value) in pairs {
            match key.as_str() {
                "before" => {
                    let at = DateTime::parse_from_rfc3339(value)
                        .map_err(|_| ApiError::invalid("before must be an RFC 3339 timestamp"))?;
                    q.before = Some(at.with_timezone(&Utc));
                }
                "before_id" => {
                    q.before_id = Some(ids::decode(IdKind::AuditLog, value).ok_or_else(|| {
                        ApiError::invalid("before_id must be an audit-log id (log-…)")
                    })?);
                }
                "limit" => {
                    let n: i64 = value
                        .parse()
                        .map_err(|_| ApiError::invalid("limit must be a number"))?;
                    q.limit = n.clamp(1, MAX_PAGE);
                }
                "resource_type" => q.resource_types.extend(split_list(value)),
                "action" => q.actions.extend(split_list(value)),
                _ => {}
            }
        }
        if q.before_id.is_some() && q.before.is_none() {
            return Err(ApiError::invalid("before_id needs before"));
        }
        Ok(q)
    }
}

fn split_list(value: &str) -> impl Iterator<Item = String> + '_ {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

#[derive(Debug, sqlx::FromRow)]
struct AuditRow {
    id: Uuid,
    actor_type: String,
    actor_id: Option<String>,
    actor_name: String,
    resource_type: String,
    resource_id: Option<String>,
    action: String,
    scope: String,
    status: String,
    metadata: Value,
    created_at: DateTime<Utc>,
}

impl AuditRow {
    fn into_api(self) -> AuditLogEntry {
        let metadata = match self.metadata {
            Value::Object(m) if m.is_empty() => None,
            Value::Null => None,
            other => Some(other),
        };
        AuditLogEntry {
            id: ids::encode(IdKind::AuditLog, self.id),
            actor_type: self.actor_type,
            actor_id: self.actor_id,
            actor_name: Some(self.actor_name).filter(|n| !n.is_empty()),
            resource_type: self.resource_type,
            resource_id: self.resource_id,
            action: self.action,
            scope: self.scope,
            status: self.status,
            metadata,
            created_at: self.created_at,
        }
    }
}

/// One page of `team_id`'s log, limited to `scopes`.
async fn page(
    app: &App,
    team_id: Uuid,
    scopes: &[&str],
    q: &AuditQuery,
) -> ApiResult<AuditLogPage> {
    let mut rows: Vec<AuditRow> = sqlx::query_as(
        "SELECT id, actor_type, actor_id, actor_name, resource_type, resource_id, action, scope,
                status, metadata, created_at
           FROM audit_logs
          WHERE team_id = $1
            AND scope = ANY($2)
            AND (cardinality($3::text[]) = 0 OR resource_type = ANY($3))
            AND (cardinality($4::text[]) = 0 OR action = ANY($4))
            AND ($5::timestamptz IS NULL
                 OR ($6::uuid IS NULL AND created_at < $5)
                 OR (created_at, id) < ($5, $6))
          ORDER BY created_at DESC, id DESC
          LIMIT $7",
    )
    .bind(team_id)
    .bind(scopes)
    .bind(&q.resource_types)
    .bind(&q.actions)
    .bind(q.before)
    .bind(q.before_id)
    .bind(q.limit + 1)
    .fetch_all(&app.db)
    .await?;
    let more = rows.len() as i64 > q.limit;
    rows.truncate(q.limit as usize);
    let (next_before, next_before_id) = match rows.last() {
        Some(last) if more => (
            Some(last.created_at),
            Some(ids::encode(IdKind::AuditLog, last.id)),
        ),
        _ => (None, None),
    };
    Ok(AuditLogPage {
        items: rows.into_iter().map(AuditRow::into_api).collect(),
        next_before,
        next_before_id,
    })
}

/// `GET /v1/audit-logs`: the session team's log. Members see `team`-scope rows only; owners and
/// admins also `admin`-scope ones.
pub async fn list_for_team(
    app: &App,
    session: &UserSession,
    q: &AuditQuery,
) -> ApiResult<AuditLogPage> {
    let scopes: &[&str] = if session.role.can_manage() {
        &["team", "admin"]
    } else {
        &["team"]
    };
    page(app, session.ctx.team_id, scopes, q).await
}

/// `GET /v1/admin/audit-logs`: the platform team's log, both scopes.
pub async fn list_for_platform(app: &App, q: &AuditQuery) -> ApiResult<AuditLogPage> {
    page(app, PLATFORM_TEAM, &["team", "admin"], q).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn parses_filters_lists_and_limits() {
        let q = AuditQuery::from_pairs(&pairs(&[
            ("resource_type", "api_key,team"),
            ("resource_type", "member"),
            ("action", "create"),
            ("limit", "1000"),
        ]))
        .expect("valid");
        assert_eq!(q.resource_types, ["api_key", "team", "member"]);
        assert_eq!(q.actions, ["create"]);
        assert_eq!(q.limit, MAX_PAGE);
        assert_eq!(
            AuditQuery::from_pairs(&[]).expect("empty").limit,
            DEFAULT_PAGE
        );
        assert!(AuditQuery::from_pairs(&pairs(&[("before", "yesterday")])).is_err());
        assert!(AuditQuery::from_pairs(&pairs(&[("limit", "x")])).is_err());
        let id = ids::encode(IdKind::AuditLog, Uuid::new_v4());
        assert!(
            AuditQuery::from_pairs(&pairs(&[("before_id", &id)])).is_err(),
            "needs before"
        );
        let q = AuditQuery::from_pairs(&pairs(&[
            ("before", "2026-01-02T03:04:05.123456Z"),
            ("before_id", &id),
        ]))
        .expect("valid");
        assert!(q.before.is_some() && q.before_id.is_some());
    }
}
