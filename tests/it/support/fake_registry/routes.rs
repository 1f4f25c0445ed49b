//! `/v2/` paths parsed from the right (repository names hold slashes), percent-decoding and
//! query strings.

pub(super) enum Route {
    Base,
    Manifest { repo: String, reference: String },
    Blob { repo: String, digest: String },
    Tags { repo: String },
    Referrers { repo: String, digest: String },
    Unknown,
}

impl Route {
    pub(super) fn repo(&self) -> Option<&str> {
        match self {
            Route::Manifest { repo, .. }
            | Route::Blob { repo, .. }
            | Route::Tags { repo }
            | Route::Referrers { repo, .. } => Some(repo),
            Route::Base | Route::Unknown => None,
        }
    }
}

/// Parse a `/v2/...` path from the right (repository names contain slashes).
pub(super) fn parse_route(path: &str) -> Route {
    let rest = match path.strip_prefix("/v2") {
        Some("") | Some("/") => return Route::Base,
        Some(r) => match r.strip_prefix('/') {
            Some(r) => r,
            None => return Route::Unknown,
        },
        None => return Route::Unknown,
    };
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    if n >= 3 && segs[..n - 2].iter().all(|s| !s.is_empty()) {
        let repo = segs[..n - 2].join("/");
        let last = segs[n - 1];
        match (segs[n - 2], last) {
            ("tags", "list") => return Route::Tags { repo },
            (_, "") => {}
            ("manifests", r) => {
                return Route::Manifest {
                    repo,
                    reference: percent_decode(r),
                };
            }
            ("blobs", d) => {
                return Route::Blob {
                    repo,
                    digest: percent_decode(d),
                };
            }
            ("referrers", d) => {
                return Route::Referrers {
                    repo,
                    digest: percent_decode(d),
                };
            }
            _ => {}
        }
    }
    Route::Unknown
}

pub(super) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(hi), Some(lo)) = (hex_val(b[i + 1]), hex_val(b[i + 2]))
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

pub(super) fn parse_query(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                percent_decode(&k.replace('+', " ")),
                percent_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}
