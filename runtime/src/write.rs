//! Writes of HTTP handlers: one database transaction and the events it emits, committed
//! together through the transactional outbox and published after the commit. A row stored is an
//! event published (now, or by the outbox relay after a crash), never one without the other.

use std::sync::Arc;

use axum::{
    extract::FromRequestParts,
    http::{StatusCode, request::Parts},
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::{Emit, HandlerError, Transaction, TransactionGuard, event::Context, intake::Intake};

/// In a function's own routes: the write of this request. Take the transaction with
/// [`Write::conn`], add events with [`Write::emit`], then [`Write::commit`]: the rows and the
/// events are committed together, and the events are published afterwards. Dropped without a
/// commit, nothing is written and nothing is published. Needs a SQL store (`sqlite:` or
/// `postgres://`).
///
/// ```no_run
/// use axum::{Json, Router, routing::post};
/// use zerofn::{Emit, Write, WriteError};
///
/// async fn create(mut write: Write, Json(task): Json<serde_json::Value>) -> Result<Json<serde_json::Value>, WriteError> {
///     {
///         let mut conn = write.conn().await?;
///         sqlx::query("INSERT INTO tasks (id, title) VALUES ($1, $2)")
///             .bind(task["id"].as_str())
///             .bind(task["title"].as_str())
///             .execute(&mut **conn)
///             .await
///             .map_err(WriteError::internal)?;
///     }
///     write.emit(Emit::new("todo.task.created", &task)?);
///     write.commit().await?;
///     Ok(Json(task))
/// }
///
/// fn routes(_db: Option<sqlx::AnyPool>) -> Router {
///     Router::new().route("/tasks", post(create))
/// }
/// ```
pub struct Write {
    intake: Arc<Intake>,
    key: String,
    owner: String,
    cause: Context,
    tx: Transaction,
    emits: Vec<Emit>,
}

impl std::fmt::Debug for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Write")
            .field("id", &self.cause.id)
            .field("emits", &self.emits.len())
            .finish()
    }
}

/// Put in the extensions of requests to a function's own routes by the runtime.
#[derive(Clone)]
pub(crate) struct Writes(pub(crate) Arc<Intake>);

impl<S: Send + Sync> FromRequestParts<S> for Write {
    type Rejection = WriteError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(Writes(intake)) = parts.extensions.get::<Writes>().cloned() else {
            return Err(WriteError::internal(
                "zerofn::Write is available in a function's own routes only",
            ));
        };
        let begun = intake.begin_write().await.map_err(|f| WriteError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: f.kind.code(),
            message: f.message,
        })?;
        Ok(Write {
            intake,
            key: begun.key,
            owner: begun.owner,
            cause: begun.cause,
            tx: begun.tx,
            emits: Vec::new(),
        })
    }
}

impl Write {
    /// The write's id: it is the `causationid` of the events it emits (their ids derive from
    /// it, so a relay after a crash republishes the same ids).
    pub fn id(&self) -> &str {
        &self.cause.id
    }

    /// Exclusive use of the transaction for queries (`.execute(&mut **conn)`); drop the guard
    /// before the next call.
    pub async fn conn(&self) -> Result<TransactionGuard, WriteError> {
        self.tx.conn().await.map_err(WriteError::from)
    }

    /// Publish `event` if, and once, the write commits.
    pub fn emit(&mut self, event: Emit) {
        self.emits.push(event);
    }

    /// Commit the rows and the emitted events together, then publish the events. An emitted
    /// event that breaks its contract or is not declared under `[[publishes]]` rolls it all
    /// back (a 500: a bug). A publish that fails after the commit is left to the outbox relay.
    pub async fn commit(self) -> Result<(), WriteError> {
        self.intake
            .commit_write(&self.key, &self.owner, &self.cause, self.emits, self.tx)
            .await
            .map_err(|f| WriteError {
                status: if f.kind.is_retryable() {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                },
                code: f.kind.code(),
                message: f.message,
            })
    }
}

/// Why a write failed, as the HTTP answer: a status and `{"error", "message"}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct WriteError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable code.
    pub code: &'static str,
    /// What went wrong.
    pub message: String,
}

impl WriteError {
    /// A 500: a fault of the function or its database.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        WriteError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: e.to_string(),
        }
    }
}

impl From<HandlerError> for WriteError {
    fn from(e: HandlerError) -> Self {
        WriteError {
            status: if e.is_permanent() {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            code: if e.is_permanent() {
                "handler_permanent"
            } else {
                "handler_retryable"
            },
            message: e.to_string(),
        }
    }
}

impl IntoResponse for WriteError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({"error": self.code, "message": self.message})),
        )
            .into_response()
    }
}
