//! The gateway's configuration file (TOML): who may call what, and the limits that keep one
//! client from starving the others. Read once at start; every mistake is reported with its key,
//! its value and why, and the process exits 64.
//!
//! ```toml
//! [[auth.api_keys]]                 # Authorization: Bearer <key>; only its SHA-256 is here
//! name = "categorize-client"
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! functions = ["categorize"]        # /fn/{name} and /async/{name}; globs: "*", "fin*"
//! events = []                       # event types on POST /events; globs: "finance.transaction.*"
//!
//! [auth.jwt]                        # Authorization: Bearer <JWT>
//! issuer = "https://id.example.com/"
//! audience = "zerofn"
//! hs256_secret_env = "ZEROFN_JWT_SECRET"   # HS256: the secret comes from this variable
//! jwks_file = "/etc/zerofn/jwks.json"      # RS256/ES256: keys from a file, or
//! # jwks_url = "https://id.example.com/.well-known/jwks.json"
//! jwks_refresh = "5m"
//! leeway = "30s"                    # on exp and nbf, at most 5m
//! functions = ["tasks", "ledger"]
//! events = ["finance.transaction.*", "todo.task.*"]
//! subject_claim = "sub"             # an event's subject must equal this claim
//!
//! [limits]
//! per_credential = { per_second = 50, burst = 100 }
//! per_address = { per_second = 20, burst = 40 }
//! max_batch = 100                   # events in one POST /events
//! trust_forwarded = false           # take the client address from X-Forwarded-For
//! max_held = 1000                   # requests held for one function while it starts
//! max_response_bytes = 10485760     # a function's answer, passed on
//! header_timeout = "10s"            # a client's request headers
//! body_timeout = "30s"              # a client's request body
//! dead_letters = { per_second = 20, burst = 100 }   # refused requests recorded, gateway-wide
//! dead_letter_bytes = 65536         # of each refused body
//!
//! [cors.tasks]                      # a browser app on another origin may call /fn/tasks/...
//! allow_origins = ["https://todo.example.com"]
//! allow_methods = ["GET", "POST", "PATCH", "DELETE"]   # default GET POST PUT PATCH DELETE
//! allow_headers = ["authorization", "content-type"]    # default + idempotency-key, traceparent
//! max_age = "10m"
//! allow_credentials = false
//! ```

use std::{collections::BTreeMap, path::Path, time::Duration};

use serde::Deserialize;

pub(crate) use super::cors::Cors;

/// A configuration that cannot be used: the key, its value and why (exit 64).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid gateway configuration {file}: {key} = {value}: {reason}")]
pub(crate) struct ConfigError {
    pub(crate) file: String,
    pub(crate) key: String,
    pub(crate) value: String,
    pub(crate) reason: String,
}

/// The checked configuration.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct GatewayConfig {
    /// `None`: no `[auth]` — every caller may call everything (only with `--insecure-open`,
    /// or `zerofn dev` on 127.0.0.1).
    pub(crate) auth: Option<Auth>,
    pub(crate) limits: Limits,
    /// `[cors.<function>]`: functions a browser on another origin may call.
    pub(crate) cors: BTreeMap<String, Cors>,
}

/// `[auth]`: the credentials the gateway accepts.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Auth {
    pub(crate) api_keys: Vec<ApiKey>,
    pub(crate) jwt: Option<Jwt>,
}

/// One API key: its hash, its name (in logs and metrics) and what it may call.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ApiKey {
    pub(crate) name: String,
    pub(crate) sha256: [u8; 32],
    pub(crate) policy: Policy,
}

/// `[auth.jwt]`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Jwt {
    pub(crate) issuer: String,
    pub(crate) audience: String,
    /// The HS256 secret, read from the variable the file names.
    pub(crate) hs256_secret: Option<Vec<u8>>,
    pub(crate) jwks: Option<JwksSource>,
    pub(crate) jwks_refresh: Duration,
    pub(crate) leeway: Duration,
    pub(crate) policy: Policy,
}

/// Where the RS256/ES256 keys are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum JwksSource {
    File(std::path::PathBuf),
    Url(String),
}

