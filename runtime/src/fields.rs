//! Request bodies of HTTP functions, field by field: every refusal is a `422 invalid_field`
//! whose message starts with the field's name, a body that is not a JSON object a
//! `400 invalid_json`, and a field the request does not have is refused too.

use axum::http::StatusCode;
use serde_json::{Map, Value};

use crate::WriteError;

/// The `key=value` pairs of a query string, in order, percent-decoded (`+` is a space), so a
/// key may repeat (`tag=a&tag=b`), which `axum::extract::Query` cannot express.
pub fn query_pairs(raw: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        crate::codec::percent_decode(s.as_bytes()).unwrap_or(s)
    };
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// A `422 invalid_field`: `"{field}: {why}"`.
pub fn invalid(field: &str, why: impl std::fmt::Display) -> WriteError {
    WriteError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: "invalid_field",
        message: format!("{field}: {why}"),
    }
}

/// A JSON object's fields, taken one by one; [`Fields::no_other_fields`] refuses what is left.
///
/// ```
/// use zerofn::Fields;
///
/// let mut f = Fields::parse(br#"{"title": "Pay rent", "limit": 0}"#).unwrap();
/// assert_eq!(f.required_str("title").unwrap(), "Pay rent");
/// let e = f.no_other_fields().unwrap_err();
/// assert_eq!((e.status.as_u16(), e.message.as_str()), (422, "limit: is not a field of this request"));
/// ```
#[derive(Debug)]
pub struct Fields(Map<String, Value>);

impl Fields {
    /// The fields of `body`, which must be a JSON object.
    pub fn parse(body: &[u8]) -> Result<Fields, WriteError> {
        let refuse = |message: String| WriteError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_json",
            message,
        };
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => Ok(Fields(m)),
            Ok(_) => Err(refuse("the body must be a JSON object".into())),
            Err(e) => Err(refuse(format!("the body is not JSON: {e}"))),
        }
    }

    /// Field `name` as given, `null` included (absent: `None`).
    pub fn take(&mut self, name: &str) -> Option<Value> {
        self.0.remove(name)
    }

    /// A string field; absent or `null`: `None`.
    pub fn optional_str(&mut self, name: &str) -> Result<Option<String>, WriteError> {
        match self.take(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(invalid(name, format!("must be a string, got {other}"))),
        }
    }

    /// A string field that must be there.
    pub fn required_str(&mut self, name: &str) -> Result<String, WriteError> {
        self.optional_str(name)?
            .ok_or_else(|| invalid(name, "is required"))
    }

    /// A whole-number field; absent or `null`: `None`.
    pub fn optional_int(&mut self, name: &str) -> Result<Option<i64>, WriteError> {
        match self.take(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| invalid(name, format!("must be a whole number, got {n}"))),
            Some(other) => Err(invalid(name, format!("must be an integer, got {other}"))),
        }
    }

    /// A whole-number field that must be there.
    pub fn required_int(&mut self, name: &str) -> Result<i64, WriteError> {
        self.optional_int(name)?
            .ok_or_else(|| invalid(name, "is required"))
    }

    /// Refuse the first field nobody took.
    pub fn no_other_fields(self) -> Result<(), WriteError> {
        match self.0.keys().next() {
            None => Ok(()),
            Some(k) => Err(invalid(k, "is not a field of this request")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_decoded() {
        assert_eq!(
            query_pairs("q=100%25+cotton&tag=a&tag=b&x"),
            vec![
                ("q".into(), "100% cotton".into()),
                ("tag".into(), "a".into()),
                ("tag".into(), "b".into()),
                ("x".into(), String::new())
            ]
        );
        assert_eq!(query_pairs("q=%zz%4"), vec![("q".into(), "%zz%4".into())]);
    }
}
