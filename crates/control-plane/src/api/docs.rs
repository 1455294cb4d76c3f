//! The OpenAPI document, generated from the handlers' `#[utoipa::path]` annotations, served as
//! `/openapi.json` and `/openapi.yaml`, and the Swagger UI at `/docs` (its files are compiled in
//! from the `utoipa-swagger-ui-vendored` crate: the page loads nothing from elsewhere).
//!
//! Adding a route: annotate its handler with `#[utoipa::path(...)]` (full path, `/v1/...`) and list
//! the handler in `paths(...)` below. `tests/openapi.rs` fails for any `/v1` route missing here.

use crate::api::{
    admin, api_keys, audit_logs, auth, capsules, events, exec, exec_stream, files, hosts, me,
    metrics, processes, pty, snapshots, teams,
};
use crate::state::AppState;
use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::LazyLock;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;
use wrenn_api_types::{API_KEY_HEADER, HOST_TOKEN_HEADER};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Wrenn API",
        description = "Wrenn's control plane: capsules (microVM sandboxes), exec, files, snapshots, \
                       events, teams and hosts. Authenticate with an API key (`X-API-Key`) or, for \
                       dashboard routes, a session token (`Authorization: Bearer`). Every route is \
                       also served under `/api`."
    ),
    paths(
        // Capsules.
        capsules::create,
        capsules::list,
        capsules::get_one,
        capsules::destroy,
        capsules::ping,
        capsules::pause,
        capsules::resume,
        metrics::capsule_metrics,
        metrics::stats,
        metrics::usage_report,
        // Exec, processes, files, terminals.
        exec::run,
        exec_stream::exec_stream,
        exec_stream::process_stream,
        processes::list,
        processes::kill,
        files::write,
        files::stream_write,
        files::read,
        files::stream_read,
        files::list,
        files::mkdir,
        files::remove,
        pty::pty,
        // Snapshots and events.
        snapshots::create,
        snapshots::list,
        snapshots::remove,
        events::stream,
        // Accounts, API keys, teams.
        auth::signup_handler,
        auth::activate_handler,
        auth::login_handler,
        auth::switch_team_handler,
        me::get_me,
        me::patch_me,
        me::delete_me,
        me::change_password,
        me::request_reset,
        me::confirm_reset,
        api_keys::create,
        api_keys::list,
        api_keys::revoke,
        teams::list,
        teams::create,
        teams::detail,
        teams::rename,
        teams::delete_team,
        teams::members,
        teams::add_member,
        teams::set_role,
        teams::remove_member,
        teams::leave,
        teams::search_users,
        audit_logs::team_logs,
        // Hosts.
        hosts::create,
        hosts::list,
        hosts::get_one,
        hosts::remove,
        hosts::delete_preview,
        hosts::regenerate_token,
        hosts::register,
        hosts::refresh,
        hosts::heartbeat,
        hosts::list_tags,
        hosts::add_tag,
        hosts::remove_tag,
        // Platform administration.
        admin::list_teams,
        admin::set_byoc,
        admin::delete_team,
        admin::list_users,
        admin::set_active,
        admin::set_admin,
        admin::logs,
        audit_logs::platform_logs,
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "capsules", description = "Capsule lifecycle, metrics, stats and usage"),
        (name = "exec", description = "Commands and processes in a capsule"),
        (name = "files", description = "Files in a capsule"),
        (name = "pty", description = "Terminals (WebSocket)"),
        (name = "snapshots", description = "Templates: base images and capsule snapshots"),
        (name = "events", description = "The team's event feed (server-sent events)"),
        (name = "auth", description = "Signup, activation, login"),
        (name = "account", description = "The signed-in user"),
        (name = "api-keys", description = "Team API keys"),
        (name = "teams", description = "Teams and members"),
        (name = "audit", description = "The team's audit log"),
        (name = "hosts", description = "Host agents: registration, heartbeats, tags"),
        (name = "admin", description = "Platform administration"),
    )
)]
pub struct ApiDoc;

/// Security scheme names, as handlers write them: `security(("api_key" = []), ("bearer" = []))`.
pub const SCHEME_API_KEY: &str = "api_key";
pub const SCHEME_BEARER: &str = "bearer";
pub const SCHEME_HOST_TOKEN: &str = "host_token";

/// Registers the schemes above.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            SCHEME_API_KEY,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                API_KEY_HEADER,
                "A team API key (`wrn_…`)",
            ))),
        );
        components.add_security_scheme(
            SCHEME_BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("A dashboard session token from /v1/auth/login"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            SCHEME_HOST_TOKEN,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                HOST_TOKEN_HEADER,
                "A host agent's JWT",
            ))),
        );
    }
}

/// The document, built once.
pub fn spec() -> &'static utoipa::openapi::OpenApi {
    static SPEC: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(ApiDoc::openapi);
    &SPEC
}

/// `/openapi.json`, `/openapi.yaml` and `/docs` (mounted at the root, beside `/v1`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/openapi.yaml", get(yaml))
        .merge(SwaggerUi::new("/docs").url("/openapi.json", spec().clone()))
}

async fn yaml() -> Response {
    static YAML: LazyLock<Result<String, String>> =
        LazyLock::new(|| spec().to_yaml().map_err(|e| e.to_string()));
    match &*YAML {
        Ok(text) => ([(header::CONTENT_TYPE, "application/yaml")], text.clone()).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "the OpenAPI document does not serialise as YAML");
            crate::error::error_response(
                wrenn_api_types::ErrorCode::InternalError,
                "the OpenAPI document could not be rendered",
                None,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_json_render() {
        assert!(spec().to_yaml().is_ok());
        assert!(spec().to_json().is_ok());
    }
}
