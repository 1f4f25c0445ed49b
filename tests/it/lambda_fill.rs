//! Lambda mode's blob misses: a copy against a deadline, a lease in S3 so that one copy runs at a
//! time across instances, and the hand-off of a copy that outlives the deadline to an
//! asynchronous self-invocation (`Invoke`, `InvocationType=Event`) through the fake AWS endpoint.
//! Each "instance" is a separately built function over the same S3 server, as two Lambda
//! execution environments would be.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::lambda::{Answer, FakeAws, Source, call, function};
use crate::support::*;
use pullthrough::cache::Clock;
use pullthrough::lambda::Function;

struct Setup {
    up: FakeRegistry,
    s3: S3Server,
    aws: FakeAws,
    clock: Arc<Clock>,
}

/// Fill deadline 1 s; the upstream read timeout well above the stalls used here.
fn toml(up: &FakeRegistry, s3: &S3Server) -> String {
    format!(
        r#"
default_upstream = "local"
fill_deadline = "1s"
connect_timeout = "2s"
request_timeout = "10s"
read_timeout = "10s"

[[upstream]]
alias = "local"
url = "{}"
insecure = true
{}"#,
        up.url(),
        s3.config_table("")
    )
}

impl Setup {
    async fn new(opts: FakeOptions) -> Setup {
        Setup {
            up: FakeRegistry::start(opts).await,
            s3: S3Server::start().await,
            aws: FakeAws::start().await,
            clock: Arc::new(Clock::default()),
        }
    }

    /// A new instance (execution environment) of the function.
    async fn instance(&self) -> Function {
        function(
            &toml(&self.up, &self.s3),
            &self.s3,
            &self.aws,
            Arc::clone(&self.clock),
        )
        .await
    }

    fn lease_key(digest: &str) -> String {
        format!("leases/blobs/{}", digest.replace(':', "/"))
    }

    async fn has_object(&self, key: &str) -> bool {
        self.s3.object_keys(key).await.iter().any(|k| k == key)
    }
}

async fn get_blob(f: &Function, digest: &str) -> Answer {
    call(
        f,
        Source::HttpApi,
        "GET",
        &format!("/v2/team/app/blobs/{digest}"),
        &[],
    )
    .await
}

fn assert_pending(a: &Answer) {
    assert_eq!(a.status, 503, "{:?}", a.raw);
    assert_eq!(a.header("retry-after"), Some("10"), "{:?}", a.headers);
    assert_eq!(a.json()["errors"][0]["code"], "UNAVAILABLE");
}

