//! Teams and members through the HTTP API: roles re-read from the database, the owner's
//! immunities, isolation between teams, team deletion, and the user search.

mod support;

use serde_json::{Value, json};
use support::{Account, TestApp, json_of, status_and_code};
use uuid::Uuid;

struct Client<'a> {
    t: &'a TestApp,
    jwt: String,
}

impl Client<'_> {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        self.t.call(method, path, &self.jwt, body).await
    }
    async fn get(&self, path: &str) -> reqwest::Response {
        self.send(reqwest::Method::GET, path, None).await
    }
    async fn post(&self, path: &str, b: Value) -> reqwest::Response {
        self.send(reqwest::Method::POST, path, Some(b)).await
    }
    async fn patch(&self, path: &str, b: Value) -> reqwest::Response {
        self.send(reqwest::Method::PATCH, path, Some(b)).await
    }
    async fn delete(&self, path: &str) -> reqwest::Response {
        self.send(reqwest::Method::DELETE, path, None).await
    }
}

fn as_client<'a>(t: &'a TestApp, a: &Account) -> Client<'a> {
    Client {
        t,
        jwt: a.jwt.clone(),
    }
}

/// A session of `a` acting in `team`.
async fn switched<'a>(t: &'a TestApp, a: &Account, team: &str) -> Client<'a> {
    let resp = as_client(t, a)
        .post("/v1/auth/switch-team", json!({ "team_id": team }))
        .await;
    assert_eq!(resp.status(), 200, "switch-team");
    let v = json_of(resp).await;
    Client {
        t,
        jwt: v["token"].as_str().expect("token").to_string(),
    }
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn team_lifecycle_members_and_roles(db: sqlx::PgPool) {
    let (t, outbox) = TestApp::start_capturing(db).await;
    let owner = t.register(&outbox, "olga").await;
    let member = t.register(&outbox, "mike").await;
    let third = t.register(&outbox, "tina").await;
    let o = as_client(&t, &owner);

    // The default team from activation.
    let teams = json_of(o.get("/v1/teams").await).await;
    let teams = teams.as_array().expect("array");
    assert_eq!(teams.len(), 1);
    assert_eq!(teams[0]["name"], "olga's Team");
    assert_eq!(teams[0]["role"], "owner");
    let slug = teams[0]["slug"].as_str().expect("slug");
    assert!(slug.len() == 13 && slug.as_bytes()[6] == b'-', "{slug}");

    // Create: name rules, then 201 with the caller as owner.
    for bad in ["", "semi;colon", "a'b", &"x".repeat(129)] {
        assert_eq!(
            status_and_code(o.post("/v1/teams", json!({"name": bad})).await).await,
            (400, "invalid_request".into()),
            "{bad:?}"
        );
    }
    let created = o.post("/v1/teams", json!({"name": "Research Lab"})).await;
    assert_eq!(created.status(), 201);
    let team = json_of(created).await;
    let tid = team["id"].as_str().expect("id").to_string();
    assert_eq!(team["role"], "owner");

    // Members: add by email (case-insensitive), twice is a conflict, unknown is 404.
    let add = o
        .post(
            &format!("/v1/teams/{tid}/members"),
            json!({"email": member.email.to_uppercase()}),
        )
        .await;
    assert_eq!(add.status(), 201);
    assert_eq!(json_of(add).await["role"], "member");
    assert_eq!(
        status_and_code(
            o.post(
                &format!("/v1/teams/{tid}/members"),
                json!({"email": member.email})
            )
            .await
        )
        .await,
        (409, "conflict".into())
    );
    assert_eq!(
        status_and_code(
            o.post(
                &format!("/v1/teams/{tid}/members"),
                json!({"email": "ghost@x.test"})
            )
            .await
        )
        .await
        .0,
        404
    );

    let detail = json_of(o.get(&format!("/v1/teams/{tid}")).await).await;
    assert_eq!(detail["team"]["name"], "Research Lab");
    let roles: Vec<(&str, &str)> = detail["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["email"].as_str().expect("email"),
                m["role"].as_str().expect("role"),
            )
        })
        .collect();
    assert_eq!(
        roles,
        [
            (owner.email.as_str(), "owner"),
            (member.email.as_str(), "member")
        ]
    );

    // A member can read but not manage.
    let m = switched(&t, &member, &tid).await;
    assert_eq!(
        json_of(m.get(&format!("/v1/teams/{tid}/members")).await)
            .await
            .as_array()
            .expect("members")
            .len(),
        2
    );
    assert_eq!(
        status_and_code(
            m.patch(&format!("/v1/teams/{tid}"), json!({"name": "Mine"}))
                .await
        )
        .await,
        (403, "forbidden".into())
    );
    assert_eq!(
        status_and_code(
            m.post(
                &format!("/v1/teams/{tid}/members"),
                json!({"email": third.email})
            )
            .await
        )
        .await
        .0,
        403
    );
    assert_eq!(
        status_and_code(m.delete(&format!("/v1/teams/{tid}")).await)
            .await
            .0,
        403
    );

    // Promotion takes effect at once, with the member's existing token.
    let promote = o
        .patch(
            &format!("/v1/teams/{tid}/members/{}", member.user_id),
            json!({"role": "admin"}),
        )
        .await;
    assert_eq!(promote.status(), 200);
    assert_eq!(json_of(promote).await["role"], "admin");
    assert_eq!(
        m.patch(&format!("/v1/teams/{tid}"), json!({"name": "Renamed Lab"}))
            .await
            .status(),
        200
    );
    assert_eq!(
        m.post(
            &format!("/v1/teams/{tid}/members"),
            json!({"email": third.email})
        )
        .await
        .status(),
        201
    );
    // But an admin still cannot delete the team, nor touch the owner.
    assert_eq!(
        status_and_code(m.delete(&format!("/v1/teams/{tid}")).await)
            .await
            .0,
        403
    );
    assert_eq!(
        status_and_code(
            m.patch(
                &format!("/v1/teams/{tid}/members/{}", owner.user_id),
                json!({"role": "member"})
            )
            .await
        )
        .await
        .0,
        403
    );
    assert_eq!(
        status_and_code(
            m.delete(&format!("/v1/teams/{tid}/members/{}", owner.user_id))
                .await
        )
        .await
        .0,
        403
    );
    assert_eq!(
        status_and_code(
            o.patch(
                &format!("/v1/teams/{tid}/members/{}", third.user_id),
                json!({"role": "owner"})
            )
            .await
        )
        .await
        .0,
        400
    );
    assert_eq!(
        status_and_code(
            o.patch(
                &format!("/v1/teams/{tid}/members/{}", third.user_id),
                json!({"role": "boss"})
            )
            .await
        )
        .await
        .0,
        400
    );

    // The owner cannot leave; others can, and their session for the team dies at once.
    assert_eq!(
        status_and_code(o.post(&format!("/v1/teams/{tid}/leave"), json!({})).await)
            .await
            .0,
        403
    );
    let th = switched(&t, &third, &tid).await;
    assert_eq!(
        th.post(&format!("/v1/teams/{tid}/leave"), json!({}))
            .await
            .status(),
        204
    );
    assert_eq!(th.get("/v1/teams").await.status(), 401);
    // Removal likewise.
    assert_eq!(
        o.delete(&format!("/v1/teams/{tid}/members/{}", member.user_id))
            .await
            .status(),
        204
    );
    assert_eq!(m.get(&format!("/v1/teams/{tid}")).await.status(), 401);
    assert_eq!(
        status_and_code(
            o.delete(&format!("/v1/teams/{tid}/members/{}", member.user_id))
                .await
        )
        .await
        .0,
        404
    );

    // Membership changes are audited (admin scope: visible to the owner).
    let ot = switched(&t, &owner, &tid).await;
    let log = json_of(ot.get("/v1/audit-logs?resource_type=member,team").await).await;
    let actions: Vec<&str> = log["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["action"].as_str().expect("action"))
        .collect();
    assert_eq!(
        actions,
        [
            "remove",
            "leave",
            "add",
            "rename",
            "role_change",
            "add",
            "create"
        ]
    );
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn teams_and_keys_are_isolated(db: sqlx::PgPool) {
    let (t, outbox) = TestApp::start_capturing(db).await;
    let a = t.register(&outbox, "anna").await;
    let b = t.register(&outbox, "bert").await;
    let (ca, cb) = (as_client(&t, &a), as_client(&t, &b));

    // Another team is invisible: 404 on every team route, never 403.
    let other = &b.team_id;
    for path in [
        format!("/v1/teams/{other}"),
        format!("/v1/teams/{other}/members"),
    ] {
        assert_eq!(status_and_code(ca.get(&path).await).await.0, 404, "{path}");
    }
    assert_eq!(
        status_and_code(
            ca.patch(&format!("/v1/teams/{other}"), json!({"name": "Mine"}))
                .await
        )
        .await
        .0,
        404
    );
    assert_eq!(
        status_and_code(ca.delete(&format!("/v1/teams/{other}")).await)
            .await
            .0,
        404
    );
    assert_eq!(
        status_and_code(
            ca.post(
                &format!("/v1/teams/{other}/members"),
                json!({"email": a.email})
            )
            .await
        )
        .await
        .0,
        404
    );
    assert_eq!(
        status_and_code(
            ca.post(&format!("/v1/teams/{other}/leave"), json!({}))
                .await
        )
        .await
        .0,
        404
    );
    assert_eq!(
        status_and_code(ca.get("/v1/teams/team-garbage").await)
            .await
            .0,
        404
    );

    // Keys: each team lists its own; another team's key cannot be revoked.
    let kb = json_of(cb.post("/v1/api-keys", json!({"name": "bert's key"})).await).await;
    let ka = json_of(
        ca.post("/v1/api-keys", json!({"name": "  anna's key  "}))
            .await,
    )
    .await;
    assert_eq!(ka["name"], "anna's key");
    let list_a = json_of(ca.get("/v1/api-keys").await).await;
    let names: Vec<&str> = list_a
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["anna's key"]);
    let kb_id = kb["id"].as_str().expect("id");
    assert_eq!(
        status_and_code(ca.delete(&format!("/v1/api-keys/{kb_id}")).await)
            .await
            .0,
        404
    );
    let key_b = kb["key"].as_str().expect("key");
    assert_eq!(
        t.http
            .get(t.url("/v1/snapshots"))
            .header("X-API-Key", key_b)
            .send()
            .await
            .expect("send")
            .status(),
        200,
        "untouched"
    );
    assert_eq!(
        status_and_code(
            ca.post("/v1/api-keys", json!({"name": "n".repeat(129)}))
                .await
        )
        .await
        .0,
        400
    );

    // The audit log is per team.
    let log_a = json_of(ca.get("/v1/audit-logs").await).await;
    assert!(
        log_a["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|i| i["metadata"]["name"] != "bert's key")
    );
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn deleting_a_team_stops_its_capsules_and_keys(db: sqlx::PgPool) {
    let (t, outbox) = TestApp::start_capturing(db).await;
    let owner = t.register(&outbox, "owen").await;
    let o = as_client(&t, &owner);
    let team = json_of(o.post("/v1/teams", json!({"name": "Doomed"})).await).await;
    let tid = team["id"].as_str().expect("id").to_string();
    let ot = switched(&t, &owner, &tid).await;
    let key = json_of(ot.post("/v1/api-keys", json!({})).await).await;
    let key = key["key"].as_str().expect("key").to_string();

    let team_uuid: Uuid =
        sqlx::query_scalar("SELECT team_id FROM team_api_keys WHERE key_prefix = $1")
            .bind(&key[..10])
            .fetch_one(&t.app.db)
            .await
            .expect("team uuid");
    for status in ["running", "paused", "error", "stopped"] {
        sqlx::query("INSERT INTO sandboxes (id, team_id, status) VALUES ($1, $2, $3)")
            .bind(Uuid::new_v4())
            .bind(team_uuid)
            .bind(status)
            .execute(&t.app.db)
            .await
            .expect("capsule");
    }

    // A member may not delete it; the owner may.
    let member = t.register(&outbox, "mia").await;
    assert_eq!(
        ot.post(
            &format!("/v1/teams/{tid}/members"),
            json!({"email": member.email})
        )
        .await
        .status(),
        201
    );
    let m = switched(&t, &member, &tid).await;
    assert_eq!(
        status_and_code(m.delete(&format!("/v1/teams/{tid}")).await).await,
        (403, "forbidden".into())
    );
    assert_eq!(o.delete(&format!("/v1/teams/{tid}")).await.status(), 204);

    let statuses: Vec<String> =
        sqlx::query_scalar("SELECT status FROM sandboxes WHERE team_id = $1 ORDER BY status")
            .bind(team_uuid)
            .fetch_all(&t.app.db)
            .await
            .expect("statuses");
    assert_eq!(statuses, ["error", "stopped", "stopped", "stopped"]);
    assert_eq!(
        t.http
            .get(t.url("/v1/snapshots"))
            .header("X-API-Key", &key)
            .send()
            .await
            .expect("send")
            .status(),
        401
    );
    assert_eq!(
        ot.get("/v1/teams").await.status(),
        401,
        "sessions for the deleted team end"
    );
    let left = json_of(o.get("/v1/teams").await).await;
    assert!(
        left.as_array()
            .expect("teams")
            .iter()
            .all(|t| t["id"] != tid.as_str())
    );
    assert_eq!(
        status_and_code(o.delete(&format!("/v1/teams/{tid}")).await)
            .await
            .0,
        404
    );

    // Deleting the default team: the next login gets a new one.
    assert_eq!(
        o.delete(&format!("/v1/teams/{}", owner.team_id))
            .await
            .status(),
        204
    );
    let login = json_of(
        t.http
            .post(t.url("/v1/auth/login"))
            .json(&json!({"email": owner.email, "password": owner.password}))
            .send()
            .await
            .expect("login"),
    )
    .await;
    assert_ne!(login["team_id"], owner.team_id.as_str());
    let fresh = Client {
        t: &t,
        jwt: login["token"].as_str().expect("token").to_string(),
    };
    let teams = json_of(fresh.get("/v1/teams").await).await;
    assert_eq!(teams.as_array().expect("teams").len(), 1);
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn user_search_needs_an_at_sign_and_caps_results(db: sqlx::PgPool) {
    let (t, outbox) = TestApp::start_capturing(db).await;
    let me = t.register(&outbox, "searcher").await;
    for i in 0..12 {
        sqlx::query("INSERT INTO users (id, email, name, status) VALUES ($1, $2, 'x', 'active')")
            .bind(Uuid::new_v4())
            .bind(format!("user{i:02}@corp.test"))
            .execute(&t.app.db)
            .await
            .expect("user");
    }
    sqlx::query("INSERT INTO users (id, email, name, status) VALUES ($1, 'user99@corp.test', 'x', 'disabled')")
        .bind(Uuid::new_v4())
        .execute(&t.app.db)
        .await
        .expect("disabled user");
    let c = as_client(&t, &me);
    assert_eq!(
        status_and_code(c.get("/v1/users/search?email=user").await).await,
        (400, "invalid_request".into())
    );
    assert_eq!(
        status_and_code(c.get("/v1/users/search").await).await.0,
        400
    );
    let hits = json_of(c.get("/v1/users/search?email=USER00%40").await).await;
    let emails: Vec<&str> = hits
        .as_array()
        .expect("hits")
        .iter()
        .map(|h| h["email"].as_str().expect("email"))
        .collect();
    assert_eq!(emails, ["user00@corp.test"]);
    let hits = json_of(c.get("/v1/users/search?email=%40corp").await).await;
    assert!(
        hits.as_array().expect("hits").is_empty(),
        "a prefix, not a substring"
    );
    let wildcard = json_of(c.get("/v1/users/search?email=user__%40corp.test").await).await;
    assert!(
        wildcard.as_array().expect("hits").is_empty(),
        "LIKE wildcards are literal"
    );
    // At most 10 hits, in email order.
    for i in 0..12 {
        sqlx::query("INSERT INTO users (id, email, name, status) VALUES ($1, $2, 'x', 'active')")
            .bind(Uuid::new_v4())
            .bind(format!("same@corp{i:02}.test"))
            .execute(&t.app.db)
            .await
            .expect("user");
    }
    let capped = json_of(c.get("/v1/users/search?email=same%40corp").await).await;
    assert_eq!(capped.as_array().expect("hits").len(), 10);
    assert_eq!(capped[0]["email"], "same@corp00.test");
    assert!(
        capped[0]["user_id"]
            .as_str()
            .expect("id")
            .starts_with("usr-")
    );
}
