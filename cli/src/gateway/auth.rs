//! Who is calling: `Authorization: Bearer <credential>`, an API key (compared by its SHA-256,
//! the only form the configuration holds) or a JWT (HS256 with a secret from the environment,
//! RS256/ES256 with keys from a JWKS file or URL, cached and refreshed; `exp`, `nbf`, `iss` and
//! `aud` checked by the `jsonwebtoken` crate). The credential itself is never logged.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind, jwk::JwkSet};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::config::{ApiKey, Auth, ConfigError, JwksSource, Jwt, Policy};

/// An authenticated caller.
#[derive(Clone, Debug)]
pub(crate) struct Principal {
    /// The key's name, or `jwt:<sub>`: in logs, metrics and rate-limit keys.
    pub(crate) name: String,
    pub(crate) policy: Policy,
    /// The value of the policy's subject claim, for a JWT that carries it.
    pub(crate) subject: Option<String>,
    /// The credential was an API key (which stays at the gateway), not a JWT.
    pub(crate) api_key: bool,
}

/// Why no principal (a 401).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AuthError {
    /// No `Authorization` header.
    Missing,
    /// A credential that is not accepted, and why (safe to show: it never quotes the credential).
    Invalid(String),
}

/// Checks credentials against the configuration.
#[derive(Debug)]
pub(crate) struct Authenticator {
    keys: Vec<ApiKey>,
    jwt: Option<JwtVerifier>,
}

#[derive(Debug)]
struct JwtVerifier {
    config: Jwt,
    hs256: Option<DecodingKey>,
    jwks: Option<JwksCache>,
}

/// The JWKS as last read, re-read when older than the refresh interval, and at once (at most
/// every [`UNKNOWN_KID_RELOAD`]) when a token names a key it lacks (a rotation).
struct JwksCache {
    source: JwksSource,
    refresh: Duration,
    client: reqwest::Client,
    keys: tokio::sync::RwLock<(Instant, JwkSet)>,
    last_forced: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

const UNKNOWN_KID_RELOAD: Duration = Duration::from_secs(30);

impl Authenticator {
    /// From `[auth]`; a JWKS file that cannot be read is a configuration error, a JWKS URL that
    /// does not answer yet is not (tokens are refused until it does).
    pub(crate) async fn new(auth: &Auth) -> Result<Authenticator, ConfigError> {
        let jwt = match &auth.jwt {
            None => None,
            Some(j) => {
                let jwks = match &j.jwks {
                    None => None,
                    Some(source) => {
                        let client = reqwest::Client::builder()
                            .timeout(Duration::from_secs(5))
                            .build()
                            .unwrap_or_default();
                        let first = match load_jwks(source, &client).await {
                            Ok(set) => set,
                            Err(why) => match source {
                                JwksSource::File(p) => {
                                    return Err(ConfigError {
                                        file: String::new(),
                                        key: "auth.jwt.jwks_file".into(),
                                        value: p.display().to_string(),
                                        reason: why,
                                    });
                                }
                                JwksSource::Url(u) => {
                                    tracing::warn!(url = %u, error = %why, "the JWKS cannot be read yet; RS256/ES256 tokens are refused until it can");
                                    JwkSet { keys: Vec::new() }
                                }
                            },
                        };
                        Some(JwksCache {
                            source: source.clone(),
                            refresh: j.jwks_refresh,
                            client,
                            keys: tokio::sync::RwLock::new((Instant::now(), first)),
                            last_forced: Mutex::new(None),
                        })
                    }
                };
                Some(JwtVerifier {
                    hs256: j.hs256_secret.as_deref().map(DecodingKey::from_secret),
                    config: j.clone(),
                    jwks,
                })
            }
        };
        Ok(Authenticator {
            keys: auth.api_keys.clone(),
            jwt,
        })
    }

