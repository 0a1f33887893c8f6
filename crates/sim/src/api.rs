//! The simulator's HTTP API.
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::SimOptions;

type Body = UnsyncBoxBody<Bytes, Infallible>;

const REPLY: &str = "This is a simulated response from the wasmgate inference simulator.";

struct Job {
    id: String,
    created: Instant,
    created_unix: u64,
    input: Value,
}

pub(super) struct SimState {
    jobs: Mutex<HashMap<String, Job>>,
    token_delay: Duration,
    job_duration: Duration,
    workers: usize,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn json_response(status: StatusCode, v: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed_unsync())
        .unwrap()
}

fn not_found() -> Response<Body> {
    json_response(StatusCode::NOT_FOUND, json!({"detail": "Not Found"}))
}

impl SimState {
    pub(super) fn new(opts: &SimOptions) -> Self {
        SimState {
            jobs: Mutex::new(HashMap::new()),
            token_delay: opts.token_delay,
            job_duration: opts.job_duration,
            workers: opts.workers,
        }
    }

    pub(super) async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        match (method, path.as_str()) {
            (Method::GET, "/health") => json_response(StatusCode::OK, json!({"status": "ok"})),
            (Method::POST, "/api/v1/jobs") => {
                let body = read_json(req).await;
                self.submit(body.unwrap_or(Value::Null))
            }
            (Method::GET, "/api/v1/queue/stats") | (Method::GET, "/api/v1/jobs/stats/queue") => {
                self.queue_stats()
            }
            (Method::GET, p) if p.starts_with("/api/v1/jobs/") => {
                self.job(&p["/api/v1/jobs/".len()..])
            }
            (Method::GET, "/v1/models") => json_response(
                StatusCode::OK,
                json!({"object": "list", "data": [
                    {"id": "sim-llama-3-8b", "object": "model", "owned_by": "wasmgate-sim"}
                ]}),
            ),
            (Method::POST, "/v1/chat/completions") => match read_json(req).await {
                Some(body) => self.chat(body),
                None => json_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"detail": "body must be JSON"}),
                ),
            },
            _ => not_found(),
        }
    }

    fn submit(&self, input: Value) -> Response<Body> {
        let id = uuid::Uuid::new_v4().to_string();
        let created_unix = unix_now();
        self.jobs.lock().unwrap().insert(
            id.clone(),
            Job {
                id: id.clone(),
                created: Instant::now(),
                created_unix,
                input,
            },
        );
        json_response(
            StatusCode::CREATED,
            json!({"id": id, "job_id": id, "status": "queued", "created_at": created_unix}),
        )
    }

    fn status_of(&self, job: &Job) -> &'static str {
        let age = job.created.elapsed();
        if age >= self.job_duration {
            "completed"
        } else if age >= self.job_duration / 2 {
            "processing"
        } else {
            "queued"
        }
    }

    fn job(&self, id: &str) -> Response<Body> {
        let jobs = self.jobs.lock().unwrap();
        let Some(job) = jobs.get(id) else {
            return json_response(StatusCode::NOT_FOUND, json!({"detail": "Job not found"}));
        };
        let status = self.status_of(job);
        let result = (status == "completed").then(|| json!({"output": REPLY, "input": job.input}));
        json_response(
            StatusCode::OK,
            json!({"id": job.id, "job_id": job.id, "status": status,
                   "created_at": job.created_unix, "result": result}),
        )
    }

    fn queue_stats(&self) -> Response<Body> {
        let jobs = self.jobs.lock().unwrap();
        let mut counts: HashMap<&str, u64> = HashMap::new();
        for job in jobs.values() {
            *counts.entry(self.status_of(job)).or_default() += 1;
        }
        let get = |k| counts.get(k).copied().unwrap_or(0);
        json_response(
            StatusCode::OK,
            json!({"pending": get("queued"), "processing": get("processing"),
                   "completed": get("completed"), "failed": 0, "total": jobs.len(),
                   "active_workers": self.workers}),
        )
    }

    fn chat(&self, req: Value) -> Response<Body> {
        let model = req["model"]
            .as_str()
            .unwrap_or("sim-llama-3-8b")
            .to_string();
        let prompt_tokens: usize = req["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|x| x["content"].as_str())
                    .map(|c| c.split_whitespace().count())
                    .sum()
            })
            .unwrap_or(0);
        let words: Vec<&str> = REPLY.split_whitespace().collect();
        let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": words.len(),
                           "total_tokens": prompt_tokens + words.len()});
        let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
        let created = unix_now();
        if !req["stream"].as_bool().unwrap_or(false) {
            return json_response(
                StatusCode::OK,
                json!({"id": id, "object": "chat.completion", "created": created, "model": model,
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": REPLY}}],
                       "usage": usage}),
            );
        }
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        let delay = self.token_delay;
        let words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        tokio::spawn(async move {
            let chunk = |delta: Value, finish: Value, usage: Value| {
                let mut v = json!({"id": id, "object": "chat.completion.chunk", "created": created,
                                   "model": model,
                                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
                if !usage.is_null() {
                    v["usage"] = usage;
                }
                Bytes::from(format!("data: {v}\n\n"))
            };
            // The first event comes after a token's time too (the prompt's prefill).
            tokio::time::sleep(delay).await;
            let _ = tx.send(chunk(
                json!({"role": "assistant"}),
                Value::Null,
                Value::Null,
            ));
            for (i, w) in words.iter().enumerate() {
                tokio::time::sleep(delay).await;
                let text = if i + 1 < words.len() {
                    format!("{w} ")
                } else {
                    w.clone()
                };
                if tx
                    .send(chunk(json!({"content": text}), Value::Null, Value::Null))
                    .is_err()
                {
                    return;
                }
            }
            let _ = tx.send(chunk(json!({}), json!("stop"), usage));
            let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n"));
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        Response::builder()
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .body(StreamBody::new(stream).boxed_unsync())
            .unwrap()
    }
}

async fn read_json(req: Request<Incoming>) -> Option<Value> {
    let bytes = req.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&bytes).ok()
}
