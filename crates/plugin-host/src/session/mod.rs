//! One request's pass through a plugin chain. The proxy creates a [`RequestSession`] after
//! routing, runs the request phases, moves headers in and out, runs the response phases, and
//! drops the session when the response body is done: `on-log` then runs off the request path
//! and the instances go back to their pools.
mod bundle;

use std::sync::Arc;

use http::HeaderMap;
use wasmtime::Store;

use crate::bindings::{Action, GatewayPlugin, LocalResponse};
use crate::host::{HostState, RequestState};
use crate::plugin::{CallFailure, LoadedPlugin};
use crate::pool::Checkout;
use crate::runtime::PluginList;
use crate::settings::FailPolicy;

/// What the chain decided about a request.
#[derive(Debug)]
pub enum Decision {
    /// Go on to the upstream (with a target hint from a router plugin, if any).
    Continue {
        /// `host:port` a plugin asked for.
        upstream_hint: Option<String>,
    },
    /// Answer locally.
    Respond(LocalResponse),
}

/// Where the request phase goes after a plugin (or a bundle run).
struct Step {
    /// The next plugin of the chain to run.
    next: usize,
    /// A target a plugin named (`continue-to`).
    hint: Option<String>,
    /// A plugin's answer: the chain stops.
    answer: Option<LocalResponse>,
}

/// A fail-closed plugin failed: the request gets `500 plugin_error`.
#[derive(Debug, Clone)]
pub struct PluginFailure {
    /// The plugin.
    pub plugin: String,
    /// What happened.
    pub failure: CallFailure,
}

/// What one plugin did for a request, as the access log reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Outcome {
    /// Not called (no phase ran yet, or the chain stopped before it).
    #[default]
    NotRun,
    /// Called, and let the request go on.
    Continued,
    /// Named the upstream target (`continue-to`).
    Routed,
    /// Answered the request itself (a refusal, a cache hit, a preflight...).
    Answered,
    /// Not active (disabled, or failed to start): skipped for the rest of the request.
    Skipped,
    /// Failed and was skipped for the rest of the request (fail-open).
    FailedOpen,
    /// Failed and failed the request (fail-closed).
    Failed,
}

impl Outcome {
    /// The name in the access log.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::NotRun => "not_run",
            Outcome::Continued => "continue",
            Outcome::Routed => "routed",
            Outcome::Answered => "answered",
            Outcome::Skipped => "skipped",
            Outcome::FailedOpen => "failed_open",
            Outcome::Failed => "failed",
        }
    }
}

/// One plugin call, for traces.
#[derive(Debug, Clone, Copy)]
pub struct CallTiming {
    /// The plugin's position in the chain.
    pub plugin: usize,
    /// The export: `on-request-headers`, `on-response-headers`...
    pub phase: &'static str,
    /// When the call started.
    pub start: std::time::Instant,
    /// How long it took (waiting on the store included).
    pub duration: std::time::Duration,
    /// It failed (a trap or a budget kill).
    pub failed: bool,
}

/// Each plugin of a request's chain with what it did (the ones that ran), in chain order,
/// and, when asked for ([`RequestSession::time_calls`]), every call's timing.
#[derive(Debug, Clone, Default)]
pub struct PluginOutcomes {
    plugins: Option<PluginList>,
    outcomes: Vec<Outcome>,
    /// The calls, in the order they were made.
    pub calls: Vec<CallTiming>,
    /// Ask the session to time its calls (the request is traced).
    pub timed: bool,
}

impl PluginOutcomes {
    /// The name of the plugin at chain position `i`.
    pub fn plugin_name(&self, i: usize) -> &str {
        self.plugins
            .as_ref()
            .and_then(|p| p.get(i))
            .map_or("", |p| p.name.as_str())
    }

    /// `(plugin name, outcome)` for every plugin that was called or skipped (a plugin that does
    /// not serve the request's tenant is left out, as one not on the route is).
    pub fn iter(&self) -> impl Iterator<Item = (&str, Outcome)> {
        self.plugins
            .iter()
            .flat_map(|p| p.iter())
            .zip(&self.outcomes)
            .filter(|(_, o)| **o != Outcome::NotRun)
            .map(|(p, o)| (p.name.as_str(), *o))
    }
}