/// What a credential may call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Policy {
    /// Globs over function names (`/fn/{name}`, `/async/{name}`).
    pub(crate) functions: Vec<String>,
    /// Globs over event types (`POST /events`).
    pub(crate) events: Vec<String>,
    /// A claim every posted event's `subject` must equal (JWTs only).
    pub(crate) subject_claim: Option<String>,
}

/// A token bucket's parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Rate {
    pub(crate) per_second: f64,
    pub(crate) burst: f64,
}

/// `[limits]`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Limits {
    pub(crate) per_credential: Rate,
    pub(crate) per_address: Rate,
    pub(crate) max_batch: usize,
    pub(crate) trust_forwarded: bool,
    /// Requests held for one function while it has no ready replica (503 past it).
    pub(crate) max_held: usize,
    /// Largest answer of a function the gateway passes on (502 past it).
    pub(crate) max_response_bytes: usize,
    /// Longest a client may take to send its request headers (the connection is closed).
    pub(crate) header_timeout: Duration,
    /// Longest a client may take to send its request body (408).
    pub(crate) body_timeout: Duration,
    /// Refused requests recorded on `deadletter.gateway`, for the whole gateway (past it they
    /// are refused but not recorded).
    pub(crate) dead_letters: Rate,
    /// How much of a refused request's body is recorded.
    pub(crate) dead_letter_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_credential: Rate {
                per_second: 100.0,
                burst: 200.0,
            },
            per_address: Rate {
                per_second: 50.0,
                burst: 100.0,
            },
            max_batch: 100,
            trust_forwarded: false,
            max_held: 1000,
            max_response_bytes: 10 << 20,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            dead_letters: Rate {
                per_second: 20.0,
                burst: 100.0,
            },
            dead_letter_bytes: 64 << 10,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    auth: Option<RawAuth>,
    limits: Option<RawLimits>,
    #[serde(default)]
    cors: BTreeMap<String, RawCors>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCors {
    allow_origins: Vec<String>,
    allow_methods: Option<Vec<String>>,
    allow_headers: Option<Vec<String>>,
    max_age: Option<String>,
    #[serde(default)]
    allow_credentials: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(default)]
    api_keys: Vec<RawApiKey>,
    jwt: Option<RawJwt>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiKey {
    name: String,
    sha256: String,
    #[serde(default)]
    functions: Vec<String>,
    #[serde(default)]
    events: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    issuer: String,
    audience: String,
    hs256_secret_env: Option<String>,
    jwks_file: Option<String>,
    jwks_url: Option<String>,
    jwks_refresh: Option<String>,
    leeway: Option<String>,
    #[serde(default)]
    functions: Vec<String>,
    #[serde(default)]
    events: Vec<String>,
    subject_claim: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    per_credential: Option<RawRate>,
    per_address: Option<RawRate>,
    max_batch: Option<usize>,
    #[serde(default)]
    trust_forwarded: bool,
    max_held: Option<usize>,
    max_response_bytes: Option<usize>,
    header_timeout: Option<String>,
    body_timeout: Option<String>,
    dead_letters: Option<RawRate>,
    dead_letter_bytes: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    per_second: f64,
    burst: Option<f64>,
}

/// The longest clock skew a JWT's `exp`/`nbf` may be given.
const MAX_LEEWAY: Duration = Duration::from_secs(300);

