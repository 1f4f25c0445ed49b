//! Client authentication at the edge: requests without valid credentials get 401 and the
//! challenge that starts the registry token flow; `/token` hands out our tokens for Basic
//! credentials (also as an OAuth2 password grant). Who is who is `crate::auth`'s business; this
//! module only speaks HTTP about it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{Code, Error};
use super::{AppState, MAX_QUERY_LEN};

/// With client auth on, lets through only requests with valid Basic credentials or one of our
/// tokens; others get 401 and the challenge that starts the token flow. A request without
/// credentials is answered without looking at the users (so it never causes a secret read); one
/// with credentials while no users can be read gets 503, never a pass.
pub(super) async fn require_auth(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let Some(auth) = &state.auth else {
        return next.run(req).await;
    };
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let client = client_addr(&req);
    let ok = match header {
        None => false,
        Some(header) => {
            let now = state.cache.now_ms();
            let users = match auth.users(now).await {
                Ok(u) => u,
                Err(e) => return Error::from(e).into_response(),
            };
            match basic_credentials(&header) {
                Some((user, password)) => {
                    match auth.check_basic(users, user, password, client, now).await {
                        Ok(ok) => ok,
                        Err(e) => return Error::from(e).into_response(),
                    }
                }
                // A token (cheap to check), or nothing we know.
                None => !is_basic(&header) && users.authenticate(Some(&header), now).is_some(),
            }
        }
    };
    if ok {
        return next.run(req).await;
    }
    let realm = token_realm(req.headers());
    let mut resp = Error::new(
        StatusCode::UNAUTHORIZED,
        Code::Unauthorized,
        "authentication required: log in with the user and password of this proxy",
    )
    .into_response();
    if let Ok(v) =
        HeaderValue::from_str(&format!("Bearer realm=\"{realm}\",service=\"pullthrough\""))
    {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// The client's address, when the server or the Lambda event says it.
fn client_addr(req: &Request) -> Option<std::net::IpAddr> {
    req.extensions()
        .get::<crate::auth::ClientAddr>()
        .map(|a| a.0)
}

fn is_basic(authorization: &str) -> bool {
    authorization
        .trim()
        .get(..6)
        .is_some_and(|s| s.eq_ignore_ascii_case("basic "))
}

/// The user and password of `Authorization: Basic …`.
fn basic_credentials(authorization: &str) -> Option<(String, String)> {
    if !is_basic(authorization) {
        return None;
    }
    crate::auth::decode_basic(authorization.trim()[6..].trim())
}

/// The absolute URL of our token endpoint as the client reaches us (Host, and
/// X-Forwarded-Proto behind a TLS-terminating proxy).
fn token_realm(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    let proto = match headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
    {
        Some("https") => "https",
        _ => "http",
    };
    format!("{proto}://{host}/token")
}

/// The registry token endpoint: a user's credentials in, a short-lived token out. They come as
/// `Authorization: Basic` (the GET of docker, podman and skopeo), or as the form fields of an
/// OAuth2 password grant (`POST`, `grant_type=password&username=…&password=…`), which
/// containerd tries first when it has credentials.
pub(super) async fn token(State(state): State<AppState>, req: Request) -> Response {
    let Some(auth) = &state.auth else {
        return Error::not_found(Code::Unsupported, "client authentication is off").into_response();
    };
    let client = client_addr(&req);
    let (parts, body) = req.into_parts();
    let (method, headers) = (parts.method, parts.headers);
    let body = if method == Method::POST {
        match axum::body::to_bytes(body, MAX_QUERY_LEN).await {
            Ok(b) => b,
            Err(_) => Bytes::new(),
        }
    } else {
        Bytes::new()
    };
    let now = state.cache.now_ms();
    let grant = if method == Method::POST {
        password_grant(&headers, &body)
    } else {
        None
    };
    let credentials = grant.or_else(|| {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(basic_credentials)
    });
    let user = match credentials {
        None => None,
        Some((u, p)) => {
            let users = match auth.users(now).await {
                Ok(users) => users,
                Err(e) => return Error::from(e).into_response(),
            };
            match auth
                .check_basic(Arc::clone(&users), u.clone(), p, client, now)
                .await
            {
                Ok(true) => Some((users, u)),
                Ok(false) => None,
                Err(e) => return Error::from(e).into_response(),
            }
        }
    };
    let Some((users, user)) = user else {
        let mut resp = Error::new(
            StatusCode::UNAUTHORIZED,
            Code::Unauthorized,
            "a valid user and password are required for a token",
        )
        .into_response();
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"pullthrough\""),
        );
        return resp;
    };
    let token = users.issue_token(&user, now);
    let body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": crate::auth::TOKEN_LIFETIME_SECS,
    });
    let mut resp = (StatusCode::OK, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The user and password of an OAuth2 password grant: a form-encoded body with
/// `grant_type=password`, `username` and `password`. Anything else (another grant, another
/// content type, a body over [`MAX_QUERY_LEN`]) is `None`.
fn password_grant(headers: &HeaderMap, body: &[u8]) -> Option<(String, String)> {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    if !form || body.len() > MAX_QUERY_LEN {
        return None;
    }
    let (mut grant, mut user, mut password) = (None, None, None);
    for (k, v) in url::form_urlencoded::parse(body) {
        match k.as_ref() {
            "grant_type" => grant = Some(v),
            "username" => user = Some(v),
            "password" => password = Some(v),
            _ => {}
        }
    }
    if grant.as_deref() != Some("password") {
        return None;
    }
    Some((user?.into_owned(), password?.into_owned()))
}
