//! Cross-origin requests to a function (`[cors.<function>]` in the gateway's configuration): the
//! gateway answers the browser's preflight itself (before any credential is asked for: a
//! preflight carries none) and marks the answers of allowed origins. Pure: headers in, headers out.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, header};

/// One function's CORS policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cors {
    /// Exact origins (`https://app.example.com`), or `*` for any (never with credentials).
    pub(crate) allow_origins: Vec<String>,
    pub(crate) allow_methods: Vec<Method>,
    /// Lower-case request header names a browser may send.
    pub(crate) allow_headers: Vec<String>,
    pub(crate) max_age: Duration,
    pub(crate) allow_credentials: bool,
}

impl Cors {
    fn origin_allowed(&self, origin: &str) -> bool {
        self.allow_origins.iter().any(|o| o == "*" || o == origin)
    }

    /// The answer to a preflight (`OPTIONS` with `Access-Control-Request-Method`): the headers of
    /// a 204, or why it is refused (a 403).
    pub(crate) fn preflight(&self, request: &HeaderMap) -> Result<HeaderMap, String> {
        let origin = request
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .ok_or("a preflight without an Origin")?;
        if !self.origin_allowed(origin) {
            return Err(format!("origin {origin} is not allowed for this function"));
        }
        let method = request
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|v| Method::from_bytes(v.as_bytes()).ok())
            .ok_or("a preflight without a valid Access-Control-Request-Method")?;
        if !self.allow_methods.contains(&method) {
            return Err(format!("method {method} is not allowed for this function"));
        }
        let asked = super::header_tokens(request, header::ACCESS_CONTROL_REQUEST_HEADERS);
        if let Some(h) = asked.iter().find(|h| !self.allow_headers.contains(h)) {
            return Err(format!(
                "request header {h} is not allowed for this function"
            ));
        }
        let mut out = self.actual(origin);
        let methods: Vec<&str> = self.allow_methods.iter().map(Method::as_str).collect();
        let set = |out: &mut HeaderMap, name, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                out.insert(name, v);
            }
        };
        set(
            &mut out,
            header::ACCESS_CONTROL_ALLOW_METHODS,
            methods.join(", "),
        );
        if !asked.is_empty() {
            set(
                &mut out,
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                asked.join(", "),
            );
        }
        set(
            &mut out,
            header::ACCESS_CONTROL_MAX_AGE,
            self.max_age.as_secs().to_string(),
        );
        Ok(out)
    }

    /// The headers an answer to `origin` carries (none when it is not allowed: the browser then
    /// withholds the answer from the page).
    pub(crate) fn actual(&self, origin: &str) -> HeaderMap {
        let mut out = HeaderMap::new();
        out.insert(header::VARY, HeaderValue::from_static("Origin"));
        if !self.origin_allowed(origin) {
            return out;
        }
        if let Ok(v) = HeaderValue::from_str(origin) {
            out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        }
        if self.allow_credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors() -> Cors {
        Cors {
            allow_origins: vec!["https://app.test".into()],
            allow_methods: vec![Method::GET, Method::POST],
            allow_headers: vec!["authorization".into(), "content-type".into()],
            max_age: Duration::from_secs(600),
            allow_credentials: false,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn a_preflight_is_answered_for_what_the_policy_lists() {
        let ok = cors()
            .preflight(&headers(&[
                ("origin", "https://app.test"),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "Content-Type, Authorization",
                ),
            ]))
            .unwrap();
        assert_eq!(ok["access-control-allow-origin"], "https://app.test");
        assert_eq!(ok["access-control-allow-methods"], "GET, POST");
        assert_eq!(
            ok["access-control-allow-headers"],
            "content-type, authorization"
        );
        assert_eq!(ok["access-control-max-age"], "600");
        assert_eq!(ok["vary"], "Origin");
        for (bad, why) in [
            (
                headers(&[
                    ("origin", "https://evil.test"),
                    ("access-control-request-method", "GET"),
                ]),
                "origin",
            ),
            (
                headers(&[
                    ("origin", "https://app.test"),
                    ("access-control-request-method", "DELETE"),
                ]),
                "method DELETE",
            ),
            (
                headers(&[
                    ("origin", "https://app.test"),
                    ("access-control-request-method", "GET"),
                    ("access-control-request-headers", "x-secret"),
                ]),
                "x-secret",
            ),
            (
                headers(&[("access-control-request-method", "GET")]),
                "Origin",
            ),
        ] {
            assert!(cors().preflight(&bad).unwrap_err().contains(why), "{why}");
        }
    }

    #[test]
    fn answers_name_only_an_allowed_origin() {
        let c = cors();
        assert_eq!(
            c.actual("https://app.test")["access-control-allow-origin"],
            "https://app.test"
        );
        let other = c.actual("https://evil.test");
        assert!(!other.contains_key("access-control-allow-origin"));
        assert_eq!(other["vary"], "Origin");
        let with = Cors {
            allow_credentials: true,
            ..cors()
        };
        assert_eq!(
            with.actual("https://app.test")["access-control-allow-credentials"],
            "true"
        );
    }
}
