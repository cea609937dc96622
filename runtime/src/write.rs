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

use crate::{
    Emit, HandlerError, Transaction, TransactionGuard,
    event::Context,
    idempotency::StoredResponse,
    intake::{Intake, Started},
};

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
///
/// With an `Idempotency-Key` header (1 to 255 printable ASCII characters), a request repeated
/// after its write committed is answered with the first response ([`Write::respond`]) and the
/// handler does not run again: nothing is written or emitted twice. While the first is still
/// running, a repeat gets `409`.
pub struct Write {
    intake: Arc<Intake>,
    key: String,
    owner: String,
    cause: Context,
    /// Taken by `finish`, which consumes the write (`Write` has a `Drop`, so it moves out).
    tx: Option<Transaction>,
    /// Set once the commit succeeded; otherwise the drop releases the record.
    committed: bool,
    emits: Vec<Emit>,
    /// Keep the response: the request came with an `Idempotency-Key`.
    keyed: bool,
    /// Renews the write's lease while it is open (dropped with it).
    _heartbeat: crate::intake::Heartbeat,
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

/// The name of the header that makes a write idempotent.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Why the handler of a write does not run: an error, or the first response to the same
/// `Idempotency-Key` (marked `idempotent-replayed: true`).
#[derive(Debug)]
pub struct WriteRejection(Response);

impl IntoResponse for WriteRejection {
    fn into_response(self) -> Response {
        self.0
    }
}

impl From<WriteError> for WriteRejection {
    fn from(e: WriteError) -> Self {
        WriteRejection(e.into_response())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Write {
    type Rejection = WriteRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(Writes(intake)) = parts.extensions.get::<Writes>().cloned() else {
            return Err(WriteError::internal(
                "zerofn::Write is available in a function's own routes only",
            )
            .into());
        };
        let key = match parts.headers.get(IDEMPOTENCY_KEY) {
            None => None,
            Some(v) => match v.to_str() {
                Ok(k)
                    if (1..=255).contains(&k.len())
                        && k.bytes().all(|b| (0x20..0x7f).contains(&b)) =>
                {
                    Some(k.to_string())
                }
                _ => {
                    return Err(WriteError {
                        status: StatusCode::BAD_REQUEST,
                        code: "bad_idempotency_key",
                        message:
                            "header Idempotency-Key must be 1 to 255 printable ASCII characters"
                                .into(),
                    }
                    .into());
                }
            },
        };
        let request = format!("{} {}", parts.method, parts.uri.path());
        let started = intake
            .begin_write(key.as_deref().map(|k| (request.as_str(), k)))
            .await
            .map_err(|f| WriteError {
                status: if f.kind == crate::outcome::FailureKind::InFlight {
                    StatusCode::CONFLICT
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                code: f.kind.code(),
                message: f.message,
            })?;
        match started {
            Started::Begun(begun) => {
                let begun = *begun;
                Ok(Write {
                    intake,
                    key: begun.key,
                    owner: begun.owner,
                    cause: begun.cause,
                    tx: Some(begun.tx),
                    committed: false,
                    emits: Vec::new(),
                    keyed: key.is_some(),
                    _heartbeat: begun.heartbeat,
                })
            }
            Started::Replay(first) => {
                let status = StatusCode::from_u16(first.status).unwrap_or(StatusCode::OK);
                let mut response = if first.body.is_empty() {
                    status.into_response()
                } else {
                    (
                        status,
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        first.body,
                    )
                        .into_response()
                };
                response.headers_mut().insert(
                    "idempotent-replayed",
                    axum::http::HeaderValue::from_static("true"),
                );
                Err(WriteRejection(response))
            }
        }
    }
}

impl Drop for Write {
    fn drop(&mut self) {
        // Not committed (dropped, or the commit failed and rolled back): release the record
        // now, so a retry with the same key runs at once.
        if !self.committed {
            let (intake, key, owner) = (self.intake.clone(), self.key.clone(), self.owner.clone());
            tokio::spawn(async move { intake.abandon_write(&key, &owner).await });
        }
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
        match &self.tx {
            Some(tx) => tx.conn().await.map_err(WriteError::from),
            None => Err(WriteError::internal("the write has ended")),
        }
    }

    /// Publish `event` if, and once, the write commits.
    pub fn emit(&mut self, event: Emit) {
        self.emits.push(event);
    }

    /// Commit the rows and the emitted events together, then publish the events. An emitted
    /// event that breaks its contract or is not declared under `[[publishes]]` rolls it all
    /// back (a 500: a bug). A publish that fails after the commit is left to the outbox relay.
    pub async fn commit(self) -> Result<(), WriteError> {
        self.finish(None).await
    }

    /// [`Write::commit`], then answer `status` with `body` as JSON. With an `Idempotency-Key`,
    /// this response is kept in the same transaction and is the answer to every repeat.
    pub async fn respond(
        self,
        status: StatusCode,
        body: &impl serde::Serialize,
    ) -> Result<Response, WriteError> {
        let body = serde_json::to_string(body).map_err(WriteError::internal)?;
        let kept = StoredResponse {
            status: status.as_u16(),
            body,
        };
        let body = kept.body.clone();
        self.finish(Some(kept)).await?;
        Ok((
            status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response())
    }

    async fn finish(mut self, response: Option<StoredResponse>) -> Result<(), WriteError> {
        let Some(tx) = self.tx.take() else {
            return Err(WriteError::internal("the write has ended"));
        };
        // Kept only for an `Idempotency-Key`; a plain `commit()` is answered 204 on a repeat.
        let response = self.keyed.then(|| {
            response.unwrap_or(StoredResponse {
                status: 204,
                body: String::new(),
            })
        });
        let emits = std::mem::take(&mut self.emits);
        let result = self
            .intake
            .commit_write(
                &self.key,
                &self.owner,
                &self.cause,
                emits,
                tx,
                response.as_ref(),
            )
            .await;
        self.committed = result.is_ok();
        result.map_err(|f| WriteError {
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