#[tokio::test]
async fn a_blob_that_outlives_the_deadline_is_finished_by_an_async_invocation_under_one_lease() {
    let s = Setup::new(FakeOptions::default()).await;
    let data = blob_bytes(61, 300_000);
    let d = s.up.put_blob("team/app", data.clone());
    // The first two blob GETs (the request's copy, then the asynchronous one) answer after 3 s.
    s.up.add_fault(
        FaultRule::new(Fault::Stall(Duration::from_secs(3)))
            .method("GET")
            .path("/blobs/")
            .times(2),
    );
    let a = s.instance().await;
    let b = s.instance().await;
    let c = s.instance().await;

    // 1. The copy misses the 1 s deadline: 503 + Retry-After, and the function invoked itself.
    let started = Instant::now();
    let first = get_blob(&a, &d).await;
    assert_pending(&first);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "answered after {took:?}"
    );
    let calls = s.aws.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let invoke = &calls[0];
    assert_eq!(invoke.op, "Invoke");
    assert!(invoke.signature_ok, "SigV4: {:?}", invoke.headers);
    assert_eq!(
        invoke.path,
        "/2015-03-31/functions/pullthrough-test/invocations"
    );
    assert_eq!(
        invoke
            .headers
            .get("x-amz-invocation-type")
            .map(String::as_str),
        Some("Event")
    );
    let jobs = s.aws.fill_jobs();
    assert_eq!(jobs[0].upstream, "local");
    assert_eq!(jobs[0].repo, "team/app");
    assert_eq!(jobs[0].digest, d);
    // The lease is in S3, nothing else: no blob, no upload left from the dropped copy.
    assert!(s.has_object(&Setup::lease_key(&d)).await);
    assert!(s.s3.blob_keys("").await.is_empty());
    s.s3.assert_no_uploads().await;
    assert_eq!(s.up.count_authorized("GET", "/blobs/"), 1);

    // 2. The event is delivered to another instance, as Lambda would.
    let event = s.aws.invoke_payloads().remove(0).to_string();
    let fill = tokio::spawn(async move { b.handle(&event).await.map_err(|e| e.to_string()) });
    let up = &s.up;
    eventually(
        "the asynchronous copy's upstream GET",
        Duration::from_secs(30),
        || async move { up.count_authorized("GET", "/blobs/") == 2 },
    )
    .await;

    // 3. Meanwhile another instance's request gets 503 at once and starts no upstream fetch.
    let started = Instant::now();
    let during = get_blob(&c, &d).await;
    assert_pending(&during);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "no deadline wait"
    );
    assert_eq!(s.up.count_authorized("GET", "/blobs/"), 2);
    assert_eq!(s.aws.count("Invoke"), 1, "no second hand-off");

    // 4. The asynchronous copy completes and releases the lease.
    let outcome = fill.await.unwrap().expect("the fill event succeeds");
    assert_eq!(
        outcome,
        serde_json::json!({"fill": {"filled": {"size": data.len()}}})
    );
    assert!(!s.has_object(&Setup::lease_key(&d)).await);

    // 5. A retry gets the redirect to S3, from any instance, with no upstream request.
    for f in [&a, &c] {
        let again = get_blob(f, &d).await;
        assert_eq!(again.status, 307, "{:?}", again.raw);
        let location = again.header("location").unwrap();
        assert!(location.starts_with(&s.s3.endpoint), "{location}");
        s.s3.assert_serves(location, &d).await;
    }
    assert_eq!(s.up.count_authorized("GET", "/blobs/"), 2);
    s.s3.assert_no_uploads().await;
}

#[tokio::test]
async fn an_upstream_that_redirects_sends_the_client_to_its_own_url_while_the_cache_fills() {
    let s = Setup::new(FakeOptions {
        blob_redirect: true,
        ..FakeOptions::default()
    })
    .await;
    let data = blob_bytes(62, 100_000);
    let d = s.up.put_blob("team/app", data.clone());
    // The CDN is slow to answer the first copy's GET.
    s.up.add_fault(
        FaultRule::new(Fault::Stall(Duration::from_secs(2)))
            .method("GET")
            .path("/cdn/")
            .times(1),
    );
    let a = s.instance().await;
    let c = s.instance().await;
    let cdn = s.up.cdn_url().unwrap();

    let first = get_blob(&a, &d).await;
    assert_eq!(first.status, 307, "{:?}", first.raw);
    let location = first.header("location").unwrap().to_owned();
    assert!(
        location.starts_with(&cdn),
        "the upstream's own URL: {location}"
    );
    assert_eq!(first.header("docker-content-digest"), Some(d.as_str()));
    assert_eq!(s.aws.count("Invoke"), 1);

    // The client can follow it without credentials.
    let resp = reqwest::get(&location).await.unwrap();
    assert_eq!(sha256(&resp.bytes().await.unwrap()), d);

    // While the lease is held, the same repository is sent there too, by another instance.
    let during = get_blob(&c, &d).await;
    assert_eq!(during.status, 307);
    assert_eq!(during.header("location"), Some(location.as_str()));

    // The asynchronous copy completes; then the redirect goes to S3.
    let event = s.aws.invoke_payloads().remove(0).to_string();
    a.handle(&event).await.expect("fill event");
    let after = get_blob(&c, &d).await;
    assert_eq!(after.status, 307);
    let s3_location = after.header("location").unwrap();
    assert!(s3_location.starts_with(&s.s3.endpoint), "{s3_location}");
    s.s3.assert_serves(s3_location, &d).await;
}

