//! The `kv` imports: the plugin's namespace in the state store, and the keys outside it that
//! its grants let it read.
use std::sync::Arc;
use std::time::Duration;

use wasmgate_state::{Store, StoreError, WindowKind};

use super::HostState;
use crate::bindings::wasmgate::plugin::kv;

/// Longest key (relative) a plugin may use.
const MAX_KEY_LEN: usize = 512;

fn check_key(key: &str) -> Result<(), kv::KvError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN || key.chars().any(char::is_control) {
        return Err(kv::KvError::Denied(format!(
            "keys must be 1-{MAX_KEY_LEN} bytes without control characters"
        )));
    }
    Ok(())
}

impl HostState {
    fn kv_granted(&self) -> Result<(), kv::KvError> {
        if self.grants.kv {
            Ok(())
        } else {
            Err(kv::KvError::Denied("capability `kv` not granted".into()))
        }
    }

    /// The namespaced key.
    fn kv_key(&self, key: &str) -> Result<String, kv::KvError> {
        self.kv_granted()?;
        check_key(key)?;
        let prefix = &self.grants.kv_prefix;
        let mut k = String::with_capacity(prefix.len() + key.len());
        k.push_str(prefix);
        k.push_str(key);
        Ok(k)
    }

    /// An absolute key outside the namespace, for reading only.
    fn shared_key<'k>(&self, key: &'k str) -> Result<&'k str, kv::KvError> {
        self.kv_granted()?;
        check_key(key)?;
        if crate::settings::read_allowed(&self.grants.kv_read, key) {
            Ok(key)
        } else {
            Err(kv::KvError::Denied(format!(
                "reading `{key}` is not granted (the manifest's kv_read)"
            )))
        }
    }

    /// The store (a cheap clone, so a call's future does not borrow the state).
    fn kv_store(&self) -> Arc<dyn Store> {
        self.services.store.clone()
    }

    /// Awaits a store call, crediting the wait to the CPU budget. A call that completes when
    /// first polled (the memory store's) waited for nothing: the clock is only read for one
    /// that does not.
    async fn timed<T>(
        &mut self,
        call: impl std::future::Future<Output = wasmgate_state::StoreResult<T>>,
    ) -> Result<T, kv::KvError> {
        let mut call = std::pin::pin!(call);
        let mut waiting_since = None;
        let r = std::future::poll_fn(|cx| {
            let p = call.as_mut().poll(cx);
            if p.is_pending() {
                waiting_since.get_or_insert_with(std::time::Instant::now);
            }
            p
        })
        .await;
        if let Some(since) = waiting_since {
            self.io_wait += since.elapsed();
        }
        r.map_err(|e| match e {
            StoreError::Unavailable(m) => kv::KvError::Unavailable(m),
            StoreError::Refused(m) => kv::KvError::Refused(m),
        })
    }
}

fn ttl(ms: Option<u64>) -> Option<Duration> {
    ms.map(Duration::from_millis)
}

impl HostState {
    /// One window hit in the plugin's namespace (both `kv` window imports).
    async fn hit(
        &mut self,
        key: &str,
        limit: u64,
        window_ms: u64,
        kind: WindowKind,
    ) -> Result<kv::Window, kv::KvError> {
        let (key, s) = (self.kv_key(key)?, self.kv_store());
        let window = Duration::from_millis(window_ms.max(1));
        let w = self.timed(s.window_hit(&key, limit, window, kind)).await?;
        Ok(kv::Window {
            allowed: w.allowed,
            remaining: w.remaining,
            reset_after_ms: w.reset_after_ms,
        })
    }
}

impl kv::Host for HostState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, kv::KvError> {
        let (key, s) = (self.kv_key(&key)?, self.kv_store());
        self.timed(s.get(&key)).await
    }
    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), kv::KvError> {
        let (key, s) = (self.kv_key(&key)?, self.kv_store());
        self.timed(s.set(&key, value, ttl(ttl_ms))).await
    }
    async fn incr(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, kv::KvError> {
        let (key, s) = (self.kv_key(&key)?, self.kv_store());
        self.timed(s.incr(&key, delta, ttl(ttl_ms))).await
    }
    async fn delete(&mut self, key: String) -> Result<bool, kv::KvError> {
        let (key, s) = (self.kv_key(&key)?, self.kv_store());
        self.timed(s.delete(&key)).await
    }
    async fn window_hit(
        &mut self,
        key: String,
        limit: u64,
        window_ms: u64,
    ) -> Result<kv::Window, kv::KvError> {
        self.hit(&key, limit, window_ms, WindowKind::Sliding).await
    }
    async fn fixed_window_hit(
        &mut self,
        key: String,
        limit: u64,
        window_ms: u64,
    ) -> Result<kv::Window, kv::KvError> {
        self.hit(&key, limit, window_ms, WindowKind::Fixed).await
    }
    async fn set_add(&mut self, key: String, member: String) -> Result<bool, kv::KvError> {
        let (key, s) = (self.kv_key(&key)?, self.kv_store());
        self.timed(s.set_add(&key, &member)).await
    }
    async fn set_remove(&mut self, key: String, member: String) -> Result<bool, kv::KvError> {
        let (key, s) = (self.kv_key(&key)?, self.kv_store());
        self.timed(s.set_remove(&key, &member)).await
    }
    async fn set_members(&mut self, key: String) -> Result<Vec<String>, kv::KvError> {
        let (key, s) = (self.kv_key(&key)?, self.kv_store());
        self.timed(s.set_members(&key)).await
    }
    async fn set_card(&mut self, key: String) -> Result<u64, kv::KvError> {
        let (key, s) = (self.kv_key(&key)?, self.kv_store());
        self.timed(s.set_card(&key)).await
    }
    async fn set_contains(&mut self, key: String, member: String) -> Result<bool, kv::KvError> {
        let (key, s) = (self.kv_key(&key)?, self.kv_store());
        self.timed(s.set_contains(&key, &member)).await
    }
    async fn put_indexed(
        &mut self,
        index: String,
        key: String,
        value: Vec<u8>,
        ttl_ms: u64,
        max_entries: u64,
    ) -> Result<u64, kv::KvError> {
        let (index, s) = (self.kv_key(&index)?, self.kv_store());
        check_key(&key)?;
        let prefix = self.grants.kv_prefix.clone();
        let ttl = Duration::from_millis(ttl_ms.max(1));
        self.timed(s.put_indexed(&index, &prefix, &key, value, ttl, max_entries))
            .await
    }
    async fn shared_get(&mut self, key: String) -> Result<Option<Vec<u8>>, kv::KvError> {
        let s = self.kv_store();
        let key = self.shared_key(&key)?;
        self.timed(s.get(key)).await
    }
    async fn shared_set_contains(
        &mut self,
        key: String,
        member: String,
    ) -> Result<bool, kv::KvError> {
        let s = self.kv_store();
        let key = self.shared_key(&key)?;
        self.timed(s.set_contains(key, &member)).await
    }
}
