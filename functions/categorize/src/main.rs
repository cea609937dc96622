//! categorize: `POST /categorize {"description": "...", "amount_minor": -1250}` answers the
//! budget category a transaction most likely belongs to, from keyword rules. An HTTP function:
//! plain axum, served by the runtime (probes, metrics, traces, drain) and reached through the
//! gateway at `/fn/categorize/categorize`.

use axum::{Json, Router, http::StatusCode, routing::post};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
struct Transaction {
    description: String,
    amount_minor: i64,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
struct Suggestion {
    category: &'static str,
    matched: Option<&'static str>,
}

/// Keyword → category, first match wins (lower-case substrings of the description).
const RULES: &[(&str, &str)] = &[
    ("salary", "income"),
    ("payroll", "income"),
    ("rent", "housing"),
    ("mortgage", "housing"),
    ("grocer", "groceries"),
    ("supermarket", "groceries"),
    ("uber", "transport"),
    ("train", "transport"),
    ("fuel", "transport"),
    ("restaurant", "dining"),
    ("cafe", "dining"),
    ("pharmacy", "health"),
    ("netflix", "subscriptions"),
    ("spotify", "subscriptions"),
];

fn categorize(t: &Transaction) -> Suggestion {
    let description = t.description.to_lowercase();
    match RULES.iter().find(|(k, _)| description.contains(k)) {
        Some((k, c)) => Suggestion {
            category: c,
            matched: Some(k),
        },
        None if t.amount_minor > 0 => Suggestion {
            category: "income",
            matched: None,
        },
        None => Suggestion {
            category: "uncategorized",
            matched: None,
        },
    }
}

async fn handle(Json(t): Json<Transaction>) -> Result<Json<Suggestion>, (StatusCode, String)> {
    if t.description.trim().is_empty() {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            "description must not be empty".into(),
        ));
    }
    Ok(Json(categorize(&t)))
}

fn routes(_db: Option<sqlx::AnyPool>) -> Router {
    Router::new().route("/categorize", post(handle))
}

#[tokio::main]
async fn main() -> Result<(), zerofn::Error> {
    zerofn::serve(zerofn::manifest!().routes(routes)).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn post(body: &str) -> (StatusCode, String) {
        let response = routes(None)
            .oneshot(
                axum::http::Request::post("/categorize")
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(body.to_string()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn rules_then_sign() {
        let (s, b) = post(r#"{"description":"ACME SUPERMARKET 0042","amount_minor":-1250}"#).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(b, r#"{"category":"groceries","matched":"supermarket"}"#);
        let (_, b) = post(r#"{"description":"transfer from J. Doe","amount_minor":5000}"#).await;
        assert_eq!(b, r#"{"category":"income","matched":null}"#);
        let (_, b) = post(r#"{"description":"hardware store","amount_minor":-900}"#).await;
        assert_eq!(b, r#"{"category":"uncategorized","matched":null}"#);
    }

    #[tokio::test]
    async fn bad_input_is_a_clear_4xx() {
        assert_eq!(
            post(r#"{"description":"  ","amount_minor":1}"#).await.0,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            post(r#"{"amount_minor":1}"#).await.0,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(post("not json").await.0, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn manifest_is_an_http_function() {
        let m = zerofn::manifest!().parse().unwrap();
        assert!(m.subscriptions.is_empty());
        assert_eq!(m.http.unwrap().concurrency, 20);
    }
}
