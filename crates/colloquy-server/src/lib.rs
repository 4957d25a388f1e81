//! colloquy's HTTP server, as a library: OpenAI-compatible routes, durable
//! sessions in a [`colloquy::SessionStore`], and a scheduler
//! that batches concurrent requests without changing a single output token.
//!
//! `colloquy serve` is a thin wrapper over [`router`]; embed the same router
//! in your own axum app:
//!
//! ```no_run
//! use colloquy::language::*;
//! use colloquy_server::{router, Server, ServerConfig};
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let llm = Llama::builder().with_progress(false).build().await?;
//! let store = SessionStore::open("sessions")?;
//! let server = Server::start(llm, store, ServerConfig::default())?;
//! let app = axum::Router::new().nest("/llm", router(server));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions`,
//! `GET /v1/models`, `GET /health`, `GET /metrics`, and the sessions:
//! `POST /v1/sessions`, `GET /v1/sessions`, `GET|DELETE /v1/sessions/{id}`,
//! `POST /v1/sessions/{id}/fork`, `GET /v1/sessions/{id}/export`,
//! `POST /v1/sessions/import`.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use colloquy::store::SessionStore;
use colloquy::Llama;
use serde::de::DeserializeOwned;
use serde_json::json;

mod completions;
mod error;
mod metrics;
pub mod reasoning;
mod scheduler;
mod sessions;
pub mod structured;
pub mod wire;

pub use error::ApiError;
pub use metrics::Metrics;
pub use scheduler::SchedulerConfig;

/// How the server runs.
///
/// ```
/// let config = colloquy_server::ServerConfig { parallel: 4, ..Default::default() };
/// assert_eq!(config.max_queue, 64);
/// ```
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The id `/v1/models` lists, which requests may name.
    pub model_id: String,
    /// Other names requests may use for the model (its file name, say).
    pub model_aliases: Vec<String>,
    /// Requests need `Authorization: Bearer <key>` when set.
    pub api_key: Option<String>,
    /// Turns decoded together in one batch.
    pub parallel: usize,
    /// Turns admitted (running and waiting) before new ones get 429.
    pub max_queue: usize,
    /// The ceiling on a request's new tokens (it is also capped by the
    /// context that is left).
    pub max_tokens: u32,
    /// The largest request body, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Prompt tokens read per step, shared by the prompts being read.
    pub prompt_budget: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            model_id: "colloquy".into(),
            model_aliases: Vec::new(),
            api_key: None,
            parallel: 8,
            max_queue: 64,
            max_tokens: 4096,
            max_body_bytes: 32 << 20,
            prompt_budget: 256,
        }
    }
}

/// A running server: the model, its scheduler, its sessions and counters.
pub struct Server {
    llm: Llama,
    config: ServerConfig,
    scheduler: scheduler::Scheduler,
    sessions: sessions::Sessions,
    metrics: Arc<Metrics>,
    created: u64,
}

/// The state every route shares.
pub type App = Arc<Server>;

impl Server {
    /// The session store the server keeps its sessions in.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// # let llm = Llama::new_chat().await.unwrap();
    /// let store = SessionStore::open("sessions").unwrap();
    /// let server = colloquy_server::Server::start(llm, store, Default::default()).unwrap();
    /// println!("{} sessions", server.store().list().unwrap().len());
    /// # }
    /// ```
    pub fn store(&self) -> &Arc<SessionStore> {
        self.sessions.store()
    }

    /// Starts the scheduler for `llm`, with sessions kept in `store`.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// let store = SessionStore::open("sessions").unwrap();
    /// let server = colloquy_server::Server::start(llm, store, Default::default()).unwrap();
    /// # }
    /// ```
    pub fn start(llm: Llama, store: SessionStore, config: ServerConfig) -> Result<App, ApiError> {
        let metrics = Arc::new(Metrics::default());
        let sched = SchedulerConfig {
            parallel: config.parallel.max(1),
            max_queue: config.max_queue.max(1),
            prompt_budget: config.prompt_budget.max(1),
        };
        let scheduler = scheduler::Scheduler::start(llm.clone(), sched, Arc::clone(&metrics))
            .map_err(|e| ApiError::Internal(format!("starting the scheduler thread: {e}")))?;
        // The constraint token trie, built off the request path so that the
        // first request with a schema or tools does not wait for it (a failure
        // here shows again, as a typed error, on that request).
        let warm = llm.clone();
        let _ = std::thread::Builder::new()
            .name("colloquy-trie".into())
            .spawn(move || warm.prepare_constraints());
        let created =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Ok(Arc::new(Server {
            llm,
            config,
            scheduler,
            sessions: sessions::Sessions::new(store),
            metrics,
            created,
        }))
    }

    /// The counters `/metrics` shows.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Turns running or waiting.
    pub fn busy(&self) -> usize {
        self.scheduler.depth()
    }

    /// The model id a request names, checked: the served id, an alias, or none.
    fn check_model(&self, asked: Option<&str>) -> Result<String, ApiError> {
        match asked {
            None | Some("") => Ok(self.config.model_id.clone()),
            Some(m) if m == self.config.model_id || self.config.model_aliases.iter().any(|a| a == m) => {
                Ok(self.config.model_id.clone())
            }
            Some(m) => Err(ApiError::ModelNotFound(m.to_string())),
        }
    }

