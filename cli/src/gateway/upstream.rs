//! The gateway's client to the functions it proxies to: hyper's pooled HTTP/1.1 client (TLS for
//! an `https://` route), one exchange at a time, under a deadline that covers the whole answer
//! and a cap on its size checked as it streams in.
//!
//! hyper's client directly rather than reqwest (#16): the request is already an `http::Request`
//! and its URI is built from the incoming one, so there is no URL to parse and normalise, no
//! request and response re-built around it and no timer boxed per request.

use std::time::Duration;

use axum::{
    body::Bytes,
    http::{HeaderMap, Request, StatusCode},
};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper_util::{
    client::legacy::{Client as Pool, connect::HttpConnector},
    rt::TokioExecutor,
};

/// Pooled keep-alive connections to the functions (plain HTTP, or TLS for `https://` routes,
/// verified against the platform's roots). Redirects are not followed: they go back to the caller.
#[derive(Clone, Debug)]
pub(crate) struct Client(Pool<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>);

/// A function's whole answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// Why there is no answer.
#[derive(Debug)]
pub(crate) enum Failure {
    /// No whole answer within the deadline (given).
    Timeout(Duration),
    /// The answer is larger than the cap (bytes).
    TooLarge(usize),
    /// No answer: no connection, or it closed before the answer's head (with the causes).
    NoAnswer(String),
    /// The answer's body broke off.
    BrokeOff(String),
}

impl Failure {
    /// What the caller is told: status, error code and message, naming `function`.
    pub(crate) fn answer(&self, function: &str) -> (StatusCode, &'static str, String) {
        let failed = |message: String| (StatusCode::BAD_GATEWAY, "upstream_failed", message);
        match self {
            Failure::Timeout(deadline) => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                format!("function {function} did not answer within {deadline:?}"),
            ),
            Failure::TooLarge(max) => failed(format!(
                "function {function}: its answer exceeds the gateway's limit of {max} bytes (limits.max_response_bytes)"
            )),
            Failure::NoAnswer(e) => failed(format!("function {function} failed to answer: {e}")),
            Failure::BrokeOff(e) => {
                failed(format!("function {function}: its answer broke off: {e}"))
            }
        }
    }
}

impl Client {
    /// A client with its own pool. Fails only when the platform's TLS roots cannot be read.
    pub(crate) fn new() -> anyhow::Result<Self> {
        let mut http = HttpConnector::new();
        http.enforce_http(false); // the TLS layer takes https:// URIs
        http.set_nodelay(true);
        let tls = hyper_rustls::HttpsConnectorBuilder::new()
            .try_with_platform_verifier()
            .map_err(|e| anyhow::anyhow!("cannot set up TLS to https:// functions: {e}"))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self(Pool::builder(TokioExecutor::new()).build(tls)))
    }

    /// Send `request` and read the whole answer, at most `max` bytes, all within `deadline`.
    pub(crate) async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
        deadline: Duration,
        max: usize,
    ) -> Result<Answer, Failure> {
        let exchange = async {
            let answer = self
                .0
                .request(request)
                .await
                .map_err(|e| Failure::NoAnswer(format!("{:#}", anyhow::Error::new(e))))?;
            let (parts, body) = answer.into_parts();
            // A declared length over the cap is refused before any of it is read.
            if hyper::body::Body::size_hint(&body).lower() > max as u64 {
                return Err(Failure::TooLarge(max));
            }
            let body = Limited::new(body, max).collect().await.map_err(|e| {
                if e.is::<LengthLimitError>() {
                    Failure::TooLarge(max)
                } else {
                    Failure::BrokeOff(e.to_string())
                }
            })?;
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body: body.to_bytes(),
            })
        };
        tokio::time::timeout(deadline, exchange)
            .await
            .unwrap_or(Err(Failure::Timeout(deadline)))
    }
}

/// The part of `path` after `/fn/{name}/`, as the caller sent it (still percent-encoded): what
/// the function is asked for. Empty for `/fn/{name}/`.
pub(crate) fn rest_of(path: &str) -> &str {
    path.splitn(4, '/').nth(3).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_is_504_and_every_other_failure_502() {
        let (status, code, message) = Failure::Timeout(Duration::from_secs(3)).answer("f");
        assert_eq!(
            (status, code),
            (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")
        );
        assert_eq!(message, "function f did not answer within 3s");
        for f in [
            Failure::TooLarge(2048),
            Failure::NoAnswer("refused".into()),
            Failure::BrokeOff("reset".into()),
        ] {
            let (status, code, message) = f.answer("f");
            assert_eq!(
                (status, code),
                (StatusCode::BAD_GATEWAY, "upstream_failed"),
                "{f:?}"
            );
            assert!(message.starts_with("function f"), "{message}");
        }
    }

    #[test]
    fn the_function_gets_the_path_after_its_name_as_sent() {
        assert_eq!(rest_of("/fn/notify/send"), "send");
        assert_eq!(rest_of("/fn/notify/a/b%20c/"), "a/b%20c/");
        assert_eq!(rest_of("/fn/notify/"), "");
        assert_eq!(
            rest_of("/fn/notify/a/../b"),
            "a/../b",
            "not normalised: the function's router decides"
        );
    }
}
