//! Platform administration, the audit log, the admin log endpoint, and the credentials every
//! account/team/admin route demands.

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use std::sync::Arc;
use support::{Account, TestApp, json_of, status_and_code};
use wrenn_control_plane::ids::{self, IdKind};
use wrenn_control_plane::service::admin::{LogSource, install_log_source};

async fn new_key(t: &TestApp, a: &Account) -> String {
    let k = json_of(
        t.call(Method::POST, "/v1/api-keys", &a.jwt, Some(json!({})))
            .await,
    )
    .await;
    k["key"].as_str().expect("key").to_string()
}

/// Every route of this area, with a body that would be acceptable.
fn routes(team: &str, user: &str) -> Vec<(Method, String, Option<Value>, bool)> {
    let body = Some(
        json!({"name": "N", "email": "a@b.test", "role": "member", "enabled": true,
        "active": true, "admin": true, "confirmation": "a@b.test", "new_password": "long enough",
        "team_id": team}),
    );
    let jwt_routes = [
        (Method::POST, "/v1/auth/switch-team".to_string()),
        (Method::GET, "/v1/me".into()),
        (Method::PATCH, "/v1/me".into()),
        (Method::DELETE, "/v1/me".into()),
        (Method::POST, "/v1/me/password".into()),
        (Method::GET, "/v1/api-keys".into()),
        (Method::POST, "/v1/api-keys".into()),
        (
            Method::DELETE,
            format!(
                "/v1/api-keys/{}",
                ids::encode(IdKind::ApiKey, uuid::Uuid::nil())
            ),
        ),
        (Method::GET, "/v1/teams".into()),
        (Method::POST, "/v1/teams".into()),
        (Method::GET, format!("/v1/teams/{team}")),
        (Method::PATCH, format!("/v1/teams/{team}")),
        (Method::DELETE, format!("/v1/teams/{team}")),
        (Method::GET, format!("/v1/teams/{team}/members")),
        (Method::POST, format!("/v1/teams/{team}/members")),
        (Method::PATCH, format!("/v1/teams/{team}/members/{user}")),
        (Method::DELETE, format!("/v1/teams/{team}/members/{user}")),
        (Method::POST, format!("/v1/teams/{team}/leave")),
        (Method::GET, "/v1/users/search?email=a%40".into()),
        (Method::GET, "/v1/audit-logs".into()),
    ];
    let admin_routes = [
        (Method::GET, "/v1/admin/teams".to_string()),
        (Method::DELETE, format!("/v1/admin/teams/{team}")),
        (Method::PUT, format!("/v1/admin/teams/{team}/byoc")),
        (Method::GET, "/v1/admin/users".into()),
        (Method::PUT, format!("/v1/admin/users/{user}/active")),
        (Method::PUT, format!("/v1/admin/users/{user}/admin")),
        (Method::GET, "/v1/admin/audit-logs".into()),
    ];
    jwt_routes
        .into_iter()
        .map(|(m, p)| (m, p, body.clone(), false))
        .chain(
            admin_routes
                .into_iter()
                .map(|(m, p)| (m, p, body.clone(), true)),
        )
        .collect()
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn every_route_demands_the_right_credentials(db: sqlx::PgPool) {
    let (t, outbox) = TestApp::start_capturing(db).await;
    let _admin = t.register(&outbox, "root").await;
    let member = t.register(&outbox, "user").await;
    let key = new_key(&t, &member).await;
    for (method, path, b, admin_only) in routes(&member.team_id, &member.user_id) {
        for prefix in ["", "/api"] {
            let url = t.url(&format!("{prefix}{path}"));
            let none = t
                .http
                .request(method.clone(), &url)
                .json(&b)
                .send()
                .await
                .expect("send");
            assert_eq!(
                status_and_code(none).await,
                (401, "unauthorized".into()),
                "no credentials: {method} {path}"
            );
            let with_key = t
                .http
                .request(method.clone(), &url)
                .header("X-API-Key", &key)
                .json(&b)
                .send()
                .await
                .expect("send");
            assert_eq!(
                status_and_code(with_key).await,
                (401, "unauthorized".into()),
                "API key: {method} {path}"
            );
            let forged = t
                .http
                .request(method.clone(), &url)
                .bearer_auth("not.a.jwt")
                .json(&b)
                .send()
                .await
                .expect("send");
            assert_eq!(
                status_and_code(forged).await.0,
                401,
                "bad token: {method} {path}"
            );
        }
        if admin_only {
            let as_member = t.call(method.clone(), &path, &member.jwt, b.clone()).await;
            assert_eq!(
                status_and_code(as_member).await,
                (403, "forbidden".into()),
                "member: {method} {path}"
            );
        }
    }
    // The log endpoint also takes an admin's API key, so a member's key is a 403 there.
    let logs = t.url("/v1/admin/logs");
    assert_eq!(
        status_and_code(t.http.get(&logs).send().await.expect("send"))
            .await
            .0,
        401
    );
    assert_eq!(
        status_and_code(
            t.http
                .get(&logs)
                .header("X-API-Key", &key)
                .send()
                .await
                .expect("send")
        )
        .await
        .0,
        403
    );
    assert_eq!(
        status_and_code(
            t.http
                .get(&logs)
                .bearer_auth(&member.jwt)
                .send()
                .await
                .expect("send")
        )
        .await
        .0,
        403
    );

    // Malformed JSON from an authenticated caller is a 400 in the error shape.
    for path in [
        "/v1/teams",
        "/v1/api-keys",
        "/v1/auth/login",
        "/v1/auth/activate",
    ] {
        let resp = t
            .http
            .post(t.url(path))
            .bearer_auth(&member.jwt)
            .header("content-type", "application/json")
            .body("{\"name\":")
            .send()
            .await
            .expect("send");
        assert_eq!(
            status_and_code(resp).await,
            (400, "invalid_request".into()),
            "{path}"
        );
    }
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn admin_manages_teams_and_users(db: sqlx::PgPool) {
    let (t, outbox) = TestApp::start_capturing(db).await;
    let admin = t.register(&outbox, "root").await;
    let member = t.register(&outbox, "user").await;
    let a = |m: Method, p: &str, b: Option<Value>| {
        let (t, jwt, p) = (&t, admin.jwt.clone(), p.to_string());
        async move { t.call(m, &p, &jwt, b).await }
    };

    // Teams: the platform team is not listed; counts are filled.
    let page = json_of(a(Method::GET, "/v1/admin/teams", None).await).await;
    assert_eq!(
        (
            page["total"].as_i64(),
            page["page"].as_i64(),
            page["per_page"].as_i64(),
            page["total_pages"].as_i64()
        ),
        (Some(2), Some(1), Some(100), Some(1))
    );
    let teams = page["teams"].as_array().expect("teams");
    let mine = teams
        .iter()
        .find(|t| t["id"] == member.team_id.as_str())
        .expect("member's team");
    assert_eq!(mine["owner_email"], member.email.as_str());
    assert_eq!(mine["member_count"], 1);
    assert_eq!(mine["is_byoc"], false);
    assert!(mine.get("deleted_at").is_none());
    assert_eq!(
        json_of(a(Method::GET, "/v1/admin/teams?page=2", None).await).await["teams"]
            .as_array()
            .expect("teams")
            .len(),
        0
    );

    // BYOC is one-way.
    let byoc = format!("/v1/admin/teams/{}/byoc", member.team_id);
    assert_eq!(
        status_and_code(a(Method::PUT, &byoc, Some(json!({"enabled": false}))).await).await,
        (400, "invalid_request".into())
    );
    assert_eq!(
        a(Method::PUT, &byoc, Some(json!({"enabled": true})))
            .await
            .status(),
        204
    );
    assert_eq!(
        a(Method::PUT, &byoc, Some(json!({"enabled": true})))
            .await
            .status(),
        204
    );
    let listed = json_of(t.call(Method::GET, "/v1/teams", &member.jwt, None).await).await;
    assert_eq!(listed[0]["is_byoc"], true);
    let platform = ids::encode(IdKind::Team, uuid::Uuid::nil());
    assert_eq!(
        status_and_code(
            a(
                Method::PUT,
                &format!("/v1/admin/teams/{platform}/byoc"),
                Some(json!({"enabled": true}))
            )
            .await
        )
        .await
        .0,
        404
    );
    assert_eq!(
        status_and_code(a(Method::DELETE, &format!("/v1/admin/teams/{platform}"), None).await)
            .await
            .0,
        404
    );

    // Users: list, and the active toggle.
    let users = json_of(a(Method::GET, "/v1/admin/users", None).await).await;
    assert_eq!(users["total"], 2);
    let u = users["users"]
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["email"] == member.email.as_str())
        .expect("member");
    assert_eq!(
        (
            u["status"].as_str(),
            u["is_admin"].as_bool(),
            u["teams_owned"].as_i64(),
            u["teams_joined"].as_i64()
        ),
        (Some("active"), Some(false), Some(1), Some(1))
    );

    let me_active = format!("/v1/admin/users/{}/active", admin.user_id);
    assert_eq!(
        status_and_code(a(Method::PUT, &me_active, Some(json!({"active": false}))).await)
            .await
            .0,
        400,
        "not oneself"
    );
    let key = new_key(&t, &member).await;
    let active = format!("/v1/admin/users/{}/active", member.user_id);
    assert_eq!(
        a(Method::PUT, &active, Some(json!({"active": false})))
            .await
            .status(),
        204
    );
    assert_eq!(
        status_and_code(t.call(Method::GET, "/v1/me", &member.jwt, None).await).await,
        (403, "account_disabled".into()),
        "the JWT is refused at once"
    );
    assert_eq!(
        t.http
            .get(t.url("/v1/snapshots"))
            .header("X-API-Key", &key)
            .send()
            .await
            .expect("send")
            .status(),
        401,
        "their keys are deleted"
    );
    let login = |pw: &str| {
        let (t, b) = (&t, json!({"email": member.email, "password": pw}));
        async move {
            t.http
                .post(t.url("/v1/auth/login"))
                .json(&b)
                .send()
                .await
                .expect("login")
        }
    };
    assert_eq!(
        status_and_code(login(&member.password).await).await,
        (403, "account_disabled".into())
    );
    assert_eq!(
        a(Method::PUT, &active, Some(json!({"active": true})))
            .await
            .status(),
        204
    );
    assert_eq!(login(&member.password).await.status(), 200);
    assert_eq!(
        status_and_code(
            a(
                Method::PUT,
                "/v1/admin/users/usr-nope/active",
                Some(json!({"active": true}))
            )
            .await
        )
        .await
        .0,
        404
    );

    // Admin grant/revoke; never the last admin.
    let my_admin = format!("/v1/admin/users/{}/admin", admin.user_id);
    let their_admin = format!("/v1/admin/users/{}/admin", member.user_id);
    assert_eq!(
        status_and_code(a(Method::PUT, &my_admin, Some(json!({"admin": false}))).await).await,
        (409, "invalid_state".into())
    );
    assert_eq!(
        a(Method::PUT, &their_admin, Some(json!({"admin": true})))
            .await
            .status(),
        204
    );
    assert_eq!(
        t.call(Method::GET, "/v1/admin/users", &member.jwt, None)
            .await
            .status(),
        200,
        "re-read from the DB"
    );
    assert_eq!(
        a(Method::PUT, &my_admin, Some(json!({"admin": false})))
            .await
            .status(),
        204
    );
    assert_eq!(a(Method::GET, "/v1/admin/users", None).await.status(), 403);
    let m_revoke = t
        .call(
            Method::PUT,
            &their_admin,
            &member.jwt,
            Some(json!({"admin": false})),
        )
        .await;
    assert_eq!(
        status_and_code(m_revoke).await,
        (409, "invalid_state".into()),
        "the member is now the last admin"
    );
    assert_eq!(
        t.call(
            Method::PUT,
            &my_admin,
            &member.jwt,
            Some(json!({"admin": true}))
        )
        .await
        .status(),
        204
    );

    // Admin team delete (same core as the owner's).
    assert_eq!(
        a(
            Method::DELETE,
            &format!("/v1/admin/teams/{}", member.team_id),
            None
        )
        .await
        .status(),
        204
    );
    assert_eq!(
        t.call(Method::GET, "/v1/teams", &member.jwt, None)
            .await
            .status(),
        401
    );
    let page = json_of(a(Method::GET, "/v1/admin/teams", None).await).await;
    let gone = page["teams"]
        .as_array()
        .expect("teams")
        .iter()
        .find(|t| t["id"] == member.team_id.as_str())
        .expect("still listed");
    assert!(gone["deleted_at"].is_string());

    // Every action is in the platform audit log, newest first, paged by keyset.
    let mut actions = Vec::new();
    let mut ids_seen = std::collections::HashSet::new();
    let mut path = "/v1/admin/audit-logs?limit=2".to_string();
    loop {
        let page = json_of(a(Method::GET, &path, None).await).await;
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 2);
        for i in items {
            assert!(
                ids_seen.insert(i["id"].as_str().expect("id").to_string()),
                "no overlap between pages"
            );
            assert_eq!(i["scope"], "admin");
            actions.push(i["action"].as_str().expect("action").to_string());
        }
        let Some(before) = page["next_before"].as_str() else {
            break;
        };
        let before_id = page["next_before_id"].as_str().expect("next_before_id");
        path = format!(
            "/v1/admin/audit-logs?limit=2&before={}&before_id={before_id}",
            before.replace('+', "%2B")
        );
    }
    assert_eq!(
        actions,
        [
            "delete",
            "admin_grant",
            "admin_revoke",
            "admin_grant",
            "activate",
            "deactivate",
            "byoc_enable"
        ]
    );
    let filtered = json_of(
        a(
            Method::GET,
            "/v1/admin/audit-logs?action=admin_grant&action=delete",
            None,
        )
        .await,
    )
    .await;
    assert_eq!(filtered["items"].as_array().expect("items").len(), 3);
    assert_eq!(
        status_and_code(a(Method::GET, "/v1/admin/audit-logs?before=yesterday", None).await)
            .await
            .0,
        400
    );
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn members_see_only_team_scope_audit_rows(db: sqlx::PgPool) {
    let (t, outbox) = TestApp::start_capturing(db).await;
    let owner = t.register(&outbox, "own").await;
    let member = t.register(&outbox, "mem").await;
    let add = t
        .call(
            Method::POST,
            &format!("/v1/teams/{}/members", owner.team_id),
            &owner.jwt,
            Some(json!({"email": member.email})),
        )
        .await;
    assert_eq!(add.status(), 201);
    assert_eq!(
        t.call(
            Method::POST,
            "/v1/api-keys",
            &owner.jwt,
            Some(json!({"name": "k"}))
        )
        .await
        .status(),
        201
    );
    let switched = json_of(
        t.call(
            Method::POST,
            "/v1/auth/switch-team",
            &member.jwt,
            Some(json!({"team_id": owner.team_id})),
        )
        .await,
    )
    .await;
    let member_jwt = switched["token"].as_str().expect("token");

    let actions = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| {
                format!(
                    "{}:{}",
                    i["resource_type"].as_str().unwrap_or(""),
                    i["action"].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    let as_owner = json_of(
        t.call(Method::GET, "/v1/audit-logs", &owner.jwt, None)
            .await,
    )
    .await;
    assert_eq!(actions(&as_owner), ["api_key:create", "member:add"]);
    let as_member = json_of(
        t.call(Method::GET, "/v1/audit-logs", member_jwt, None)
            .await,
    )
    .await;
    assert_eq!(actions(&as_member), ["api_key:create"]);
    let entry = &as_owner["items"][0];
    assert_eq!(entry["actor_type"], "user");
    assert_eq!(entry["actor_id"], owner.user_id.as_str());
    assert_eq!(entry["metadata"]["name"], "k");
    assert!(entry["id"].as_str().expect("id").starts_with("log-"));
}

struct FakeLog;

impl LogSource for FakeLog {
    fn tail(&self, n: usize) -> Vec<String> {
        let lines = ["one", "two", "three"];
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn admin_log_endpoint(db: sqlx::PgPool) {
    let (t, outbox) = TestApp::start_capturing(db).await;
    let admin = t.register(&outbox, "root").await;
    install_log_source(Arc::new(FakeLog));
    let got = json_of(
        t.call(
            Method::GET,
            "/v1/admin/logs?source=control-plane&lines=2",
            &admin.jwt,
            None,
        )
        .await,
    )
    .await;
    assert_eq!(got, json!({"lines": ["two", "three"]}));
    // `wrenn logs` uses the API key `wrenn login` stored.
    let key = new_key(&t, &admin).await;
    let resp = t
        .http
        .get(t.url("/v1/admin/logs"))
        .header("X-API-Key", &key)
        .send()
        .await
        .expect("send");
    assert_eq!(
        json_of(resp).await["lines"]
            .as_array()
            .expect("lines")
            .len(),
        3
    );
    assert_eq!(
        status_and_code(
            t.call(
                Method::GET,
                "/v1/admin/logs?source=elsewhere",
                &admin.jwt,
                None
            )
            .await
        )
        .await,
        (400, "invalid_request".into())
    );
    assert_eq!(
        status_and_code(
            t.call(
                Method::GET,
                "/v1/admin/logs?source=host:host-nope",
                &admin.jwt,
                None
            )
            .await
        )
        .await
        .0,
        404
    );
    let missing_host = ids::encode(IdKind::Host, uuid::Uuid::new_v4());
    assert_eq!(
        status_and_code(
            t.call(
                Method::GET,
                &format!("/v1/admin/logs?source=host:{missing_host}"),
                &admin.jwt,
                None
            )
            .await
        )
        .await
        .0,
        404
    );
}
