//! A local Lambda runtime API: what the Lambda service offers a custom runtime
//! (`provided.al2023`) on `AWS_LAMBDA_RUNTIME_API`, for running the real binary in Lambda mode.
//!
//! - `GET /2018-06-01/runtime/invocation/next` waits for an event and answers it with
//!   `Lambda-Runtime-Aws-Request-Id`, `Lambda-Runtime-Deadline-Ms` and
//!   `Lambda-Runtime-Invoked-Function-Arn`;
//! - `POST /2018-06-01/runtime/invocation/{id}/response` and `.../{id}/error` complete it;
//! - `POST /2018-06-01/runtime/init/error` records a failed initialisation.
//!
//! Self-contained (axum, tokio, serde_json) so that `examples/lambda_init.rs` can include it too.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{Notify, mpsc, oneshot};

pub const FUNCTION_ARN: &str = "arn:aws:lambda:us-east-1:123456789012:function:pullthrough-test";

/// How an invocation ended.
#[derive(Debug)]
pub enum Outcome {
    /// The function's response payload.
    Response(Bytes),
    /// `POST .../error`: the error document.
    Error(Bytes),
}

struct Pending {
    id: String,
    payload: Bytes,
    deadline: Duration,
}

#[derive(Default)]
struct Shared {
    queue_tx: Mutex<Option<mpsc::UnboundedSender<Pending>>>,
    queue_rx: tokio::sync::Mutex<Option<mpsc::UnboundedReceiver<Pending>>>,
    waiting: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    /// When the first `/next` arrived, and how many have.
    first_next: Mutex<Option<Instant>>,
    next_calls: Mutex<usize>,
    init_error: Mutex<Option<Bytes>>,
    changed: Notify,
    counter: Mutex<u64>,
}

/// A running runtime API on 127.0.0.1:0. Dropping it stops it.
pub struct RuntimeApi {
    /// `127.0.0.1:PORT`: the value of `AWS_LAMBDA_RUNTIME_API`.
    pub address: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RuntimeApi {
    pub async fn start() -> RuntimeApi {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        *shared.queue_tx.lock().unwrap() = Some(tx);
        *shared.queue_rx.lock().await = Some(rx);
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(response),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind runtime API");
        let address = listener.local_addr().expect("addr").to_string();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        RuntimeApi {
            address,
            shared,
            task,
        }
    }

    /// Queues an event and waits (up to `timeout`) for the function's answer.
    pub async fn invoke(&self, event: &serde_json::Value, timeout: Duration) -> Outcome {
        let rx = self.enqueue(event, timeout);
        tokio::time::timeout(timeout, rx)
            .await
            .unwrap_or_else(|_| panic!("the function did not answer within {timeout:?}"))
            .expect("invocation dropped")
    }

    /// Queues an event; the receiver gets the outcome.
    pub fn enqueue(
        &self,
        event: &serde_json::Value,
        deadline: Duration,
    ) -> oneshot::Receiver<Outcome> {
        let id = {
            let mut c = self.shared.counter.lock().unwrap();
            *c += 1;
            format!("00000000-0000-4000-8000-{:012x}", *c)
        };
        let (tx, rx) = oneshot::channel();
        self.shared.waiting.lock().unwrap().insert(id.clone(), tx);
        let tx = self.shared.queue_tx.lock().unwrap().clone().expect("queue");
        let _ = tx.send(Pending {
            id,
            payload: Bytes::from(serde_json::to_vec(event).unwrap()),
            deadline,
        });
        rx
    }

    /// Waits (up to `timeout`) for the first `/next` call and returns when it arrived.
    pub async fn first_next(&self, timeout: Duration) -> Option<Instant> {
        let waited = tokio::time::timeout(timeout, async {
            loop {
                let notified = self.shared.changed.notified();
                if let Some(t) = *self.shared.first_next.lock().unwrap() {
                    return t;
                }
                if self.shared.init_error.lock().unwrap().is_some() {
                    return Instant::now();
                }
                notified.await;
            }
        })
        .await
        .ok();
        waited.filter(|_| self.shared.init_error.lock().unwrap().is_none())
    }

    /// Waits until the function has called `/next` at least `n` times (it is then idle,
    /// waiting for work).
    pub async fn wait_for_next_calls(&self, n: usize, timeout: Duration) {
        tokio::time::timeout(timeout, async {
            loop {
                let notified = self.shared.changed.notified();
                if *self.shared.next_calls.lock().unwrap() >= n {
                    return;
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the function did not ask for invocation {n}"));
    }

    pub fn init_error(&self) -> Option<Bytes> {
        self.shared.init_error.lock().unwrap().clone()
    }
}

async fn next(State(shared): State<Arc<Shared>>) -> Response {
    {
        let mut first = shared.first_next.lock().unwrap();
        if first.is_none() {
            *first = Some(Instant::now());
        }
        *shared.next_calls.lock().unwrap() += 1;
    }
    shared.changed.notify_waiters();
    let mut guard = shared.queue_rx.lock().await;
    let Some(rx) = guard.as_mut() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let Some(p) = rx.recv().await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let deadline_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + p.deadline.as_millis();
    let mut headers = HeaderMap::new();
    headers.insert("lambda-runtime-aws-request-id", p.id.parse().unwrap());
    headers.insert(
        "lambda-runtime-deadline-ms",
        deadline_ms.to_string().parse().unwrap(),
    );
    headers.insert(
        "lambda-runtime-invoked-function-arn",
        FUNCTION_ARN.parse().unwrap(),
    );
    headers.insert(
        "lambda-runtime-trace-id",
        "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=0"
            .parse()
            .unwrap(),
    );
    headers.insert("content-type", "application/json".parse().unwrap());
    (StatusCode::OK, headers, p.payload).into_response()
}

async fn response(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    finish(&shared, &id, Outcome::Response(body))
}

async fn error(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    finish(&shared, &id, Outcome::Error(body))
}

fn finish(shared: &Shared, id: &str, outcome: Outcome) -> StatusCode {
    match shared.waiting.lock().unwrap().remove(id) {
        Some(tx) => {
            let _ = tx.send(outcome);
            StatusCode::ACCEPTED
        }
        None => StatusCode::NOT_FOUND,
    }
}

async fn init_error(State(shared): State<Arc<Shared>>, body: Bytes) -> StatusCode {
    *shared.init_error.lock().unwrap() = Some(body);
    shared.changed.notify_waiters();
    StatusCode::ACCEPTED
}