    /// The caller of a request with `headers`.
    pub(crate) async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Err(AuthError::Missing);
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                AuthError::Invalid("the Authorization header is not `Bearer <credential>`".into())
            })?;
        if let Some(jwt) = &self.jwt
            && token.split('.').count() == 3
        {
            return jwt.verify(token).await;
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let key = self
            .keys
            .iter()
            .find(|k| bool::from(k.sha256.ct_eq(&digest)));
        match key {
            Some(k) => Ok(Principal {
                name: k.name.clone(),
                policy: k.policy.clone(),
                subject: None,
                api_key: true,
            }),
            None => Err(AuthError::Invalid("unknown API key".into())),
        }
    }
}

impl JwtVerifier {
    async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let invalid = |why: String| AuthError::Invalid(why);
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| invalid(format!("not a readable JWT: {e}")))?;
        let key = match header.alg {
            Algorithm::HS256 => self
                .hs256
                .clone()
                .ok_or_else(|| invalid("HS256 tokens are not accepted here".into()))?,
            Algorithm::RS256 | Algorithm::ES256 => match &self.jwks {
                Some(jwks) => jwks.key(header.kid.as_deref()).await?,
                None => {
                    return Err(invalid(format!(
                        "{:?} tokens are not accepted here",
                        header.alg
                    )));
                }
            },
            other => {
                return Err(invalid(format!(
                    "algorithm {other:?} is not accepted (HS256, RS256, ES256)"
                )));
            }
        };
        let c = &self.config;
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[c.issuer.as_str()]);
        v.set_audience(&[c.audience.as_str()]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.leeway = c.leeway.as_secs();
        v.validate_nbf = true;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v)
            .map_err(|e| invalid(describe(e.kind())))?;
        let claims = data.claims;
        let subject = c
            .policy
            .subject_claim
            .as_ref()
            .and_then(|name| claims.get(name))
            .and_then(Value::as_str)
            .map(str::to_string);
        let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("-");
        Ok(Principal {
            name: format!("jwt:{sub}"),
            policy: c.policy.clone(),
            subject,
            api_key: false,
        })
    }
}

/// Why a token failed, in words a client can act on.
fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired (exp)".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        ErrorKind::InvalidIssuer => "the token's issuer (iss) is not accepted".into(),
        ErrorKind::InvalidAudience => "the token's audience (aud) is not accepted".into(),
        ErrorKind::InvalidSignature => "the token's signature does not verify".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("the token has no {c} claim"),
        ErrorKind::InvalidAlgorithm => "the token's algorithm does not match its key".into(),
        other => format!("the token is not valid ({other:?})"),
    }
}

impl JwksCache {
    /// The key for `kid` (or the only key, for a token without one).
    async fn key(&self, kid: Option<&str>) -> Result<DecodingKey, AuthError> {
        let stale = self.keys.read().await.0.elapsed() >= self.refresh;
        if stale {
            self.reload().await;
        }
        if let Some(k) = self.find(kid).await {
            return k;
        }
        // A key we have not seen: the issuer may have rotated; look again, not too often.
        let may_force = {
            let mut last = self
                .last_forced
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let ok = last.is_none_or(|t| t.elapsed() >= UNKNOWN_KID_RELOAD);
            if ok {
                *last = Some(Instant::now());
            }
            ok
        };
        if may_force {
            self.reload().await;
            if let Some(k) = self.find(kid).await {
                return k;
            }
        }
        Err(AuthError::Invalid(match kid {
            Some(kid) => format!("no key {kid:?} in the issuer's JWKS"),
            None => "the token names no key (kid) and the JWKS has several".into(),
        }))
    }

    async fn find(&self, kid: Option<&str>) -> Option<Result<DecodingKey, AuthError>> {
        let keys = self.keys.read().await;
        let set = &keys.1;
        let jwk = match kid {
            Some(kid) => set.find(kid),
            None if set.keys.len() == 1 => set.keys.first(),
            None => None,
        }?;
        Some(
            DecodingKey::from_jwk(jwk).map_err(|e| {
                AuthError::Invalid(format!("the issuer's key cannot verify tokens: {e}"))
            }),
        )
    }

    async fn reload(&self) {
        match load_jwks(&self.source, &self.client).await {
            Ok(set) => *self.keys.write().await = (Instant::now(), set),
            Err(why) => {
                tracing::warn!(source = ?self.source, error = %why, "cannot refresh the JWKS; keeping the keys read before");
                self.keys.write().await.0 = Instant::now(); // not again at once
            }
        }
    }
}

