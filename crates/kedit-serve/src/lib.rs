//! `kedit serve`: a web page over the kedit library — pick a method, write a fact, compare
//! the model's answers before and after, trace the prompt, revert and save edits.
//!
//! A thin layer like the CLI: the handlers ([`routes`]) parse JSON, take the one model
//! (or answer 409 "busy"), call the library on a blocking thread ([`work`]) and answer
//! JSON. The page ([`page`]) is static and talks only to this API.

pub mod address;
pub mod error;
pub mod methods;
pub mod page;
pub mod probe;
pub mod routes;
pub mod state;
pub mod work;

use std::future::Future;
use std::net::SocketAddr;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

pub use address::{check_bind, DEFAULT_ADDR};
pub use error::ApiError;
pub use state::{AppState, ServeConfig};

/// The largest request body: facts are a few hundred bytes.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Every route of the page and its API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(page::index))
        .route("/style.css", get(page::style))
        .route("/app.js", get(page::script))
        .route("/api/state", get(routes::state))
        .route("/api/methods", get(routes::methods))
        .route("/api/edit", post(routes::edit))
        .route("/api/probe", post(routes::probe))
        .route("/api/trace", post(routes::trace))
        .route("/api/revert-all", post(routes::revert_all))
        .route("/api/edits/{id}/revert", post(routes::revert))
        .route("/api/edits/{id}/save", post(routes::save))
        .route("/api/edits/{id}/file", get(routes::download))
        // Bodies without a declared length are cut off while being read…
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        // …and one declaring more is refused before a byte of it is read.
        .layer(middleware::from_fn(refuse_large_bodies))
        .with_state(state)
}

async fn refuse_large_bodies(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > BODY_LIMIT as u64 => ApiError::too_large(BODY_LIMIT).into_response(),
        _ => next.run(request).await,
    }
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Address(String),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Kedit(#[from] kedit::Error),
    #[error("loading the model: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// A server bound and loaded, not yet serving.
pub struct Server {
    listener: tokio::net::TcpListener,
    pub state: AppState,
    /// Set when listening on a non-loopback address (with `allow_remote`).
    pub warning: Option<String>,
}

impl Server {
    /// Checks the address (before any work: a refused address costs nothing), loads the
    /// model and methods off the executor, then binds.
    pub async fn start(
        config: ServeConfig,
        addr: SocketAddr,
        allow_remote: bool,
    ) -> Result<Self, ServeError> {
        let warning = check_bind(addr, allow_remote).map_err(ServeError::Address)?;
        let state = tokio::task::spawn_blocking(move || AppState::load(config)).await??;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        Ok(Server {
            listener,
            state,
            warning,
        })
    }

    /// The address actually bound (port 0 picks a free one).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(self.listener, router(self.state))
            .with_graceful_shutdown(shutdown)
            .await
    }
}