impl Slot {
    /// Skipped for the rest of the request: inactive, or failed open.
    fn skipped(&self) -> bool {
        matches!(self.outcome, Outcome::Skipped | Outcome::FailedOpen)
    }

    /// Holds an instance that can take a call: not one whose call was dropped mid-way (a
    /// client that went away), which is retired when the session ends.
    fn callable(&self) -> bool {
        self.checkout
            .as_ref()
            .and_then(|c| c.inst.as_ref())
            .is_some_and(|i| !i.in_call)
    }
}

/// What a request holds for one plugin of its chain.
#[derive(Default)]
pub(crate) struct Slot {
    checkout: Option<Checkout>,
    /// What the plugin did; [`Slot::skipped`] follows from it.
    outcome: Outcome,
    /// The plugin asked not to see this response's body (`skip-response-body`).
    no_response_body: bool,
}

/// A request's plugins and the instances it holds.
pub struct RequestSession {
    plugins: PluginList,
    slots: Vec<Slot>,
    /// The `on-log` pass was started: dropping the session (even mid-pass, e.g. when the
    /// runtime shuts down and cancels it) only returns the instances, never spawns another.
    logging: bool,
    /// The request as plugins see and change it.
    pub state: Box<RequestState>,
    /// Every call's timing, kept while tracing samples the request.
    calls: Option<Vec<CallTiming>>,
}

impl std::fmt::Debug for RequestSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestSession")
            .field("plugins", &self.plugins.len())
            .finish()
    }
}

impl RequestSession {
    /// A session over `plugins` (the route's chain), in chain order.
    pub fn new(plugins: PluginList, state: Box<RequestState>) -> Self {
        let slots = (0..plugins.len()).map(|_| Slot::default()).collect();
        RequestSession {
            plugins,
            slots,
            logging: false,
            state,
            calls: None,
        }
    }

    /// Keep every call's timing from now on (for the request's trace).
    pub fn time_calls(&mut self) {
        self.calls.get_or_insert_with(Vec::new);
    }

    fn wants(&self, phase: impl Fn(&LoadedPlugin) -> bool) -> bool {
        self.plugins
            .iter()
            .zip(&self.slots)
            .any(|(p, s)| phase(p) && !s.skipped())
    }

    /// Whether a plugin implements `on-request-body`.
    pub fn wants_request_body(&self) -> bool {
        self.wants(|p| p.phases.request_body)
    }

    /// Whether a plugin asked for the whole request body before the upstream request
    /// (`buffer-request-body`).
    pub fn buffers_request_body(&self) -> bool {
        self.wants(|p| p.phases.buffer_request_body)
    }

    /// Whether a plugin implements `on-response-body` and did not skip it for this request.
    pub fn wants_response_body(&self) -> bool {
        self.plugins
            .iter()
            .zip(&self.slots)
            .any(|(p, s)| p.phases.response_body && !s.skipped() && !s.no_response_body)
    }

    /// Writes what each plugin did so far into `out` (for the access log and the trace),
    /// reusing its buffers: the request and response phases both record into one.
    pub fn record_outcomes(&self, out: &mut PluginOutcomes) {
        if out.plugins.is_none() {
            out.plugins = Some(self.plugins.clone());
        }
        out.outcomes.clear();
        out.outcomes.extend(self.slots.iter().map(|s| s.outcome));
        out.calls.clear();
        out.calls
            .extend_from_slice(self.calls.as_deref().unwrap_or_default());
    }

    /// Runs `on-request-headers` through the chain, in order. Consecutive members of a
    /// built-in bundle run together, in one call ([`crate::bundle`]).
    pub async fn request_headers(&mut self) -> Result<Decision, PluginFailure> {
        let mut hint = None;
        let mut i = 0;
        while i < self.plugins.len() {
            let step = if let Some((bundle, _)) = self.plugins[i].bundle_member() {
                let bundle = bundle.clone();
                let end = (i..self.plugins.len())
                    .find(|&k| {
                        !self.plugins[k]
                            .bundle_member()
                            .is_some_and(|(b, _)| Arc::ptr_eq(b, &bundle))
                    })
                    .unwrap_or(self.plugins.len());
                self.run_bundle(&bundle, i, end).await?
            } else {
                self.run_request_headers(i).await?
            };
            if let Some(target) = step.hint {
                hint = Some(target);
            }
            if let Some(resp) = step.answer {
                return Ok(Decision::Respond(resp));
            }
            i = step.next;
        }
        Ok(Decision::Continue {
            upstream_hint: hint,
        })
    }

