//! The API's envelope: health, unknown routes, auth refusals.

mod support;

use serde_json::Value;
use support::TestApp;

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn health_and_unknown_routes_answer_in_the_error_shape(db: sqlx::PgPool) {
    let t = TestApp::start(db).await;
    let health: Value = t
        .http
        .get(t.url("/health"))
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("json");
    assert_eq!(health["status"], "ok");
    let resp = t.http.get(t.url("/v1/nope")).send().await.expect("send");
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "not_found");
}