async fn load_jwks(source: &JwksSource, client: &reqwest::Client) -> Result<JwkSet, String> {
    match source {
        JwksSource::File(path) => {
            let text = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| format!("cannot read it: {e}"))?;
            serde_json::from_str(&text)
                .map_err(|e| format!("not a JWKS ({{\"keys\": [...]}}): {e}"))
        }
        JwksSource::Url(url) => {
            let answer = client
                .get(url)
                .send()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            if !answer.status().is_success() {
                return Err(format!("GET {url} answered {}", answer.status()));
            }
            answer
                .json::<JwkSet>()
                .await
                .map_err(|e| format!("GET {url}: not a JWKS: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    async fn authenticator() -> Authenticator {
        let policy = Policy {
            functions: vec!["*".into()],
            events: vec![],
            subject_claim: Some("sub".into()),
        };
        Authenticator::new(&Auth {
            api_keys: vec![ApiKey {
                name: "k".into(),
                sha256: Sha256::digest(b"the-key").into(),
                policy: policy.clone(),
            }],
            jwt: Some(Jwt {
                issuer: "iss".into(),
                audience: "aud".into(),
                hs256_secret: Some(SECRET.to_vec()),
                jwks: None,
                jwks_refresh: Duration::from_secs(300),
                leeway: Duration::from_secs(5),
                policy,
            }),
        })
        .await
        .unwrap()
    }

    fn bearer(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    fn token(claims: &Value, alg: Algorithm) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    #[tokio::test]
    async fn keys_by_hash_and_tokens_by_their_claims() {
        let a = authenticator().await;
        assert_eq!(
            a.authenticate(&HeaderMap::new()).await.unwrap_err(),
            AuthError::Missing
        );
        assert_eq!(
            a.authenticate(&bearer("Bearer the-key"))
                .await
                .unwrap()
                .name,
            "k"
        );
        assert_eq!(
            a.authenticate(&bearer("bearer the-key"))
                .await
                .unwrap()
                .name,
            "k",
            "the scheme is case-insensitive"
        );
        assert!(matches!(
            a.authenticate(&bearer("Bearer other")).await,
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            a.authenticate(&bearer("the-key")).await,
            Err(AuthError::Invalid(_))
        ));
        let now = chrono::Utc::now().timestamp();
        let good = json!({"iss": "iss", "aud": "aud", "sub": "u-1", "exp": now + 60});
        let p = a
            .authenticate(&bearer(&format!(
                "Bearer {}",
                token(&good, Algorithm::HS256)
            )))
            .await
            .unwrap();
        assert_eq!(
            (p.name.as_str(), p.subject.as_deref()),
            ("jwt:u-1", Some("u-1"))
        );
        let reason = |claims: Value, alg| {
            let a = &a;
            async move {
                match a
                    .authenticate(&bearer(&format!("Bearer {}", token(&claims, alg))))
                    .await
                {
                    Err(AuthError::Invalid(why)) => why,
                    other => panic!("{other:?}"),
                }
            }
        };
        let mut c = good.clone();
        c["exp"] = json!(now - 30);
        assert!(reason(c, Algorithm::HS256).await.contains("expired"));
        let mut c = good.clone();
        c["exp"] = json!(now - 2);
        assert!(
            a.authenticate(&bearer(&format!("Bearer {}", token(&c, Algorithm::HS256))))
                .await
                .is_ok(),
            "within the leeway"
        );
        let mut c = good.clone();
        c["nbf"] = json!(now + 60);
        assert!(reason(c, Algorithm::HS256).await.contains("nbf"));
        let mut c = good.clone();
        c["iss"] = json!("someone");
        assert!(reason(c, Algorithm::HS256).await.contains("issuer"));
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove("exp");
        assert!(reason(c, Algorithm::HS256).await.contains("exp"));
        assert!(
            reason(good.clone(), Algorithm::HS384)
                .await
                .contains("not accepted")
        );
    }
}