#[tokio::test]
async fn a_blob_copied_within_the_deadline_needs_no_hand_off_and_leaves_no_lease() {
    let s = Setup::new(FakeOptions::default()).await;
    let d = s.up.put_blob("team/app", blob_bytes(63, 50_000));
    let a = s.instance().await;
    let first = get_blob(&a, &d).await;
    assert_eq!(first.status, 307, "{:?}", first.raw);
    s.s3.assert_serves(first.header("location").unwrap(), &d)
        .await;
    assert_eq!(s.aws.calls().len(), 0);
    assert!(!s.has_object(&Setup::lease_key(&d)).await);
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_a_live_one_is_respected() {
    let s = Setup::new(FakeOptions::default()).await;
    let d = s.up.put_blob("team/app", blob_bytes(64, 50_000));
    // A lease left by an instance that crashed in the middle of a copy, valid for 60 s.
    let expires = s.clock.now_ms() + 60_000;
    let lease = serde_json::json!({
        "owner": "crashed-instance", "expiresAt": expires, "upstream": "local", "repo": "team/app"
    });
    s.s3.admin
        .put_object()
        .bucket(&s.s3.bucket)
        .key(Setup::lease_key(&d))
        .body(lease.to_string().into_bytes().into())
        .send()
        .await
        .unwrap();
    let a = s.instance().await;
    assert_pending(&get_blob(&a, &d).await);
    assert_eq!(s.up.count_authorized("GET", "/blobs/"), 0);
    // A fill event for another owner leaves a live lease alone.
    let skipped = a
        .handle(
            &serde_json::json!({"fill": {"upstream": "local", "repo": "team/app", "digest": d, "lease": "someone-else"}})
                .to_string(),
        )
        .await
        .unwrap();
    assert_eq!(
        skipped["fill"]["skipped"]["reason"],
        "lease held by crashed-instance"
    );
    assert_eq!(s.up.count_authorized("GET", "/blobs/"), 0);

    // Once it has expired, the next request takes it over and copies within its deadline.
    s.clock.advance(Duration::from_secs(61));
    let taken = get_blob(&a, &d).await;
    assert_eq!(taken.status, 307, "{:?}", taken.raw);
    s.s3.assert_serves(taken.header("location").unwrap(), &d)
        .await;
    assert_eq!(s.up.count_authorized("GET", "/blobs/"), 1);
    assert!(!s.has_object(&Setup::lease_key(&d)).await);
}

#[tokio::test]
async fn a_failed_hand_off_releases_the_lease_so_a_retry_starts_over() {
    let s = Setup::new(FakeOptions::default()).await;
    let d = s.up.put_blob("team/app", blob_bytes(65, 50_000));
    s.up.add_fault(
        FaultRule::new(Fault::Stall(Duration::from_secs(2)))
            .method("GET")
            .path("/blobs/")
            .times(1),
    );
    s.aws.fail_invokes_with(Some(429));
    let a = s.instance().await;
    let first = get_blob(&a, &d).await;
    assert_eq!(first.status, 503, "{:?}", first.raw);
    let msg = first.json()["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        msg.contains("could not be continued") && msg.contains("429"),
        "{msg}"
    );
    assert!(!s.has_object(&Setup::lease_key(&d)).await);

    s.aws.fail_invokes_with(None);
    let retry = get_blob(&a, &d).await;
    assert_eq!(retry.status, 307, "{:?}", retry.raw);
    s.s3.assert_serves(retry.header("location").unwrap(), &d)
        .await;
}

#[tokio::test]
async fn a_transient_invoke_failure_is_retried_and_the_hand_off_succeeds() {
    let s = Setup::new(FakeOptions::default()).await;
    let d = s.up.put_blob("team/app", blob_bytes(67, 50_000));
    s.up.add_fault(
        FaultRule::new(Fault::Stall(Duration::from_secs(3)))
            .method("GET")
            .path("/blobs/")
            .times(1),
    );
    // Lambda answers 503 twice, then queues the event: the SDK's retries get it through.
    s.aws.fail_next_requests(2);
    let a = s.instance().await;
    let first = get_blob(&a, &d).await;
    assert_pending(&first);
    let calls = s.aws.calls();
    assert_eq!(
        calls.len(),
        3,
        "two failed attempts and one queued: {calls:?}"
    );
    assert!(calls.iter().all(|c| c.op == "Invoke" && c.signature_ok));
    assert_eq!(s.aws.fill_jobs().len(), 3);
    assert_eq!(s.aws.fill_jobs()[2].digest, d);
    // The lease stays for the asynchronous copy.
    assert!(s.has_object(&Setup::lease_key(&d)).await);
}

#[tokio::test]
async fn fill_events_for_stored_blobs_and_upstream_errors() {
    let s = Setup::new(FakeOptions::default()).await;
    let d = s.up.put_blob("team/app", blob_bytes(66, 10_000));
    let a = s.instance().await;
    let event = |digest: &str| {
        serde_json::json!({"fill": {"upstream": "local", "repo": "team/app", "digest": digest, "lease": "l1"}})
            .to_string()
    };
    let done = a.handle(&event(&d)).await.unwrap();
    assert_eq!(done["fill"]["filled"]["size"], 10_000);
    // Again: already stored, nothing fetched.
    let before = s.up.count_authorized("GET", "/blobs/");
    let again = a.handle(&event(&d)).await.unwrap();
    assert_eq!(again["fill"]["filled"]["size"], 10_000);
    assert_eq!(s.up.count_authorized("GET", "/blobs/"), before);
    // A blob the upstream does not have: an invocation error (Lambda retries it), no lease left.
    let missing = sha256(b"not there");
    let err = a.handle(&event(&missing)).await.unwrap_err().to_string();
    assert!(err.contains("not found"), "{err}");
    assert!(!s.has_object(&Setup::lease_key(&missing)).await);
    // An unknown upstream is refused.
    let bad = serde_json::json!({"fill": {"upstream": "elsewhere", "repo": "x", "digest": d, "lease": "l"}});
    assert!(a.handle(&bad.to_string()).await.is_err());
}

/// The store operations the lease rests on, against the S3 server (which checks
/// `If-None-Match: *` and `If-Match` as S3 does).
#[tokio::test]
async fn conditional_writes_on_s3() {
    use pullthrough::store::{Condition, Store, keys};
    let server = S3Server::start().await;
    let store = server
        .store("pfx", pullthrough::config::S3Settings::default())
        .await;
    let key = keys::lease(&pullthrough::oci::Digest::sha256_of(b"x"));
    let v1 = store
        .put_if(&key, "one".into(), Condition::Absent)
        .await
        .unwrap()
        .expect("created");
    assert_eq!(
        store
            .put_if(&key, "two".into(), Condition::Absent)
            .await
            .unwrap(),
        None,
        "If-None-Match: * on an existing object"
    );
    let (bytes, tag) = store.get_versioned(&key).await.unwrap().unwrap();
    assert_eq!(bytes, "one");
    assert_eq!(tag, v1);
    let v2 = store
        .put_if(&key, "three".into(), Condition::Matches(tag.clone()))
        .await
        .unwrap()
        .expect("replaced");
    assert_ne!(v2, v1);
    assert_eq!(
        store
            .put_if(&key, "four".into(), Condition::Matches(v1))
            .await
            .unwrap(),
        None,
        "If-Match on a stale ETag"
    );
    assert_eq!(store.get(&key).await.unwrap().unwrap(), "three");
    assert_eq!(
        server.object_keys("pfx/leases/").await,
        vec![format!("pfx/{}", key.as_str())]
    );
    store.delete(&key).await.unwrap();
    assert!(store.get_versioned(&key).await.unwrap().is_none());
    store.delete(&key).await.unwrap();
}
