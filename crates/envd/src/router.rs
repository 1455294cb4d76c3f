//! The one router behind envd's port: plain HTTP routes and the Connect RPCs.

use crate::state::SharedState;
use crate::{auth, filesystem, http as routes, process};
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use wrenn_protocol::connect::server::{client_stream, server_stream, unary};
use wrenn_protocol::envd::{filesystem::SERVICE as FS, process::SERVICE as PROC, rpc_path};

/// Registers one RPC: `rpc!(router, state, kind, service, "Method", handler)`.
macro_rules! rpc {
    ($router:expr, $state:expr, $kind:ident, $service:expr, $method:literal, $handler:path) => {{
        let st = $state.clone();
        $router.route(
            &rpc_path($service, $method),
            post(move |req: Request| {
                let st = st.clone();
                async move { $kind(req, move |info, msg| $handler(st, info, msg)).await }
            }),
        )
    }};
}

pub fn build(state: SharedState) -> Router {
    let mut r: Router = Router::new();
    r = rpc!(r, state, unary, PROC, "List", process::service::list);
    r = rpc!(
        r,
        state,
        server_stream,
        PROC,
        "Start",
        process::service::start
    );
    r = rpc!(
        r,
        state,
        server_stream,
        PROC,
        "Connect",
        process::service::connect
    );
    r = rpc!(r, state, unary, PROC, "Update", process::service::update);
    r = rpc!(
        r,
        state,
        client_stream,
        PROC,
        "StreamInput",
        process::service::stream_input
    );
    r = rpc!(
        r,
        state,
        unary,
        PROC,
        "SendInput",
        process::service::send_input
    );
    r = rpc!(
        r,
        state,
        unary,
        PROC,
        "SendSignal",
        process::service::send_signal
    );
    r = rpc!(
        r,
        state,
        unary,
        PROC,
        "CloseStdin",
        process::service::close_stdin
    );
    r = rpc!(r, state, unary, FS, "Stat", filesystem::service::stat);
    r = rpc!(
        r,
        state,
        unary,
        FS,
        "MakeDir",
        filesystem::service::make_dir
    );
    r = rpc!(r, state, unary, FS, "Move", filesystem::service::r#move);
    r = rpc!(
        r,
        state,
        unary,
        FS,
        "ListDir",
        filesystem::service::list_dir
    );
    r = rpc!(r, state, unary, FS, "Remove", filesystem::service::remove);
    r = rpc!(
        r,
        state,
        server_stream,
        FS,
        "WatchDir",
        filesystem::service::watch_dir
    );
    r = rpc!(
        r,
        state,
        unary,
        FS,
        "CreateWatcher",
        filesystem::service::create_watcher
    );
    r = rpc!(
        r,
        state,
        unary,
        FS,
        "GetWatcherEvents",
        filesystem::service::get_watcher_events
    );
    r = rpc!(
        r,
        state,
        unary,
        FS,
        "RemoveWatcher",
        filesystem::service::remove_watcher
    );

    let http: Router = Router::new()
        .route("/health", get(routes::lifecycle::health))
        .route("/envs", get(routes::lifecycle::envs))
        .route("/metrics", get(routes::lifecycle::metrics))
        .route("/init", post(routes::lifecycle::init))
        .route(
            "/snapshot/prepare",
            post(routes::lifecycle::snapshot_prepare),
        )
        .route(
            "/files",
            get(routes::files::download)
                .post(routes::files::upload)
                .layer(DefaultBodyLimit::disable()),
        )
        .with_state(state.clone());

    r.merge(http)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(middleware::from_fn_with_state(
            state,
            restore_on_first_request,
        ))
        .layer(middleware::from_fn(cors))
}

async fn not_found(req: Request) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({
            "code": 404,
            "message": format!("no route for {} {}", req.method(), req.uri().path()),
        })),
    )
        .into_response()
}

/// The first request after a resume (whatever it is: the host's health poll or `/init`) runs the
/// restore path before it is served.
async fn restore_on_first_request(
    State(state): State<SharedState>,
    req: Request,
    next: Next,
) -> Response {
    if req.uri().path() != "/snapshot/prepare" {
        let conn = req.extensions().get::<crate::conntrack::ConnId>().copied();
        state.restore_if_needed(conn).await;
    }
    next.run(req).await
}

/// Permissive CORS, so browser clients (the dashboard's terminal, E2B's JS SDK) can call envd.
async fn cors(req: Request, next: Next) -> Response {
    let preflight = req.method() == Method::OPTIONS;
    let mut resp = if preflight {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("7200"),
    );
    resp
}