    /// Runs `on-request-headers` of plugin `i` (not a bundle member).
    async fn run_request_headers(&mut self, i: usize) -> Result<Step, PluginFailure> {
        let mut step = Step {
            next: i + 1,
            hint: None,
            answer: None,
        };
        if !self.plugins[i].phases.request_headers {
            return Ok(step);
        }
        let action = self
            .run(i, "on-request-headers", async |b, s| {
                b.call_on_request_headers(s).await
            })
            .await?;
        self.release_if_done(i);
        match action {
            Some(Action::Continue) | None => {}
            Some(Action::ContinueTo(target)) => {
                self.slots[i].outcome = Outcome::Routed;
                step.hint = Some(target);
            }
            Some(Action::Respond(resp)) => {
                self.slots[i].outcome = Outcome::Answered;
                step.answer = Some(resp);
            }
        }
        Ok(step)
    }

    /// Runs `on-request-body` for one chunk through the chain, in order. `Some` is a local
    /// answer: the request must not reach the upstream.
    pub async fn request_body(
        &mut self,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Option<LocalResponse>, PluginFailure> {
        for i in 0..self.plugins.len() {
            if !self.plugins[i].phases.request_body {
                continue;
            }
            let answer = self
                .run(i, "on-request-body", async |b, s| {
                    b.call_on_request_body(s, chunk, end_of_stream).await
                })
                .await?;
            if let Some(Action::Respond(resp)) = answer {
                return Ok(Some(resp));
            }
        }
        Ok(None)
    }

    /// Runs `on-response-headers` in reverse chain order (the last plugin to see the request is
    /// the first to see the response). `headers` are moved in and back out.
    pub async fn response_headers(
        &mut self,
        status: u16,
        headers: &mut HeaderMap,
    ) -> Result<(), PluginFailure> {
        self.state.response_status = Some(status);
        self.state.response_headers = std::mem::take(headers);
        // One growth of the map for the queued headers, not one per power of two they cross.
        self.state
            .response_headers
            .reserve(self.state.queued_response_headers.len());
        for h in self.state.queued_response_headers.drain(..) {
            h.apply(&mut self.state.response_headers);
        }
        let mut result = Ok(());
        for i in (0..self.plugins.len()).rev() {
            if !self.plugins[i].phases.response_headers {
                continue;
            }
            if let Err(e) = self
                .run(i, "on-response-headers", async |b, s| {
                    b.call_on_response_headers(s).await
                })
                .await
            {
                result = Err(e);
                break;
            }
        }
        *headers = std::mem::take(&mut self.state.response_headers);
        result
    }

    /// Runs `on-response-body` for one chunk through the chain in reverse order; each plugin
    /// gets what the previous one returned.
    pub async fn response_body(
        &mut self,
        chunk: Vec<u8>,
        end_of_stream: bool,
    ) -> Result<Vec<u8>, PluginFailure> {
        let mut chunk = chunk;
        for i in (0..self.plugins.len()).rev() {
            if !self.plugins[i].phases.response_body || self.slots[i].no_response_body {
                continue;
            }
            let out = self
                .run(i, "on-response-body", async |b, s| {
                    b.call_on_response_body(s, &chunk, end_of_stream).await
                })
                .await?;
            if let Some(out) = out {
                chunk = out;
            }
        }
        Ok(chunk)
    }

    /// Makes sure slot `i` holds an instance; `Ok(false)` when the plugin does not run for
    /// this request (the chain is already the route's, so only the tenant is checked here).
    async fn ready(&mut self, i: usize) -> Result<bool, PluginFailure> {
        let (plugin, slot) = (&self.plugins[i], &mut self.slots[i]);
        let tenant = self.state.tenant();
        if slot.skipped() || !plugin.settings.serves_tenant(tenant) {
            return Ok(false);
        }
        if slot.checkout.is_none() {
            match plugin.checkout(tenant).await {
                Ok(c) => slot.checkout = Some(c),
                Err(CallFailure::Inactive) => {
                    slot.outcome = Outcome::Skipped;
                    return Ok(false);
                }
                Err(failure) => return fail(plugin, slot, failure).map(|()| false),
            }
        }
        Ok(true)
    }

    /// Runs one export of plugin `i` for this request; `Ok(None)` when the plugin does not run
    /// (or failed open).
    async fn run<T>(
        &mut self,
        i: usize,
        phase: &'static str,
        export: impl AsyncFnOnce(&GatewayPlugin, &mut Store<HostState>) -> wasmtime::Result<T>,
    ) -> Result<Option<T>, PluginFailure> {
        if !self.ready(i).await? {
            return Ok(None);
        }
        let (plugin, slot) = (&self.plugins[i], &mut self.slots[i]);
        let inst = slot
            .checkout
            .as_mut()
            .and_then(|c| c.inst.as_mut())
            .expect("ready");
        // The clock is read only for a traced request.
        let start = self.calls.is_some().then(std::time::Instant::now);
        let result = plugin.call_with_state(inst, &mut self.state, export).await;
        if let (Some(calls), Some(start)) = (self.calls.as_mut(), start) {
            calls.push(CallTiming {
                plugin: i,
                phase,
                start,
                duration: start.elapsed(),
                failed: result.is_err(),
            });
        }
        if std::mem::take(&mut self.state.skip_response_body) {
            slot.no_response_body = true;
        }
        match result {
            Ok(v) => {
                if slot.outcome == Outcome::NotRun {
                    slot.outcome = Outcome::Continued;
                }
                Ok(Some(v))
            }
            Err(failure) => {
                // The store is unusable after a trap: drop it (a new instance replaces it).
                slot.checkout.take();
                fail(plugin, slot, failure).map(|()| None)
            }
        }
    }

    /// Runs `on-log` for the plugins that want it, then returns every instance to its pool.
    async fn finish(mut self) {
        self.logging = true;
        for i in 0..self.plugins.len() {
            if self.plugins[i].phases.log && self.slots[i].callable() {
                let _ = self
                    .run(i, "on-log", async |b, s| b.call_on_log(s).await)
                    .await;
            }
        }
        self.return_instances();
    }

    fn return_instances(&mut self) {
        for i in 0..self.slots.len() {
            self.give_back(i);
        }
    }

    /// Returns plugin `i`'s instance to its pool at once when it has no phase after
    /// `on-request-headers`: it is free for other requests while this one waits on the
    /// upstream, so fewer instances (and their memories) stay hot under load.
    fn release_if_done(&mut self, i: usize) {
        let ph = &self.plugins[i].phases;
        if !(ph.request_body || ph.response_headers || ph.response_body || ph.log) {
            self.give_back(i);
        }
    }

    fn give_back(&mut self, i: usize) {
        let (plugin, slot) = (&self.plugins[i], &mut self.slots[i]);
        if let Some(c) = slot.checkout.take() {
            c.give_back_used(
                plugin.settings.max_uses,
                plugin.settings.memory_high_water(),
            );
        }
    }
}

/// Applies the plugin's fail policy to a failed call: fail-open skips the plugin for the rest
/// of the request, fail-closed fails the request.
pub(crate) fn fail(
    plugin: &LoadedPlugin,
    slot: &mut Slot,
    failure: CallFailure,
) -> Result<(), PluginFailure> {
    match plugin.fail_policy() {
        FailPolicy::FailOpen => {
            slot.outcome = Outcome::FailedOpen;
            Ok(())
        }
        FailPolicy::FailClosed => {
            slot.outcome = Outcome::Failed;
            Err(PluginFailure {
                plugin: plugin.name.clone(),
                failure,
            })
        }
    }
}

impl Drop for RequestSession {
    fn drop(&mut self) {
        let wants_log = !self.logging
            && self
                .plugins
                .iter()
                .zip(&self.slots)
                .any(|(p, s)| p.phases.log && s.callable());
        if wants_log {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let session = RequestSession {
                    plugins: self.plugins.clone(),
                    slots: std::mem::take(&mut self.slots),
                    logging: true,
                    state: std::mem::take(&mut self.state),
                    calls: None,
                };
                handle.spawn(session.finish());
                return;
            }
        }
        self.return_instances();
    }
}