    /// `system_fingerprint`: the model's.
    fn system_fingerprint(&self) -> String {
        format!("colloquy-{}", self.llm.fingerprint())
    }

    /// Counts a request and turns its result into a response.
    fn finish_request(&self, endpoint: &str, r: Result<Response, ApiError>) -> Response {
        let resp = r.unwrap_or_else(IntoResponse::into_response);
        self.metrics.record_request(endpoint, resp.status().as_u16());
        resp
    }
}

/// Runs blocking library work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> colloquy::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("a worker thread failed: {e}")))?
        .map_err(ApiError::from)
}

/// A JSON body whose rejections are OpenAI-shaped: 400 for bad JSON, 413 for
/// a body over the limit.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let limit = req.extensions().get::<BodyLimit>().map_or(usize::MAX, |l| l.0);
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(limit)
            } else {
                ApiError::BadJson(e.body_text())
            }
        })?;
        serde_json::from_slice(&bytes).map(ApiJson).map_err(|e| ApiError::BadJson(e.to_string()))
    }
}

/// The body limit, for error messages.
#[derive(Debug, Clone, Copy)]
struct BodyLimit(usize);

/// Checks the API key (when one is set) and notes the body limit.
async fn guard(State(app): State<App>, mut req: Request, next: Next) -> Response {
    req.extensions_mut().insert(BodyLimit(app.config.max_body_bytes));
    if let Some(key) = &app.config.api_key {
        let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let ok = given
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|k| constant_time_eq(k.as_bytes(), key.as_bytes()));
        if !ok && req.uri().path() != "/health" {
            let resp = ApiError::Unauthorized.into_response();
            app.metrics.record_request(req.uri().path(), resp.status().as_u16());
            return resp;
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn models(State(app): State<App>) -> Json<serde_json::Value> {
    Json(json!({"object": "list", "data": [{
        "id": app.config.model_id, "object": "model", "created": app.created, "owned_by": "colloquy",
        "meta": {"n_ctx": app.llm.model().n_ctx(), "n_vocab": app.llm.model().n_vocab(),
                 "fingerprint": app.llm.fingerprint().to_string()}
    }]}))
}

/// `GET /health`: the server answers, and whether its session store does.
/// A store that is down makes the server "degraded" (still 200: requests
/// without a session work, and every replica shares the store).
async fn health(State(app): State<App>) -> Json<serde_json::Value> {
    let store = Arc::clone(app.sessions.store());
    let location = store.location().to_string();
    let checked = tokio::task::spawn_blocking(move || store.health()).await;
    let (status, store) = match checked {
        Ok(Ok(())) => ("ok", json!({"location": location, "status": "ok"})),
        Ok(Err(e)) => {
            ("degraded", json!({"location": location, "status": "unavailable", "error": e.to_string()}))
        }
        Err(e) => {
            ("degraded", json!({"location": location, "status": "unavailable", "error": e.to_string()}))
        }
    };
    Json(json!({"status": status, "store": store}))
}

async fn metrics_text(State(app): State<App>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], app.metrics.render(app.scheduler.depth()))
        .into_response()
}

async fn not_found(req: Request) -> ApiError {
    ApiError::RouteNotFound(format!("{} {}", req.method(), req.uri().path()))
}

/// The server's routes, ready to serve or to nest in another app.
///
/// ```no_run
/// # use colloquy::language::*;
/// # #[tokio::main] async fn main() {
/// # let llm = Llama::new_chat().await.unwrap();
/// # let store = SessionStore::open("sessions").unwrap();
/// let server = colloquy_server::Server::start(llm, store, Default::default()).unwrap();
/// let app: axum::Router = colloquy_server::router(server);
/// # }
/// ```
pub fn router(app: App) -> Router {
    let limit = app.config.max_body_bytes;
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(completions::chat))
        .route("/v1/completions", post(completions::completion))
        .route("/v1/sessions", post(sessions::create).get(sessions::list))
        .route("/v1/sessions/import", post(sessions::import))
        .route("/v1/sessions/{id}", get(sessions::show).delete(sessions::delete))
        .route("/v1/sessions/{id}/fork", post(sessions::fork))
        .route("/v1/sessions/{id}/export", get(sessions::export))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(Arc::clone(&app), guard))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(app)
}

/// Serves `app` on `listener` until SIGTERM or Ctrl-C: then it stops taking
/// connections, lets the running requests finish (and save), and returns.
///
/// ```no_run
/// # use colloquy::language::*;
/// # #[tokio::main] async fn main() -> std::io::Result<()> {
/// # let llm = Llama::new_chat().await.unwrap();
/// # let store = SessionStore::open("sessions").unwrap();
/// let server = colloquy_server::Server::start(llm, store, Default::default()).unwrap();
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// colloquy_server::serve(listener, colloquy_server::router(server)).await
/// # }
/// ```
pub async fn serve(listener: tokio::net::TcpListener, app: Router) -> std::io::Result<()> {
    axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
