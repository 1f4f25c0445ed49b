//! Responses in the payload format 2.0 shape, byte-exact: `lambda_http`'s own encoder is not
//! used because it decodes `+json` bodies as text through `encoding_rs`, which drops a
//! byte-order mark, transcodes a declared charset and replaces invalid UTF-8, and a manifest's
//! bytes are its identity.

use base64::Engine as _;
use http_body_util::BodyExt;
use serde_json::Value;

use crate::http::error::Error;

/// Lambda's limit on a synchronous invocation's response payload (6 MB), which the encoded
/// response (JSON, body as text or base64) must fit in.
pub const RESPONSE_LIMIT: usize = 6 * 1024 * 1024;

pub(super) async fn encode_error(e: Error) -> Value {
    use axum::response::IntoResponse;
    let (parts, body) = e.into_response().into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    encode_response(parts.status, &parts.headers, &bytes).unwrap_or(Value::Null)
}

/// The payload format 2.0 response: status, headers (repeated values joined with `,`), and the
/// body as text when that is exact and no larger, else base64. Text is used only for valid
/// UTF-8 without a byte-order mark, whose JSON string escape API Gateway decodes back to the
/// same bytes; anything else (binary, a BOM, invalid UTF-8) goes base64 with
/// `isBase64Encoded: true`. `None` when the result would exceed [`RESPONSE_LIMIT`].
pub fn encode_response(
    status: http::StatusCode,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Option<Value> {
    let mut out = serde_json::Map::new();
    for name in headers.keys() {
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if !values.is_empty() {
            out.insert(name.as_str().to_owned(), Value::String(values.join(",")));
        }
    }
    let (text, base64) = body_encoding(body);
    let mut response = serde_json::json!({
        "statusCode": status.as_u16(),
        "headers": out,
        "cookies": [],
        "isBase64Encoded": base64.is_some(),
    });
    if let Some(t) = text {
        response["body"] = Value::String(t);
    } else if let Some(b) = base64 {
        response["body"] = Value::String(b);
    }
    let size = serde_json::to_vec(&response).map_or(usize::MAX, |v| v.len());
    (size <= RESPONSE_LIMIT).then_some(response)
}

/// `(Some(text), None)` or `(None, Some(base64))`; both `None` for an empty body.
fn body_encoding(body: &[u8]) -> (Option<String>, Option<String>) {
    if body.is_empty() {
        return (None, None);
    }
    let b64_len = body.len().div_ceil(3) * 4;
    if let Ok(text) = std::str::from_utf8(body)
        && !text.starts_with('\u{feff}')
    {
        // The JSON escape of the text is what travels; choose it only if not larger.
        let escaped = serde_json::to_string(text)
            .map(|s| s.len())
            .unwrap_or(usize::MAX);
        if escaped <= b64_len + 2 {
            return (Some(text.to_owned()), None);
        }
    }
    (
        None,
        Some(base64::engine::general_purpose::STANDARD.encode(body)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_text_only_when_exact() {
        let (t, b) = body_encoding(b"{\"a\":1}");
        assert_eq!(t.as_deref(), Some("{\"a\":1}"));
        assert!(b.is_none());
        // A byte-order mark, invalid UTF-8, binary: base64.
        for odd in [
            &b"\xef\xbb\xbf{\"a\":1}"[..],
            &b"{\"a\":\"\xff\"}"[..],
            &[0u8, 1, 2, 3][..],
        ] {
            let (t, b) = body_encoding(odd);
            assert!(t.is_none());
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b.unwrap())
                .unwrap();
            assert_eq!(decoded, odd);
        }
        // Text whose JSON escape is larger than base64 goes base64.
        let quotes = vec![b'"'; 3000];
        assert!(body_encoding(&quotes).0.is_none());
    }

    #[test]
    fn the_payload_limit_is_enforced() {
        let big = vec![b'a'; RESPONSE_LIMIT];
        assert!(encode_response(http::StatusCode::OK, &http::HeaderMap::new(), &big).is_none());
        let ok = vec![b'a'; 4 * 1024 * 1024];
        assert!(encode_response(http::StatusCode::OK, &http::HeaderMap::new(), &ok).is_some());
    }
}
