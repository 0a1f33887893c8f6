//! Rate-limit window decisions on Redis: the [`WINDOW`] script, and decisions made at the same
//! moment sent together as one `EVALSHA` ([`WindowBatch`]).
use std::time::Duration;

use super::{ttl_ms, RedisStore};
use crate::{StoreError, StoreResult, WindowHit, WindowKind};

/// Window decisions, one per key (several when decisions made at the same moment go out
/// together: [`WindowBatch`]), in order, atomically. KEYS: the windows. ARGV, four per key:
/// kind (`s` sliding, `f` fixed), limit, window in ms, a random member suffix (sliding).
/// Returns {{allowed, remaining, reset_after_ms} per key, flattened; {the errors, in order}}:
/// a decision that fails (a key of another type: WRONGTYPE) has allowed = -1 and its error in
/// the second list, and the others are decided as if it were not there.
///
/// Sliding: a sorted set of hit times (µs, server clock), the layout the ACIP gateway uses
/// (`ZCARD gateway:ratelimit:<client>` is the count); rejected hits are not recorded. Fixed: a
/// counter that expires `window` after its first hit; rejected hits are not counted.
pub(super) const WINDOW: &str = r#"
local t, now
local out, errors = {}, {}
local function decide(key, kind, limit, window_ms, suffix)
  local allowed = 0
  local count
  local reset = window_ms
  if kind == 's' then
    if not t then
      t = redis.call('TIME')
      now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    end
    local window = window_ms * 1000
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
    count = redis.call('ZCARD', key)
    if count < limit then
      redis.call('ZADD', key, now, t[1] .. '.' .. t[2] .. ':' .. suffix)
      redis.call('PEXPIRE', key, window_ms)
      count = count + 1
      allowed = 1
    end
    if count > 0 then
      local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      reset = math.ceil((tonumber(oldest[2]) + window - now) / 1000)
    end
  else
    count = tonumber(redis.call('GET', key) or '0')
    if count < limit then
      count = redis.call('INCR', key)
      if count == 1 then redis.call('PEXPIRE', key, window_ms) end
      allowed = 1
    end
    local ttl = redis.call('PTTL', key)
    if ttl >= 0 then reset = ttl end
  end
  local remaining = limit - count
  if remaining < 0 then remaining = 0 end
  return allowed, remaining, reset