impl GatewayConfig {
    /// Read and check `path`; `env` reads the variables the file names (the HS256 secret).
    pub(crate) fn load(
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<GatewayConfig, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: "(file)".into(),
            value: file.clone(),
            reason: format!("cannot read it: {e}"),
        })?;
        GatewayConfig::parse(&text, env).map_err(|mut e| {
            e.file = file;
            e
        })
    }

    /// Check the text of a configuration file.
    pub(crate) fn parse(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<GatewayConfig, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            bad(
                "(file)",
                &"",
                &e.message().trim_end_matches('\n').replace('\n', " "),
            )
            .with_span(text, e.span())
        })?;
        let limits = match raw.limits {
            None => Limits::default(),
            Some(l) => {
                let d = Limits::default();
                let rate = |key: &str, r: Option<RawRate>, default: Rate| match r {
                    None => Ok(default),
                    Some(r) if !(r.per_second > 0.0 && r.per_second.is_finite()) => Err(bad(
                        &format!("limits.{key}.per_second"),
                        &r.per_second,
                        "must be a number above 0",
                    )),
                    Some(r) => {
                        let burst = r.burst.unwrap_or(r.per_second * 2.0);
                        if burst < 1.0 || !burst.is_finite() {
                            return Err(bad(
                                &format!("limits.{key}.burst"),
                                &burst,
                                "must be at least 1 (requests let through at once)",
                            ));
                        }
                        Ok(Rate {
                            per_second: r.per_second,
                            burst,
                        })
                    }
                };
                let max_batch = l.max_batch.unwrap_or(d.max_batch);
                if !(1..=10_000).contains(&max_batch) {
                    return Err(bad("limits.max_batch", &max_batch, "must be 1 to 10000"));
                }
                let max_held = l.max_held.unwrap_or(d.max_held);
                if max_held == 0 {
                    return Err(bad("limits.max_held", &0, "must be at least 1"));
                }
                let max_response_bytes = l.max_response_bytes.unwrap_or(d.max_response_bytes);
                if max_response_bytes < 1024 {
                    return Err(bad(
                        "limits.max_response_bytes",
                        &max_response_bytes,
                        "must be at least 1024",
                    ));
                }
                Limits {
                    per_credential: rate("per_credential", l.per_credential, d.per_credential)?,
                    per_address: rate("per_address", l.per_address, d.per_address)?,
                    max_batch,
                    trust_forwarded: l.trust_forwarded,
                    max_held,
                    max_response_bytes,
                    header_timeout: timeout(
                        "limits.header_timeout",
                        l.header_timeout,
                        d.header_timeout,
                    )?,
                    body_timeout: timeout("limits.body_timeout", l.body_timeout, d.body_timeout)?,
                    dead_letters: rate("dead_letters", l.dead_letters, d.dead_letters)?,
                    dead_letter_bytes: match l.dead_letter_bytes {
                        None => d.dead_letter_bytes,
                        Some(n) if n >= 256 => n,
                        Some(n) => {
                            return Err(bad(
                                "limits.dead_letter_bytes",
                                &n,
                                "must be at least 256",
                            ));
                        }
                    },
                }
            }
        };
        let mut cors = BTreeMap::new();
        for (function, c) in raw.cors {
            let key = |field: &str| format!("cors.{function}.{field}");
            if c.allow_origins.is_empty() {
                return Err(bad(
                    &key("allow_origins"),
                    &"[]",
                    "must list at least one origin",
                ));
            }
            for o in &c.allow_origins {
                let exact = reqwest::Url::parse(o).is_ok_and(|u| {
                    matches!(u.scheme(), "http" | "https") && u.path() == "/" && !o.ends_with('/')
                });
                if o != "*" && !exact {
                    return Err(bad(
                        &key("allow_origins"),
                        o,
                        "must be an origin such as https://app.example.com (scheme, host, port; no path), or *",
                    ));
                }
                if o == "*" && c.allow_credentials {
                    return Err(bad(
                        &key("allow_origins"),
                        o,
                        "* cannot go with allow_credentials = true: list the origins",
                    ));
                }
            }
            let mut allow_methods = Vec::new();
            for m in c.allow_methods.unwrap_or_else(|| {
                ["GET", "POST", "PUT", "PATCH", "DELETE"]
                    .map(String::from)
                    .to_vec()
            }) {
                match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                    Ok(method) => allow_methods.push(method),
                    Err(_) => return Err(bad(&key("allow_methods"), &m, "is not an HTTP method")),
                }
            }
            let allow_headers = c
                .allow_headers
                .unwrap_or_else(|| {
                    [
                        "authorization",
                        "content-type",
                        "idempotency-key",
                        "traceparent",
                    ]
                    .map(String::from)
                    .to_vec()
                })
                .into_iter()
                .map(|h| h.to_ascii_lowercase())
                .collect();
            let max_age = match c.max_age {
                None => Duration::from_secs(600),
                Some(v) => zerofn::config::parse_duration(&v)
                    .map_err(|why| bad(&key("max_age"), &v, &why))?,
            };
            cors.insert(
                function,
                Cors {
                    allow_origins: c.allow_origins,
                    allow_methods,
                    allow_headers,
                    max_age,
                    allow_credentials: c.allow_credentials,
                },
            );
        }
        let Some(a) = raw.auth else {
            return Ok(GatewayConfig {
                auth: None,
                limits,
                cors,
            });
        };
        let mut api_keys: Vec<ApiKey> = Vec::new();
        for (i, k) in a.api_keys.into_iter().enumerate() {
            let key = |field: &str| format!("auth.api_keys[{i}].{field}");
            if k.name.trim().is_empty() {
                return Err(bad(
                    &key("name"),
                    &k.name,
                    "must name the key (logs and metrics show it)",
                ));
            }
            if api_keys.iter().any(|o| o.name == k.name) {
                return Err(bad(&key("name"), &k.name, "is used twice"));
            }
            let sha256: [u8; 32] = hex::decode(k.sha256.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| {
                    bad(
                        &key("sha256"),
                        &k.sha256,
                        "must be the 64 hex digits of the key's SHA-256 (printf %s \"$KEY\" | sha256sum); the key itself never goes in this file",
                    )
                })?;
            if api_keys.iter().any(|o| o.sha256 == sha256) {
                return Err(bad(
                    &key("sha256"),
                    &k.sha256,
                    "is the hash of another key too",
                ));
            }
            let policy = policy(&key(""), k.functions, k.events, None)?;
            api_keys.push(ApiKey {
                name: k.name,
                sha256,
                policy,
            });
        }
        let jwt = match a.jwt {
            None => None,
            Some(j) => {
                if j.issuer.trim().is_empty() {
                    return Err(bad(
                        "auth.jwt.issuer",
                        &j.issuer,
                        "must be the issuer tokens carry in iss",
                    ));
                }
                if j.audience.trim().is_empty() {
                    return Err(bad(
                        "auth.jwt.audience",
                        &j.audience,
                        "must be the audience tokens carry in aud",
                    ));
                }
                let hs256_secret = match &j.hs256_secret_env {
                    None => None,
                    Some(var) => match env(var) {
                        Some(s) if s.len() >= 32 => Some(s.into_bytes()),
                        Some(_) => {
                            return Err(bad(
                                "auth.jwt.hs256_secret_env",
                                var,
                                "the secret in that variable is shorter than 32 bytes (HS256 needs at least 256 bits)",
                            ));
                        }
                        None => {
                            return Err(bad(
                                "auth.jwt.hs256_secret_env",
                                var,
                                "that variable is not set",
                            ));
                        }
                    },
                };
                let jwks = match (j.jwks_file, j.jwks_url) {
                    (Some(_), Some(u)) => {
                        return Err(bad(
                            "auth.jwt.jwks_url",
                            &u,
                            "give jwks_file or jwks_url, not both",
                        ));
                    }
                    (Some(f), None) => Some(JwksSource::File(f.into())),
                    (None, Some(u)) => {
                        let ok = reqwest::Url::parse(&u)
                            .is_ok_and(|p| matches!(p.scheme(), "https" | "http"));
                        if !ok {
                            return Err(bad("auth.jwt.jwks_url", &u, "must be an http(s) URL"));
                        }
                        Some(JwksSource::Url(u))
                    }
                    (None, None) => None,
                };
                if hs256_secret.is_none() && jwks.is_none() {
                    return Err(bad(
                        "auth.jwt",
                        &"(no keys)",
                        "needs hs256_secret_env (HS256) or jwks_file / jwks_url (RS256, ES256)",
                    ));
                }
                let leeway = duration("auth.jwt.leeway", j.leeway, Duration::from_secs(30))?;
                if leeway > MAX_LEEWAY {
                    return Err(bad(
                        "auth.jwt.leeway",
                        &format!("{}s", leeway.as_secs()),
                        "must be at most 5m",
                    ));
                }
                let jwks_refresh = duration(
                    "auth.jwt.jwks_refresh",
                    j.jwks_refresh,
                    Duration::from_secs(300),
                )?;
                if jwks_refresh < Duration::from_secs(10) {
                    return Err(bad(
                        "auth.jwt.jwks_refresh",
                        &format!("{}s", jwks_refresh.as_secs()),
                        "must be at least 10s",
                    ));
                }
                let policy = policy("auth.jwt.", j.functions, j.events, j.subject_claim)?;
                Some(Jwt {
                    issuer: j.issuer,
                    audience: j.audience,
                    hs256_secret,
                    jwks,
                    jwks_refresh,
                    leeway,
                    policy,
                })
            }
        };
        if api_keys.is_empty() && jwt.is_none() {
            return Err(bad(
                "auth",
                &"(empty)",
                "names no credential: add [[auth.api_keys]] or [auth.jwt] (an open gateway is a flag, not an empty section)",
            ));
        }
        Ok(GatewayConfig {
            auth: Some(Auth { api_keys, jwt }),
            limits,
            cors,
        })
    }
}

