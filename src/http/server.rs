//! Server mode's connections: the accept loop, what one connection may hold and for how long,
//! and the graceful shutdown.
//!
//! Every accepted TCP connection is served by hyper's HTTP/1.1 + HTTP/2 (h2c) auto builder in a
//! task of its own, under [`ConnectionLimits`]:
//!
//! - **Count**: at most `max_connections` at once. One more is not left hanging in the backlog:
//!   it is answered a short `503 UNAVAILABLE` (OCI JSON, `Retry-After: 1`) and closed.
//! - **Request heads**: a connection must deliver a whole request head within
//!   `header_read_timeout`, counted from its start, or (HTTP/1) from the first byte after the
//!   previous response; else it is closed. A single header over `max_header_size` is answered
//!   `431` with an OCI JSON body; a head over `max_head_size` is refused (`431`) by hyper itself.
//! - **Idle**: a connection with no request in flight and nothing received for `idle_timeout` is
//!   closed.
//! - **Writes**: a write the client does not let progress (it stopped reading) fails after
//!   `write_timeout` (`Guarded`), which ends the connection and drops its response body, and
//!   with it whatever that body held (a store file, a fill's tee). This is the one place such
//!   clients are cut; nothing deeper needs its own timer for them.
//!
//! Shutdown: once the `shutdown` future resolves the listener is closed, every connection is
//! told to finish (HTTP/1: after its current response; HTTP/2: GOAWAY), and after
//! `shutdown_grace` the connections still open are dropped, which cancels their requests the way
//! a client disconnect does (stores publish only whole objects, so nothing is half-published).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, Version, header};
use axum::response::IntoResponse;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::auth::ClientAddr;
use crate::config::ConnectionLimits;
use crate::http::error::{Code, Error};

/// Serves `router` on `listener` under `limits` until `shutdown` resolves, then drains (see the
/// module documentation).
pub async fn run(
    listener: TcpListener,
    router: axum::Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let limits = Arc::new(limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Refusals hold their socket for up to 3 s (to deliver the 503): bounded too, so that a
    // flood of connections cannot pile up sockets through them. Past it, a connection is closed
    // at once.
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            () = &mut shutdown => break,
            // Reap finished connections as we go, so the set holds only live ones.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => {
                let (router, limits, stop) = (router.clone(), Arc::clone(&limits), stop_rx.clone());
                tasks.spawn(async move {
                    serve_connection(stream, addr, router, &limits, stop).await;
                    drop(slot);
                });
            }
            Err(_) => {
                tracing::warn!(client = %addr, max = limits.max_connections, "connection refused: too many connections");
                if let Ok(turn) = Arc::clone(&refusals).try_acquire_owned() {
                    tasks.spawn(async move {
                        refuse(stream).await;
                        drop(turn);
                    });
                }
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let in_flight = tasks.len();
    if in_flight > 0 {
        tracing::info!(
            connections = in_flight,
            grace_s = limits.shutdown_grace.as_secs_f64(),
            "shutting down: finishing requests in flight"
        );
    }
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = tasks.len(),
            "shutdown grace period over: cutting the connections still open"
        );
        tasks.shutdown().await;
    }
    Ok(())
}

/// Connections being refused at once (each answered a 503 within about 3 s).
const MAX_REFUSALS: usize = 256;

/// Errors of one incoming connection (it went away before we took it), not of the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// The answer to a connection over the cap: a 503 with an OCI JSON body, then close. The
/// request head is awaited first (briefly, and at most 16 KiB of it: clients take an answer
/// that comes before their request for a protocol error), and what follows is read and discarded
/// briefly after our FIN, so that closing does not reset the connection before the client has
/// read the answer.
async fn refuse(mut stream: TcpStream) {
    use tokio::io::AsyncReadExt;
    let body = r#"{"errors":[{"code":"UNAVAILABLE","message":"too many connections to this proxy; retry shortly"}]}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ndocker-distribution-api-version: registry/2.0\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        while stream.read(&mut buf).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
}