end
for i, key in ipairs(KEYS) do
  local a = (i - 1) * 4
  local ok, allowed, remaining, reset = pcall(decide, key, ARGV[a + 1],
    tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), ARGV[a + 4])
  if not ok then
    local e = allowed
    errors[#errors + 1] = type(e) == 'table' and (e.err or 'error') or tostring(e)
    allowed, remaining, reset = -1, 0, 0
  end
  out[#out + 1] = allowed
  out[#out + 1] = remaining
  out[#out + 1] = reset
end
return {out, errors}
"#;

/// Most window decisions in one `EVALSHA`: Redis runs a script to the end before anything
/// else, so a batch is bounded to keep the server's other clients from waiting long.
const MAX_BATCH: usize = 64;

/// Window decisions that go to Redis together (docs/state.md, "Batched window decisions").
///
/// fred flushes the socket after every `EVALSHA`, so decisions sent one by one cost a write
/// and a wake-up of `redis-server` each. Under load many requests reach their decision in the
/// same pass of the runtime: the first queues its decision and yields once, the ones that
/// arrive before it runs again join the queue, and then all go out as one `EVALSHA` of
/// [`WINDOW`], which decides them in order, each exactly as alone. A decision alone costs one
/// yield more than it did.
#[derive(Default)]
pub(super) struct WindowBatch {
    queue: std::sync::Mutex<Vec<Pending>>,
}

/// One window decision: the key, and the window it is decided in.
struct Decision {
    key: String,
    kind: WindowKind,
    limit: u64,
    window_ms: i64,
}

/// A queued window decision and where its answer goes.
struct Pending {
    decision: Decision,
    answer: tokio::sync::oneshot::Sender<StoreResult<WindowHit>>,
}

impl WindowBatch {
    /// Queues `p`; true when the queue was empty (the caller sends the batch).
    fn push(&self, p: Pending) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.push(p);
        q.len() == 1
    }

    fn take(&self) -> Vec<Pending> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Sends the queued batch from a task of its own when dropped: the request that queued it
/// first may go away (its client hung up) while the others wait for their answers.
struct SendOnDrop<'a>(Option<&'a RedisStore>);

impl Drop for SendOnDrop<'_> {
    fn drop(&mut self) {
        let Some(store) = self.0 else { return };
        let batch = store.windows.take();
        // Outside a runtime (it is shutting down) the batch is dropped: its callers are told
        // the store is unavailable.
        if let (false, Ok(rt)) = (batch.is_empty(), tokio::runtime::Handle::try_current()) {
            let store = store.clone();
            rt.spawn(async move { store.send_windows(batch).await });
        }
    }
}

/// One decision's three numbers in [`WINDOW`]'s reply: allowed (1, 0, or -1 for an error),
/// remaining, reset in milliseconds.
fn window_hit([allowed, remaining, reset]: [i64; 3]) -> WindowHit {
    WindowHit {
        allowed: allowed == 1,
        remaining: remaining.max(0) as u64,
        reset_after_ms: reset.max(0) as u64,
    }
}

impl RedisStore {
    /// One window decision: sent alone, or queued into the batch going out in this pass of
    /// the runtime (`redis.batch_window_decisions`).
    pub(super) async fn window(
        &self,
        key: &str,
        limit: u64,
        window: Duration,
        kind: WindowKind,
    ) -> StoreResult<WindowHit> {
        let decision = Decision {
            key: key.to_string(),
            kind,
            limit,
            window_ms: ttl_ms(window),
        };
        if !self.batch {
            return self
                .decide(vec![decision])
                .await
                .pop()
                .expect("one decision");
        }
        let (answer, answered) = tokio::sync::oneshot::channel();
        if self.windows.push(Pending { decision, answer }) {
            let mut send = SendOnDrop(Some(self));
            tokio::task::yield_now().await;
            send.0 = None;
            let batch = self.windows.take();
            if batch.len() == 1 {
                self.send_windows(batch).await;
            } else {
                // Others wait on this batch: it must not go away with this request.
                let store = self.clone();
                tokio::spawn(async move { store.send_windows(batch).await });
            }
        }
        answered.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the window decision was dropped".into(),
            ))
        })
    }

    /// Sends queued window decisions, [`MAX_BATCH`] to an `EVALSHA`, and answers each.
    async fn send_windows(&self, mut batch: Vec<Pending>) {
        while !batch.is_empty() {
            let (decisions, answers): (Vec<_>, Vec<_>) = batch
                .drain(..batch.len().min(MAX_BATCH))
                .map(|p| (p.decision, p.answer))
                .unzip();
            for (answer, hit) in answers.into_iter().zip(self.decide(decisions).await) {
                let _ = answer.send(hit);
            }
        }
    }

    /// Runs [`WINDOW`] for `batch`: one result per decision, in order.
    async fn decide(&self, batch: Vec<Decision>) -> Vec<StoreResult<WindowHit>> {
        let n = batch.len();
        let mut keys = Vec::with_capacity(n);
        let mut args: Vec<fred::types::Value> = Vec::with_capacity(n * 4);
        for d in batch {
            keys.push(d.key);
            args.push(match d.kind {
                WindowKind::Sliding => "s".into(),
                WindowKind::Fixed => "f".into(),
            });
            args.push((d.limit.min(i64::MAX as u64) as i64).into());
            args.push(d.window_ms.into());
            // Makes the sorted-set member unique when two hits share a microsecond.
            args.push(format!("{:016x}", rand::random::<u64>()).into());
        }
        match self
            .eval::<fred::types::Value>(&self.scripts.window, keys, args)
            .await
        {
            Ok(reply) => window_replies(reply, n),
            Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
        }
    }
}

/// Reads [`WINDOW`]'s reply for `n` decisions: one result each, in order.
fn window_replies(reply: fred::types::Value, n: usize) -> Vec<StoreResult<WindowHit>> {
    use fred::types::Value;
    let bad = |why: String| {
        (0..n)
            .map(|_| Err(StoreError::Refused(why.clone())))
            .collect()
    };
    let Value::Array(mut parts) = reply else {
        return bad(format!("unexpected window reply {reply:?}"));
    };
    let (Some(Value::Array(errors)), Some(Value::Array(hits)), true) =
        (parts.pop(), parts.pop(), parts.is_empty())
    else {
        return bad("unexpected window reply".into());
    };
    let hits: Vec<i64> = hits.iter().filter_map(Value::as_i64).collect();
    if hits.len() != n * 3 {
        return bad(format!("unexpected window reply {hits:?}"));
    }
    let mut errors = errors
        .into_iter()
        .map(|e| e.as_string().unwrap_or_default());
    hits.as_chunks::<3>()
        .0
        .iter()
        .map(|&c| match c {
            [-1, ..] => Err(StoreError::Refused(errors.next().unwrap_or_default())),
            _ => Ok(window_hit(c)),
        })
        .collect()
}
