//! The two error types: [`Error`] for runtime faults (config, binding, serving) and
//! [`HandlerError`] for what a handler reports about one event.

use std::{fmt, net::SocketAddr, time::Duration};

use crate::{config::ConfigError, manifest::ManifestError};

/// A boxed error that can cross threads: the `source` of a [`HandlerError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A fault of the runtime itself, as opposed to a handler's verdict on one event.
///
/// [`crate::run`] exits the process with status 64 (`EX_USAGE`) for the variants where
/// [`Error::is_usage`] is true, after printing the key, the value and the reason.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An environment variable has a value the runtime cannot use.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The function's `function.toml` is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// An event type the function consumes or publishes has no usable contract.
    #[error("contract for event type {ty:?}: {reason}")]
    Contract {
        /// The event type.
        ty: String,
        /// Why the contract cannot be used.
        reason: String,
    },
    /// The idempotency store could not be opened or migrated.
    #[error("cannot open the idempotency store {url}: {reason}")]
    Store {
        /// The store URL, password removed.
        url: String,
        /// Why.
        reason: String,
    },
    /// The HTTP listener could not be opened.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address from `ZEROFN_BIND_ADDR` and `PORT`.
        addr: SocketAddr,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server stopped with an I/O error.
    #[error("HTTP server failed")]
    Serve(#[source] std::io::Error),
    /// The outbound HTTP client could not be built.
    #[error("cannot build the outbound HTTP client")]
    Client(#[source] reqwest::Error),
    /// Deliveries were still running when the shutdown grace period ended; they were not
    /// acknowledged, so the broker delivers them again.
    #[error(
        "shutdown grace period of {grace:?} ended with {in_flight} deliveries still in flight \
         (not acknowledged: they will be redelivered)"
    )]
    DrainTimeout {
        /// The configured grace period.
        grace: Duration,
        /// Deliveries still running.
        in_flight: usize,
    },
}
/// `err` and every `source()` below it, outermost first.
pub(crate) fn chain<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |e| e.source())
}

/// `main` returning `Err` prints `Debug`: show the readable message and its causes.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")?;
        for cause in chain(self).skip(1) {
            write!(f, "\n  caused by: {cause}")?;
        }
        Ok(())
    }
}

impl Error {
    /// True for errors caused by how the function was configured or built (exit status 64).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Error::Config(_) | Error::Manifest(_) | Error::Contract { .. }
        )
    }
}

/// How a failed event should be treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A transient fault (network, database, a dependency being down): deliver again.
    Retryable,
    /// The event can never succeed (bad data, a business rule): do not deliver again.
    Permanent,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Retryable => "retryable",
            ErrorKind::Permanent => "permanent",
        })
    }
}

/// A handler's failure for one event: a [`ErrorKind`] plus the error that caused it.
///
/// `?` on any `std::error::Error` gives a [`ErrorKind::Retryable`] error. Use
/// [`HandlerError::permanent`] (or [`ResultExt::permanent`]) for events that can never succeed.
///
/// `HandlerError` deliberately does not implement `std::error::Error`, so that the blanket
/// conversion from every error type is possible (as with `anyhow::Error`).
pub struct HandlerError {
    kind: ErrorKind,
    source: BoxError,
}

impl HandlerError {
    /// A transient failure: the event is delivered again.
    pub fn retryable(source: impl Into<BoxError>) -> Self {
        Self {
            kind: ErrorKind::Retryable,
            source: source.into(),
        }
    }

    /// A failure that no retry can fix: the event is dropped (and dead-lettered).
    pub fn permanent(source: impl Into<BoxError>) -> Self {
        Self {
            kind: ErrorKind::Permanent,
            source: source.into(),
        }
    }

    /// Retryable or permanent.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// True when no retry can fix the event.
    pub fn is_permanent(&self) -> bool {
        self.kind == ErrorKind::Permanent
    }

    /// True when the event should be delivered again.
    pub fn is_retryable(&self) -> bool {
        self.kind == ErrorKind::Retryable
    }

    /// The underlying error.
    pub fn source(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }

    /// The messages of the error and of every `source()` below it, outermost first.
    pub fn messages(&self) -> Vec<String> {
        chain(&*self.source).map(ToString::to_string).collect()
    }

    /// True if any error in the chain is an `E` (linkerd's `is_caused_by`).
    pub fn is_caused_by<E: std::error::Error + 'static>(&self) -> bool {
        chain(&*self.source).any(|err| err.is::<E>())
    }
}

impl<E> From<E> for HandlerError
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(err: E) -> Self {
        HandlerError::retryable(err)
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.messages().join(": "))
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("kind", &self.kind)
            .field("messages", &self.messages())
            .finish()
    }
}

/// Classify any `Result`'s error as permanent or retryable in place: `parse(x).permanent()?`.
pub trait ResultExt<T> {
    /// Turn the error into a [`HandlerError`] of kind [`ErrorKind::Permanent`].
    fn permanent(self) -> Result<T, HandlerError>;
    /// Turn the error into a [`HandlerError`] of kind [`ErrorKind::Retryable`].
    fn retryable(self) -> Result<T, HandlerError>;
}

impl<T, E: Into<BoxError>> ResultExt<T> for Result<T, E> {
    fn permanent(self) -> Result<T, HandlerError> {
        self.map_err(HandlerError::permanent)
    }

    fn retryable(self) -> Result<T, HandlerError> {
        self.map_err(HandlerError::retryable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_failure() -> Result<(), HandlerError> {
        Err(std::io::Error::other("connection reset"))?;
        Ok(())
    }

    #[test]
    fn question_mark_on_std_error_is_retryable() {
        let err = io_failure().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Retryable);
        assert!(err.is_caused_by::<std::io::Error>());
        assert_eq!(err.to_string(), "connection reset");
    }

    #[test]
    fn permanent_keeps_the_message_chain() {
        let parse: Result<u32, _> = "x".parse::<u32>();
        let err = parse.permanent().unwrap_err();
        assert!(err.is_permanent());
        assert_eq!(err.messages(), vec!["invalid digit found in string"]);
        assert!(!err.is_caused_by::<std::io::Error>());
    }
}
