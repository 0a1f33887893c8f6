//! The smaller imports: crypto, workers, upstream, log, metrics and clock.
use super::HostState;
use crate::bindings::wasmgate::plugin::{clock, crypto, log, metrics, upstream, workers};

impl crypto::Host for HostState {
    fn sha256(&mut self, data: Vec<u8>) -> Vec<u8> {
        use sha2::Digest;
        sha2::Sha256::digest(&data).to_vec()
    }
    fn hmac_sha256(&mut self, key: Vec<u8>, data: Vec<u8>) -> Vec<u8> {
        use hmac::Mac;
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
        mac.update(&data);
        mac.finalize().into_bytes().to_vec()
    }
    fn constant_time_eq(&mut self, a: Vec<u8>, b: Vec<u8>) -> bool {
        use subtle::ConstantTimeEq;
        a.len() == b.len() && bool::from(a.ct_eq(&b))
    }
    fn rsa_pkcs1_sha256_verify(
        &mut self,
        modulus: Vec<u8>,
        exponent: Vec<u8>,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> bool {
        let key = ring::signature::RsaPublicKeyComponents {
            n: &modulus,
            e: &exponent,
        };
        key.verify(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            &message,
            &signature,
        )
        .is_ok()
    }
    fn ecdsa_p256_sha256_verify(
        &mut self,
        x: Vec<u8>,
        y: Vec<u8>,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> bool {
        if x.len() != 32 || y.len() != 32 {
            return false;
        }
        // The uncompressed SEC1 point: 0x04, x, y.
        let mut point = Vec::with_capacity(65);
        point.push(4);
        point.extend_from_slice(&x);
        point.extend_from_slice(&y);
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point)
            .verify(&message, &signature)
            .is_ok()
    }
    fn random_bytes(&mut self, len: u32) -> Vec<u8> {
        let mut v = vec![0u8; len.min(1024) as usize];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut v);
        v
    }
}

impl workers::Host for HostState {
    fn active(&mut self) -> Vec<workers::Worker> {
        if !self.grants.workers {
            return Vec::new();
        }
        self.services
            .workers
            .active()
            .into_iter()
            .map(|w| workers::Worker {
                gpu_utilization: w.gpu_utilization(),
                gpu_json: w.gpu.as_ref().map(|g| g.to_string()),
                id: w.id,
                status: w.status,
                region: w.region,
                queue_depth: w.queue_depth,
                heartbeat_age_ms: w.heartbeat_age_ms,
            })
            .collect()
    }
}

impl upstream::Host for HostState {
    fn targets(&mut self) -> Vec<upstream::Target> {
        let Some(u) = &self.req.upstream else {
            return Vec::new();
        };
        u.targets()
            .into_iter()
            .map(|t| upstream::Target {
                address: t.address,
                healthy: t.healthy,
                in_flight: t.in_flight,
                region: t.region,
                workers: t.workers,
            })
            .collect()
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) {
        let plugin = self.grants.plugin.as_str();
        let request_id = self
            .req
            .request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        match level {
            log::Level::Trace => tracing::trace!(plugin, request_id, "{message}"),
            log::Level::Debug => tracing::debug!(plugin, request_id, "{message}"),
            log::Level::Info => tracing::info!(plugin, request_id, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, request_id, "{message}"),
            log::Level::Error => tracing::error!(plugin, request_id, "{message}"),
        }
    }
}

impl metrics::Host for HostState {
    fn counter_add(&mut self, name: String, value: u64) {
        HostState::counter_add(self, name.as_bytes(), value);
    }
    fn histogram_observe(&mut self, name: String, value: f64) {
        HostState::histogram_observe(self, &name, value);
    }
}

impl clock::Host for HostState {
    fn now_ms(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
    fn monotonic_ns(&mut self) -> u64 {
        crate::services::monotonic_ns()
    }
}
