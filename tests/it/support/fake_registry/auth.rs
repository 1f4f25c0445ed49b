//! How the fake authenticates: the Bearer (token flow) or Basic challenge, and the token
//! endpoint.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::Method;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use super::reply::Reply;
use super::routes::{Route, parse_query};
use super::{FakeAuth, ReqInfo, SERVICE, Shared};

pub(super) fn challenge_header(shared: &Shared, route: &Route) -> Option<String> {
    match &shared.opts.auth {
        FakeAuth::Basic { .. } => Some(format!("Basic realm=\"{SERVICE}\"")),
        FakeAuth::Bearer | FakeAuth::BearerWithCredentials { .. } => {
            let realm = format!("http://{}/token", shared.addr);
            Some(match route.repo() {
                Some(repo) => format!(
                    "Bearer realm=\"{realm}\",service=\"{SERVICE}\",scope=\"repository:{repo}:pull\""
                ),
                None => format!("Bearer realm=\"{realm}\",service=\"{SERVICE}\""),
            })
        }
    }
}

pub(super) fn basic_matches(authorization: Option<&str>, username: &str, password: &str) -> bool {
    let Some((scheme, cred)) = authorization.and_then(|a| a.trim().split_once(' ')) else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(cred.trim()) else {
        return false;
    };
    decoded == format!("{username}:{password}").as_bytes()
}

/// None if the request may proceed, else the 401 reply.
pub(super) fn check_auth(shared: &Shared, req: &ReqInfo, route: &Route) -> Option<Reply> {
    let ok = match &shared.opts.auth {
        FakeAuth::Basic { username, password } => {
            basic_matches(req.authorization.as_deref(), username, password)
        }
        FakeAuth::Bearer | FakeAuth::BearerWithCredentials { .. } => {
            match req
                .authorization
                .as_deref()
                .and_then(|a| a.trim().split_once(' '))
            {
                Some((scheme, tok)) if scheme.eq_ignore_ascii_case("bearer") => {
                    let st = shared.lock();
                    match (st.tokens.get(tok.trim()), route.repo()) {
                        (Some(_), None) => true,
                        (Some(repos), Some(repo)) => repos.contains(repo),
                        (None, _) => false,
                    }
                }
                _ => false,
            }
        }
    };
    if ok {
        return None;
    }
    let mut reply = Reply::error(401, "UNAUTHORIZED", "authentication required");
    if let Some(ch) = challenge_header(shared, route) {
        reply = reply.header("www-authenticate", ch);
    }
    Some(reply)
}

pub(super) fn token(shared: &Shared, req: &ReqInfo) -> Reply {
    if req.method != Method::GET && req.method != Method::HEAD {
        return Reply::error(405, "UNSUPPORTED", "token endpoint only supports GET");
    }
    if let FakeAuth::BearerWithCredentials { username, password } = &shared.opts.auth
        && !basic_matches(req.authorization.as_deref(), username, password)
    {
        return Reply::error(401, "UNAUTHORIZED", "incorrect username or password")
            .header("www-authenticate", format!("Basic realm=\"{SERVICE}\""));
    }
    let mut repos = HashSet::new();
    for (k, v) in parse_query(req.query.as_deref()) {
        if k != "scope" {
            continue;
        }
        for scope in v.split(' ') {
            if let Some(rest) = scope.strip_prefix("repository:")
                && let Some((name, actions)) = rest.rsplit_once(':')
                && actions.split(',').any(|a| a == "pull" || a == "*")
            {
                repos.insert(name.to_string());
            }
        }
    }
    let n = shared.token_counter.fetch_add(1, Ordering::Relaxed);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut h = Sha256::new();
    h.update(n.to_le_bytes());
    h.update(now.as_nanos().to_le_bytes());
    h.update(shared.addr.port().to_le_bytes());
    let tok = format!("fake-{n}-{}", &hex::encode(h.finalize())[..24]);
    shared.lock().tokens.insert(tok.clone(), repos);
    Reply::json(
        200,
        &serde_json::json!({
            "token": tok,
            "access_token": tok,
            "expires_in": 300,
            "issued_at": rfc3339(now.as_secs()),
        }),
    )
}

/// Seconds since the epoch as "YYYY-MM-DDTHH:MM:SSZ".
pub(super) fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
