//! Accounts through the HTTP API: signup, activation, login, API keys, the first admin, and the
//! bootstrap admin. The caller's own profile and passwords are in `profile.rs`.

mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use support::{TestApp, expect_error as error_code, json_of, link_token};
use wrenn_control_plane::service::accounts;

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn signup_activate_login_and_api_keys(db: sqlx::PgPool) {
    let (t, outbox) = TestApp::start_capturing(db).await;
    let alice = t.register(&outbox, "alice").await;

    // The email links to the public URL, and the token works once only.
    let mail = outbox
        .wait_for(&alice.email, Duration::from_secs(5))
        .await
        .expect("mail");
    assert!(
        mail.text.contains("http://localhost:8080/activate?token="),
        "{}",
        mail.text
    );
    let token = link_token(&mail.text).expect("token");
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM one_time_tokens WHERE token_hash = $1")
            .bind(&token)
            .fetch_one(&t.app.db)
            .await
            .expect("count");
    assert_eq!(stored, 0, "only the hash is stored");
    let again = t
        .http
        .post(t.url("/v1/auth/activate"))
        .json(&json!({ "token": token }))
        .send()
        .await
        .expect("send");
    assert_eq!(error_code(again, 400).await, "invalid_request");

    // Login with the (differently cased) email; the session is scoped to the default team.
    let resp = t.login(&alice.email.to_uppercase(), &alice.password).await;
    assert_eq!(resp.status(), 200);
    let session = json_of(resp).await;
    assert_eq!(session["team_id"], alice.team_id.as_str());
    assert_eq!(session["user_id"], alice.user_id.as_str());
    let jwt = session["token"].as_str().expect("token").to_string();

    let me = json_of(
        t.http
            .get(t.url("/v1/me"))
            .bearer_auth(&jwt)
            .send()
            .await
            .expect("me"),
    )
    .await;
    assert_eq!(me["email"], alice.email.as_str());
    assert_eq!(
        me["is_admin"], true,
        "the first activated user is the platform admin"
    );
    assert_eq!(me["has_password"], true);

    // API keys: created with a JWT, shown once, listed without the secret.
    let created = t
        .http
        .post(t.url("/v1/api-keys"))
        .bearer_auth(&jwt)
        .json(&json!({}))
        .send()
        .await
        .expect("create key");
    assert_eq!(created.status(), 201);
    let created = json_of(created).await;
    assert_eq!(created["name"], "Unnamed API Key");
    let key = created["key"].as_str().expect("plaintext key").to_string();
    assert!(key.starts_with("wrn_") && key.len() == 36);
    assert_eq!(created["key_prefix"], &key[..10]);
    assert_eq!(created["creator_email"], alice.email.as_str());

    let listed = json_of(
        t.http
            .get(t.url("/v1/api-keys"))
            .bearer_auth(&jwt)
            .send()
            .await
            .expect("list"),
    )
    .await;
    let listed = listed.as_array().expect("array");
    assert_eq!(listed.len(), 1);
    assert!(
        listed[0].get("key").is_none(),
        "the list never shows the key"
    );
    assert!(!listed[0].to_string().contains(&key[10..]));

    // The key authenticates team routes, but not the JWT-only key management.
    let with_key = t
        .http
        .get(t.url("/v1/snapshots"))
        .header("X-API-Key", &key)
        .send()
        .await
        .expect("send");
    assert_eq!(with_key.status(), 200);
    let refused = t
        .http
        .get(t.url("/v1/api-keys"))
        .header("X-API-Key", &key)
        .send()
        .await
        .expect("send");
    assert_eq!(error_code(refused, 401).await, "unauthorized");

    // Revoke: 204, then the key stops working and a second revoke is a 404.
    let id = created["id"].as_str().expect("id");
    let revoke = |id: String| {
        let (t, jwt) = (&t, jwt.clone());
        async move {
            t.http
                .delete(t.url(&format!("/v1/api-keys/{id}")))
                .bearer_auth(jwt)
                .send()
                .await
                .expect("revoke")
        }
    };
    assert_eq!(revoke(id.to_string()).await.status(), 204);
    let gone = t
        .http
        .get(t.url("/v1/snapshots"))
        .header("X-API-Key", &key)
        .send()
        .await
        .expect("send");
    assert_eq!(gone.status(), 401);
    assert_eq!(
        error_code(revoke(id.to_string()).await, 404).await,
        "not_found"
    );
    assert_eq!(
        error_code(revoke("key-garbage".into()).await, 404).await,
        "not_found"
    );

    // Both actions are in the team's audit log.
    let log = json_of(
        t.http
            .get(t.url("/v1/audit-logs?resource_type=api_key"))
            .bearer_auth(&jwt)
            .send()
            .await
            .expect("log"),
    )
    .await;
    let actions: Vec<&str> = log["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["action"].as_str().expect("action"))
        .collect();
    assert_eq!(actions, ["revoke", "create"]);

    // The second user is not an admin.
    let bob = t.register(&outbox, "bob").await;
    let me = json_of(
        t.http
            .get(t.url("/v1/me"))
            .bearer_auth(&bob.jwt)
            .send()
            .await
            .expect("me"),
    )
    .await;
    assert_eq!(me["is_admin"], false);
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn signup_validation_conflicts_and_cooldown(db: sqlx::PgPool) {
    let (t, outbox) = TestApp::start_capturing(db).await;
    let signup = |body: Value| {
        let t = &t;
        async move {
            t.http
                .post(t.url("/v1/auth/signup"))
                .json(&body)
                .send()
                .await
                .expect("signup")
        }
    };
    for bad in [
        json!({"email": "a@x.test", "password": "short", "name": "A"}),
        json!({"email": "not-an-email", "password": "long enough", "name": "A"}),
        json!({"email": "a@x.test", "password": "long enough", "name": " "}),
        json!({"email": "a@x.test", "password": "long enough", "name": "n".repeat(101)}),
        json!({"email": "a@x.test", "password": "x".repeat(257), "name": "A"}),
        json!({"email": "a@x.test"}),
    ] {
        assert_eq!(
            error_code(signup(bad.clone()).await, 400).await,
            "invalid_request",
            "{bad}"
        );
    }
    let malformed = t
        .http
        .post(t.url("/v1/auth/signup"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(error_code(malformed, 400).await, "invalid_request");

    // An active account's email is taken.
    let active = t.register(&outbox, "taken").await;
    let resp = signup(json!({"email": active.email, "password": "long enough", "name": "B"})).await;
    assert_eq!(resp.status(), 409);
    let err = json_of(resp).await;
    assert_eq!(err["error"]["code"], "conflict");
    assert!(
        err["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("email already registered")
    );

    // An unactivated signup blocks the email for 30 minutes, then is replaced.
    let email = "Pending@X.test";
    assert_eq!(
        signup(json!({"email": email, "password": "long enough", "name": "P"}))
            .await
            .status(),
        201
    );
    let first = outbox
        .wait_for("pending@x.test", Duration::from_secs(5))
        .await
        .expect("mail");
    let resp = signup(json!({"email": email, "password": "long enough", "name": "P"})).await;
    assert_eq!(resp.status(), 409);
    let err = json_of(resp).await;
    assert!(
        err["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("30 minutes"),
        "{err}"
    );
    sqlx::query("UPDATE users SET created_at = now() - interval '31 minutes' WHERE email = 'pending@x.test'")
        .execute(&t.app.db)
        .await
        .expect("age the signup");
    assert_eq!(
        signup(json!({"email": email, "password": "long enough", "name": "P2"}))
            .await
            .status(),
        201
    );
    let old_token = link_token(&first.text).expect("token");
    let stale = t
        .http
        .post(t.url("/v1/auth/activate"))
        .json(&json!({"token": old_token}))
        .send()
        .await
        .expect("send");
    assert_eq!(stale.status(), 400, "the replaced signup's link is dead");
    let names: Vec<String> =
        sqlx::query_scalar("SELECT name FROM users WHERE email = 'pending@x.test'")
            .fetch_all(&t.app.db)
            .await
            .expect("names");
    assert_eq!(names, ["P2"]);

    // Signups can be switched off.
    let (t2, _) = {
        let settings = wrenn_control_plane::state::Settings {
            signup_enabled: false,
            ..Default::default()
        };
        let (mailer, outbox) = wrenn_control_plane::email::Mailer::default().capturing();
        (
            TestApp::start_with_mailer(t.app.db.clone(), settings, false, mailer).await,
            outbox,
        )
    };
    let off = t2
        .http
        .post(t2.url("/v1/auth/signup"))
        .json(&json!({"email": "z@x.test", "password": "long enough", "name": "Z"}))
        .send()
        .await
        .expect("send");
    assert_eq!(error_code(off, 403).await, "forbidden");
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn login_failures_states_and_rate_limit(db: sqlx::PgPool) {
    let (t, outbox) = TestApp::start_capturing(db).await;
    let user = t.register(&outbox, "carol").await;

    let unknown = json_of(t.login("nobody@x.test", "whatever1").await).await;
    let wrong = t.login(&user.email, "wrong password").await;
    assert_eq!(wrong.status(), 401);
    let wrong = json_of(wrong).await;
    assert_eq!(
        unknown["error"], wrong["error"],
        "unknown email and wrong password look alike"
    );
    assert_eq!(wrong["error"]["code"], "unauthorized");

    // Not yet activated → 403 account_not_activated (only with the right password).
    let signup = t
        .http
        .post(t.url("/v1/auth/signup"))
        .json(&json!({"email": "late@x.test", "password": "long enough", "name": "L"}))
        .send()
        .await
        .expect("signup");
    assert_eq!(signup.status(), 201);
    assert_eq!(
        error_code(t.login("late@x.test", "long enough").await, 403).await,
        "account_not_activated"
    );
    assert_eq!(
        error_code(t.login("late@x.test", "not the one").await, 401).await,
        "unauthorized"
    );

    // Disabled → 403 account_disabled.
    sqlx::query("UPDATE users SET status = 'disabled' WHERE email = $1")
        .bind(&user.email)
        .execute(&t.app.db)
        .await
        .expect("disable");
    assert_eq!(
        error_code(t.login(&user.email, &user.password).await, 403).await,
        "account_disabled"
    );
    sqlx::query("UPDATE users SET status = 'active' WHERE email = $1")
        .bind(&user.email)
        .execute(&t.app.db)
        .await
        .expect("enable");

    // Ten failures lock the email out, even for the right password (one failure is above).
    for _ in 1..accounts::login::MAX_LOGIN_FAILURES {
        assert_eq!(t.login(&user.email, "wrong password").await.status(), 401);
    }
    assert_eq!(
        error_code(t.login(&user.email, &user.password).await, 429).await,
        "rate_limited"
    );
    // Another account is unaffected.
    let other = t.register(&outbox, "dave").await;
    assert_eq!(t.login(&other.email, &other.password).await.status(), 200);
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn concurrent_first_activations_make_one_admin(db: sqlx::PgPool) {
    let (t, outbox) = TestApp::start_capturing(db).await;
    let mut tokens = Vec::new();
    for i in 0..8 {
        let email = format!("racer{i}@x.test");
        let resp = t
            .http
            .post(t.url("/v1/auth/signup"))
            .json(&json!({"email": email, "password": "long enough", "name": format!("R{i}")}))
            .send()
            .await
            .expect("signup");
        assert_eq!(resp.status(), 201);
        let mail = outbox
            .wait_for(&email, Duration::from_secs(5))
            .await
            .expect("mail");
        tokens.push(link_token(&mail.text).expect("token"));
    }
    let activations = tokens.iter().map(|token| {
        let t = &t;
        async move {
            t.http
                .post(t.url("/v1/auth/activate"))
                .json(&json!({"token": token}))
                .send()
                .await
                .expect("activate")
                .status()
        }
    });
    for status in futures::future::join_all(activations).await {
        assert_eq!(status, StatusCode::OK);
    }
    let admins: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE is_admin")
        .fetch_one(&t.app.db)
        .await
        .expect("count");
    assert_eq!(admins, 1);
    let defaults: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users_teams WHERE is_default AND role = 'owner'")
            .fetch_one(&t.app.db)
            .await
            .expect("count");
    assert_eq!(defaults, 8, "each activated user has a default team");
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn bootstrap_admin_creates_then_reuses(db: sqlx::PgPool) {
    let t = TestApp::start(db).await;
    let first = accounts::bootstrap_admin(&t.app.db, "Root@Example.test", None)
        .await
        .expect("bootstrap");
    assert_eq!(first.email, "root@example.test");
    let password = first
        .password_if_generated
        .clone()
        .expect("generated password");
    let key_ok = t
        .http
        .get(t.url("/v1/snapshots"))
        .header("X-API-Key", &first.api_key)
        .send()
        .await
        .expect("send");
    assert_eq!(key_ok.status(), 200);
    let session = json_of(t.login(&first.email, &password).await).await;
    let me = json_of(
        t.http
            .get(t.url("/v1/me"))
            .bearer_auth(session["token"].as_str().expect("token"))
            .send()
            .await
            .expect("me"),
    )
    .await;
    assert_eq!(me["is_admin"], true);

    let second = accounts::bootstrap_admin(
        &t.app.db,
        "root@example.test",
        Some("chosen-password".into()),
    )
    .await
    .expect("bootstrap again");
    assert_eq!(
        (second.user_id, second.team_id),
        (first.user_id, first.team_id)
    );
    assert!(second.password_if_generated.is_none());
    assert_ne!(second.api_key, first.api_key, "a fresh key every time");
    assert_eq!(
        t.login("root@example.test", "chosen-password")
            .await
            .status(),
        200
    );
    let names: Vec<String> =
        sqlx::query_scalar("SELECT name FROM team_api_keys WHERE team_id = $1")
            .bind(first.team_id)
            .fetch_all(&t.app.db)
            .await
            .expect("keys");
    assert_eq!(names, ["all-in-one", "all-in-one"]);
}
