//! The `Range` request header: the single byte range a client asks for, as the store's
//! [`RangeRequest`]. Checking it against the object's size is the store's (`RangeRequest::resolve`).

use crate::cache::RangeRequest;

/// Parses a single-range `Range` header; anything else (multiple ranges, other units) is
/// `None`, and the whole object is served, as RFC 9110 allows.
pub fn parse_range(value: &str) -> Option<RangeRequest> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        return Some(RangeRequest::Suffix(b.parse().ok()?));
    }
    let first = a.parse().ok()?;
    let last = if b.is_empty() {
        None
    } else {
        Some(b.parse().ok()?)
    };
    if last.is_some_and(|l| l < first) {
        return None;
    }
    Some(RangeRequest::From { first, last })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::ByteRange;

    #[test]
    fn range_parsing_and_resolution() {
        let r = |s| parse_range(s);
        assert_eq!(
            r("bytes=0-9").unwrap().resolve(100),
            Some(ByteRange { first: 0, last: 9 })
        );
        assert_eq!(
            r("bytes=90-").unwrap().resolve(100),
            Some(ByteRange {
                first: 90,
                last: 99
            })
        );
        assert_eq!(
            r("bytes=90-500").unwrap().resolve(100),
            Some(ByteRange {
                first: 90,
                last: 99
            })
        );
        assert_eq!(
            r("bytes=-10").unwrap().resolve(100),
            Some(ByteRange {
                first: 90,
                last: 99
            })
        );
        assert_eq!(
            r("bytes=-500").unwrap().resolve(100),
            Some(ByteRange { first: 0, last: 99 })
        );
        assert_eq!(r("bytes=100-").unwrap().resolve(100), None);
        assert_eq!(r("bytes=-0").unwrap().resolve(100), None);
        assert!(r("bytes=5-1").is_none());
        assert!(r("bytes=0-1,5-6").is_none());
        assert!(r("items=0-1").is_none());
        assert!(r("bytes=x-1").is_none());
    }
}