/// A mistake in the file: its key, its value and why (the file's name is added by `load`).
fn bad(key: &str, value: &dyn std::fmt::Display, reason: &str) -> ConfigError {
    ConfigError {
        file: String::new(),
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// A duration key (`30s`, `5m`), or `default` when absent.
fn duration(key: &str, v: Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(v) => zerofn::config::parse_duration(&v).map_err(|why| bad(key, &v, &why)),
    }
}

/// A timeout: a duration above zero.
fn timeout(key: &str, v: Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    let text = v.clone().unwrap_or_default();
    match duration(key, v, default)? {
        d if d.is_zero() => Err(bad(key, &text, "must be above zero")),
        d => Ok(d),
    }
}

/// A credential's policy, its globs checked (`prefix` ends with the separator: `auth.jwt.`).
fn policy(
    prefix: &str,
    functions: Vec<String>,
    events: Vec<String>,
    subject_claim: Option<String>,
) -> Result<Policy, ConfigError> {
    for (field, globs) in [("functions", &functions), ("events", &events)] {
        for (i, g) in globs.iter().enumerate() {
            let ok = !g.is_empty()
                && g.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-*".contains(&b));
            if !ok {
                return Err(bad(
                    &format!("{prefix}{field}[{i}]"),
                    g,
                    "must be a name or a glob of letters, digits, . _ - and *",
                ));
            }
        }
    }
    if let Some(c) = &subject_claim
        && c.trim().is_empty()
    {
        return Err(bad(
            &format!("{prefix}subject_claim"),
            c,
            "must name a claim, e.g. sub",
        ));
    }
    Ok(Policy {
        functions,
        events,
        subject_claim,
    })
}

impl ConfigError {
    /// Name the line and column of a syntax error.
    fn with_span(mut self, text: &str, span: Option<std::ops::Range<usize>>) -> Self {
        if let Some(span) = span {
            let line = text[..span.start.min(text.len())].lines().count().max(1);
            self.value = format!("(line {line})");
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn parse(text: &str) -> Result<GatewayConfig, ConfigError> {
        GatewayConfig::parse(text, |v| (v == "JWT_SECRET").then(|| SECRET.to_string()))
    }

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn a_full_file_is_read() {
        let c = parse(&format!(
            r#"
            [[auth.api_keys]]
            name = "categorizer"
            sha256 = "{HASH}"
            functions = ["categorize"]

            [auth.jwt]
            issuer = "https://id.test/"
            audience = "zerofn"
            hs256_secret_env = "JWT_SECRET"
            jwks_url = "https://id.test/jwks.json"
            events = ["finance.transaction.*"]
            subject_claim = "sub"

            [limits]
            per_credential = {{ per_second = 5 }}
            max_batch = 10
            "#
        ))
        .unwrap();
        let auth = c.auth.unwrap();
        assert_eq!(auth.api_keys[0].policy.functions, vec!["categorize"]);
        let jwt = auth.jwt.unwrap();
        assert_eq!(jwt.hs256_secret.as_deref(), Some(SECRET.as_bytes()));
        assert_eq!(jwt.leeway, Duration::from_secs(30));
        assert_eq!(jwt.policy.subject_claim.as_deref(), Some("sub"));
        assert_eq!(
            c.limits.per_credential,
            Rate {
                per_second: 5.0,
                burst: 10.0
            }
        );
        assert_eq!(c.limits.max_batch, 10);
        assert_eq!(c.limits.per_address, Limits::default().per_address);
    }

    #[test]
    fn every_mistake_names_its_key_and_why() {
        let key =
            |extra: &str| format!("[[auth.api_keys]]\nname = \"k\"\nsha256 = \"{HASH}\"\n{extra}");
        for (text, k, why) in [
            ("[auth]\n".to_string(), "auth", "names no credential"),
            ("[[auth.api_keys]]\nname = \"k\"\nsha256 = \"abc\"\n".into(), "auth.api_keys[0].sha256", "64 hex digits"),
            (key("functions = [\"a b\"]"), "auth.api_keys[0].functions[0]", "a glob"),
            (format!("{}\n{}", key(""), key("").replace("name = \"k\"", "name = \"j\"")), "auth.api_keys[1].sha256", "another key"),
            (key("colour = 1"), "(file)", "unknown field"),
            ("[auth.jwt]\nissuer = \"i\"\naudience = \"a\"\n".into(), "auth.jwt", "needs hs256_secret_env"),
            ("[auth.jwt]\nissuer = \"i\"\naudience = \"a\"\nhs256_secret_env = \"NOPE\"\n".into(), "auth.jwt.hs256_secret_env", "not set"),
            ("[auth.jwt]\nissuer = \"i\"\naudience = \"a\"\njwks_url = \"ftp://x\"\n".into(), "auth.jwt.jwks_url", "http(s)"),
            ("[auth.jwt]\nissuer = \"i\"\naudience = \"a\"\njwks_file = \"f\"\nleeway = \"1h\"\n".into(), "auth.jwt.leeway", "at most 5m"),
            ("[limits]\nper_address = { per_second = 0 }\n".into(), "limits.per_address.per_second", "above 0"),
            ("[limits]\nmax_batch = 0\n".into(), "limits.max_batch", "1 to 10000"),
            ("[cors.tasks]\nallow_origins = [\"https://a.test/app\"]\n".into(), "cors.tasks.allow_origins", "no path"),
            ("[cors.tasks]\nallow_origins = [\"*\"]\nallow_credentials = true\n".into(), "cors.tasks.allow_origins", "list the origins"),
            ("[cors.tasks]\nallow_origins = [\"https://a.test\"]\nallow_methods = [\"G E T\"]\n".into(), "cors.tasks.allow_methods", "HTTP method"),
        ] {
            let e = parse(&text).unwrap_err();
            assert_eq!(e.key, k, "{text}: {e}");
            assert!(e.reason.contains(why), "{text}: {e}");
        }
        let short = GatewayConfig::parse(
            "[auth.jwt]\nissuer = \"i\"\naudience = \"a\"\nhs256_secret_env = \"S\"\n",
            |_| Some("short".into()),
        )
        .unwrap_err();
        assert!(short.reason.contains("32 bytes"), "{short}");
        assert!(
            !short.to_string().contains("short\""),
            "the secret is never printed: {short}"
        );
    }

    #[test]
    fn the_example_the_charts_render_is_valid() {
        let c = parse(include_str!("../../../helm/testdata/gateway.toml")).unwrap();
        let auth = c.auth.unwrap();
        assert_eq!(auth.api_keys.len(), 2);
        assert!(auth.jwt.is_some());
    }

    #[test]
    fn no_auth_section_is_an_open_gateway_with_limits() {
        let c = parse("[limits]\nmax_batch = 5\n").unwrap();
        assert!(c.auth.is_none());
        assert_eq!(c.limits.max_batch, 5);
    }
}