async fn serve_connection(
    stream: TcpStream,
    addr: SocketAddr,
    router: axum::Router,
    limits: &ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Guarded {
        inner: stream,
        write_timeout: limits.write_timeout,
        stalled: None,
        activity: Arc::clone(&activity),
    });
    let max_header_size = limits.max_header_size;
    let service_activity = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let in_flight = InFlight::start(Arc::clone(&service_activity), req.version());
        let router = router.clone();
        async move {
            let mut req = req.map(Body::new);
            let resp = match oversize_header(&req, max_header_size) {
                Some(refusal) => refusal,
                None => {
                    req.extensions_mut().insert(ClientAddr(addr.ip()));
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(addr));
                    match router.oneshot(req).await {
                        Ok(r) => r,
                        Err(never) => match never {},
                    }
                }
            };
            // The request counts as in flight until its response body is done or dropped.
            Ok::<_, Infallible>(resp.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _keep = &in_flight;
                    frame
                }))
            }))
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // Our own clock (see `Activity`) bounds request heads; hyper's would also close idle
        // keep-alive connections after the head timeout.
        .header_read_timeout(None)
        .max_buf_size(limits.max_head_size);
    builder
        .http2()
        .max_header_list_size(u32::try_from(limits.max_head_size).unwrap_or(u32::MAX));
    let conn = builder.serve_connection_with_upgrades(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut stopping = false;
    loop {
        let deadline = activity.deadline(limits);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(client = %addr, error = %e, "connection ended with an error");
                }
                return;
            }
            changed = stop.changed(), if !stopping => {
                stopping = true;
                if changed.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
            () = activity.changed.notified() => {}
            () = sleep_until(deadline) => {
                if let Some(why) = activity.expired(limits) {
                    tracing::debug!(client = %addr, why, "connection closed");
                    return;
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// `431` naming the first header larger than `max` (name and value), if there is one.
fn oversize_header(req: &Request<Body>, max: usize) -> Option<Response<Body>> {
    let (name, _) = req
        .headers()
        .iter()
        .find(|(n, v)| n.as_str().len() + v.len() > max)?;
    let name: String = name.as_str().chars().take(64).collect();
    let mut resp = Error::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        Code::Unsupported,
        format!("request header {name} is larger than {max} bytes"),
    )
    .into_response();
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    Some(resp)
}

/// What the watchdog of one connection knows: requests in flight and the clocks of the head and
/// idle timeouts.
struct Activity {
    state: Mutex<ActivityState>,
    /// Woken when a deadline may have moved earlier (a head started, the last request ended).
    changed: Notify,
}

struct ActivityState {
    in_flight: usize,
    /// When the request head being awaited started (the connection's start, or its first byte).
    head_since: Option<Instant>,
    /// When the connection last became idle (no request in flight).
    idle_since: Instant,
    /// HTTP/2 multiplexes control frames (pings, window updates) between requests: bytes do not
    /// start a request head there, so only the idle clock applies after the first request.
    http2: bool,
}

impl Activity {
    fn new() -> Activity {
        let now = Instant::now();
        Activity {
            state: Mutex::new(ActivityState {
                in_flight: 0,
                head_since: Some(now),
                idle_since: now,
                http2: false,
            }),
            changed: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes arrived: between requests on HTTP/1, that starts the head clock.
    fn on_read(&self) {
        let mut st = self.state();
        if st.in_flight == 0 && st.head_since.is_none() && !st.http2 {
            st.head_since = Some(Instant::now());
            drop(st);
            self.changed.notify_one();
        }
    }

    fn deadline(&self, limits: &ConnectionLimits) -> Option<Instant> {
        let st = self.state();
        if st.in_flight > 0 {
            return None;
        }
        Some(match st.head_since {
            Some(t) => t + limits.header_read_timeout,
            None => st.idle_since + limits.idle_timeout,
        })
    }

    /// Why the connection should close now, if it should.
    fn expired(&self, limits: &ConnectionLimits) -> Option<&'static str> {
        let st = self.state();
        let now = Instant::now();
        if st.in_flight > 0 {
            None
        } else if st
            .head_since
            .is_some_and(|t| now >= t + limits.header_read_timeout)
        {
            Some("header read timeout")
        } else if st.head_since.is_none() && now >= st.idle_since + limits.idle_timeout {
            Some("idle timeout")
        } else {
            None
        }
    }
}

/// One request in flight on a connection, from its head to the end (or drop) of its response.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>, version: Version) -> InFlight {
        {
            let mut st = activity.state();
            st.in_flight += 1;
            st.head_since = None;
            st.http2 |= version == Version::HTTP_2;
        }
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut st = self.0.state();
        st.in_flight = st.in_flight.saturating_sub(1);
        if st.in_flight == 0 {
            st.idle_since = Instant::now();
            drop(st);
            self.0.changed.notify_one();
        }
    }
}

/// The connection's socket with a write timeout: a write (or flush) that stays pending for
/// `write_timeout` fails with `TimedOut`, which makes hyper end the connection. Reads are passed
/// through and reported to the connection's [`Activity`].
struct Guarded {
    inner: TcpStream,
    write_timeout: Duration,
    /// Runs while a write is pending; reset by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
    activity: Arc<Activity>,
}

impl Guarded {
    /// After a pending write: `Ready(Err)` once the stall has lasted `write_timeout`.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let timeout = self.write_timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "write timeout: the client stopped reading",
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    fn guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.poll_stall(cx).map(Err),
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.on_read();
        }
        polled
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, data);
        this.guard(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.guard(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.guard(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.guard(cx, polled)
    }
}
