//! What a plugin is and how it has done: where it came from, the phases it implements, its
//! state, why a call failed, and its call statistics.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::bindings::Phase;

/// Where a plugin came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", content = "path", rename_all = "lowercase")]
pub enum PluginSource {
    /// Compiled into the binary.
    Builtin,
    /// A `.wasm` file in the plugin folder.
    File(std::path::PathBuf),
}

/// The phases a plugin implements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Phases {
    /// `on-request-headers`.
    pub request_headers: bool,
    /// `on-request-body`.
    pub request_body: bool,
    /// `on-response-headers`.
    pub response_headers: bool,
    /// `on-response-body`.
    pub response_body: bool,
    /// `on-log`.
    pub log: bool,
    /// The `buffer-request-body` capability: `on-request-body` sees the whole body before the
    /// request goes upstream (and its header changes are sent).
    pub buffer_request_body: bool,
}

impl Phases {
    pub(super) fn from_wit(phases: &[Phase]) -> Phases {
        let mut p = Phases::default();
        for phase in phases {
            match phase {
                Phase::RequestHeaders => p.request_headers = true,
                Phase::RequestBody => p.request_body = true,
                Phase::ResponseHeaders => p.response_headers = true,
                Phase::ResponseBody => p.response_body = true,
                Phase::Log => p.log = true,
            }
        }
        p
    }

    /// The phase names, for `/gateway/plugins`.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.request_headers, "request-headers"),
            (self.request_body, "request-body"),
            (self.response_headers, "response-headers"),
            (self.response_body, "response-body"),
            (self.log, "log"),
            (self.buffer_request_body, "request-body-buffered"),
        ]
        .into_iter()
        .filter_map(|(on, n)| on.then_some(n))
        .collect()
    }
}

/// A plugin's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginState {
    /// Runs in the request path.
    Active,
    /// Turned off by an operator.
    Disabled,
    /// Turned off by the host after repeated traps.
    Failed,
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallFailure {
    /// The guest trapped (panic, unreachable, bad memory access...).
    Trap(String),
    /// The CPU budget ran out.
    CpuBudget,
    /// Memory growth beyond the cap was refused and the guest died of it.
    Memory,
    /// Every instance the plugin may have is busy.
    NoInstance,
    /// The plugin is not active.
    Inactive,
}

impl std::fmt::Display for CallFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallFailure::Trap(m) => write!(f, "trap: {m}"),
            CallFailure::CpuBudget => f.write_str("CPU budget exhausted"),
            CallFailure::Memory => f.write_str("memory cap reached"),
            CallFailure::NoInstance => f.write_str("instance limit reached"),
            CallFailure::Inactive => f.write_str("plugin is not active"),
        }
    }
}

/// Call statistics.
#[derive(Debug)]
pub struct PluginStats {
    /// Phase calls made.
    pub calls: AtomicU64,
    /// Calls that trapped (any cause).
    pub traps: AtomicU64,
    /// Calls stopped by the CPU budget.
    pub cpu_kills: AtomicU64,
    /// Calls stopped by the memory cap.
    pub memory_kills: AtomicU64,
    /// Instances created.
    pub instantiations: AtomicU64,
    /// Log2-ns buckets of call durations, for percentiles without locks.
    buckets: [AtomicU64; 40],
}

impl Default for PluginStats {
    fn default() -> Self {
        PluginStats {
            calls: AtomicU64::new(0),
            traps: AtomicU64::new(0),
            cpu_kills: AtomicU64::new(0),
            memory_kills: AtomicU64::new(0),
            instantiations: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl PluginStats {
    pub(crate) fn record_duration(&self, d: Duration) {
        let ns = d.as_nanos().max(1) as u64;
        let b = (63 - ns.leading_zeros() as usize).min(39);
        self.buckets[b].fetch_add(1, Ordering::Relaxed);
    }

    /// An approximate percentile of call duration in microseconds (bucket midpoint).
    pub fn percentile_us(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let target = (total as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                let lo = (1u64 << i) as f64;
                return Some(lo * 1.5 / 1000.0);
            }
        }
        None
    }
}
