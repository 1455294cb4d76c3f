//! The caller's own account through the HTTP API: profile, team switching, passwords (change
//! and emailed reset), and account deletion.

mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::{TestApp, expect_error as error_code, json_of, link_token};
use wrenn_control_plane::email::{Outbox, SentEmail};
use wrenn_control_plane::service::accounts;

/// The newest message to `to` whose subject contains `subject` (sends are asynchronous).
async fn wait_mail(outbox: &Outbox, to: &str, subject: &str) -> SentEmail {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(m) = outbox
            .messages()
            .into_iter()
            .rev()
            .find(|m| m.to == to && m.subject.contains(subject))
        {
            return m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {subject:?} mail to {to}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn passwords_change_and_reset(db: sqlx::PgPool) {
    let (t, outbox) = TestApp::start_capturing(db).await;
    let u = t.register(&outbox, "erin").await;
    let change = |body: Value| {
        let (t, jwt) = (&t, u.jwt.clone());
        async move {
            t.http
                .post(t.url("/v1/me/password"))
                .bearer_auth(jwt)
                .json(&body)
                .send()
                .await
                .expect("change")
        }
    };
    assert_eq!(
        change(json!({"current_password": "nope nope", "new_password": "second-password"}))
            .await
            .status(),
        400
    );
    assert_eq!(
        change(json!({"new_password": "second-password"}))
            .await
            .status(),
        400
    );
    assert_eq!(
        change(json!({"current_password": u.password, "new_password": "short"}))
            .await
            .status(),
        400
    );
    assert_eq!(
        change(json!({"current_password": u.password, "new_password": "second-password"}))
            .await
            .status(),
        204
    );
    assert_eq!(t.login(&u.email, &u.password).await.status(), 401);
    assert_eq!(t.login(&u.email, "second-password").await.status(), 200);

    // Reset: always 204; only a real account gets mail.
    let reset = |email: &str| {
        let (t, email) = (&t, email.to_string());
        async move {
            t.http
                .post(t.url("/v1/me/password/reset"))
                .json(&json!({"email": email}))
                .send()
                .await
                .expect("reset")
        }
    };
    assert_eq!(reset("ghost@x.test").await.status(), 204);
    assert_eq!(reset("not an email").await.status(), 204);
    assert_eq!(reset(&u.email.to_uppercase()).await.status(), 204);
    let mail = wait_mail(&outbox, &u.email, "Reset").await;
    assert!(mail.text.contains("/reset-password?token="));
    assert!(outbox.messages().iter().all(|m| m.to != "ghost@x.test"));
    let token = link_token(&mail.text).expect("token");
    let confirm = |token: &str, pw: &str| {
        let (t, body) = (&t, json!({"token": token, "new_password": pw}));
        async move {
            t.http
                .post(t.url("/v1/me/password/reset/confirm"))
                .json(&body)
                .send()
                .await
                .expect("confirm")
        }
    };
    assert_eq!(
        confirm(&token, "short").await.status(),
        400,
        "weak password, token kept"
    );
    assert_eq!(confirm(&token, "third-password").await.status(), 204);
    assert_eq!(
        error_code(confirm(&token, "fourth-password").await, 400).await,
        "invalid_request"
    );
    assert_eq!(t.login(&u.email, "third-password").await.status(), 200);
    assert_eq!(
        confirm("00000000000000000000000000000000", "fifth-password")
            .await
            .status(),
        400
    );
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn profile_switch_team_and_account_deletion(db: sqlx::PgPool) {
    let (t, outbox) = TestApp::start_capturing(db).await;
    let admin = t.register(&outbox, "admin").await;
    let u = t.register(&outbox, "frank").await;

    let renamed = t
        .http
        .patch(t.url("/v1/me"))
        .bearer_auth(&u.jwt)
        .json(&json!({"name": "Franklin"}))
        .send()
        .await
        .expect("patch");
    assert_eq!(renamed.status(), 200);
    let renamed = json_of(renamed).await;
    assert_eq!(renamed["name"], "Franklin");
    let jwt = renamed["token"].as_str().expect("token").to_string();
    let me = json_of(
        t.http
            .get(t.url("/v1/me"))
            .bearer_auth(&jwt)
            .send()
            .await
            .expect("me"),
    )
    .await;
    assert_eq!(me["name"], "Franklin");

    // Switch to a second team, to one the user is not in (403), and to a missing one (404).
    let team = json_of(
        t.http
            .post(t.url("/v1/teams"))
            .bearer_auth(&jwt)
            .json(&json!({"name": "Second"}))
            .send()
            .await
            .expect("team"),
    )
    .await;
    let second = team["id"].as_str().expect("id");
    let switched = json_of(
        t.http
            .post(t.url("/v1/auth/switch-team"))
            .bearer_auth(&jwt)
            .json(&json!({"team_id": second}))
            .send()
            .await
            .expect("switch"),
    )
    .await;
    assert_eq!(switched["team_id"], second);
    let foreign = t
        .http
        .post(t.url("/v1/auth/switch-team"))
        .bearer_auth(&jwt)
        .json(&json!({"team_id": admin.team_id}))
        .send()
        .await
        .expect("switch");
    assert_eq!(error_code(foreign, 403).await, "forbidden");
    let missing = t
        .http
        .post(t.url("/v1/auth/switch-team"))
        .bearer_auth(&jwt)
        .json(&json!({"team_id": "team-nope"}))
        .send()
        .await
        .expect("switch");
    assert_eq!(error_code(missing, 404).await, "not_found");

    // Deletion: confirmation must match; owning a team with members blocks it.
    let delete = |confirmation: &str, jwt: &str| {
        let (t, body, jwt) = (&t, json!({"confirmation": confirmation}), jwt.to_string());
        async move {
            t.http
                .delete(t.url("/v1/me"))
                .bearer_auth(jwt)
                .json(&body)
                .send()
                .await
                .expect("delete")
        }
    };
    assert_eq!(delete("someone@else.test", &jwt).await.status(), 400);
    let add = t
        .http
        .post(t.url(&format!("/v1/teams/{second}/members")))
        .bearer_auth(&jwt)
        .json(&json!({"email": admin.email}))
        .send()
        .await
        .expect("add");
    assert_eq!(add.status(), 201);
    assert_eq!(
        error_code(delete(&u.email, &jwt).await, 409).await,
        "conflict"
    );
    let remove = t
        .http
        .delete(t.url(&format!("/v1/teams/{second}/members/{}", admin.user_id)))
        .bearer_auth(&jwt)
        .send()
        .await
        .expect("remove");
    assert_eq!(remove.status(), 204);
    // A key the user made stops working with the account.
    let key = json_of(
        t.http
            .post(t.url("/v1/api-keys"))
            .bearer_auth(&jwt)
            .json(&json!({"name": "k"}))
            .send()
            .await
            .expect("key"),
    )
    .await;
    let key = key["key"].as_str().expect("key").to_string();
    assert_eq!(delete(&u.email.to_uppercase(), &jwt).await.status(), 204);
    assert_eq!(
        t.http
            .get(t.url("/v1/me"))
            .bearer_auth(&jwt)
            .send()
            .await
            .expect("me")
            .status(),
        401
    );
    assert_eq!(
        t.http
            .get(t.url("/v1/snapshots"))
            .header("X-API-Key", &key)
            .send()
            .await
            .expect("key")
            .status(),
        401
    );
    assert_eq!(t.login(&u.email, &u.password).await.status(), 401);
    let live_teams: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM users_teams ut JOIN teams t ON t.id = ut.team_id JOIN users u ON u.id = ut.user_id
          WHERE u.email = $1 AND t.deleted_at IS NULL",
    )
    .bind(&u.email)
    .fetch_one(&t.app.db)
    .await
    .expect("count");
    assert_eq!(
        live_teams, 0,
        "sole-owned teams are deleted with the account"
    );

    // The last platform admin cannot delete their account.
    assert_eq!(
        error_code(delete(&admin.email, &admin.jwt).await, 409).await,
        "invalid_state"
    );

    // Purged after the retention period.
    sqlx::query("UPDATE users SET deleted_at = now() - interval '16 days' WHERE email = $1")
        .bind(&u.email)
        .execute(&t.app.db)
        .await
        .expect("age");
    let (purged, _) = accounts::housekeeping(&t.app.db)
        .await
        .expect("housekeeping");
    assert_eq!(purged, 1);
}
