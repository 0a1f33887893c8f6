//! A request's run of consecutive built-in bundle members (`crate::bundle`): one instance and
//! one call for all of them, each member's outcome, statistics and failure its own.
use std::sync::Arc;
use std::time::Instant;

use super::{fail, CallTiming, Outcome, PluginFailure, RequestSession, Step};
use crate::bindings::Action;
use crate::bundle::{codec, Bundle, BundleRun};
use crate::plugin::{classify, PluginState};

impl RequestSession {
    /// Runs `on-request-headers` of the bundle members at chain positions `i..end` (all of
    /// `bundle`), in one call. Members that are inactive, were skipped earlier in the request or
    /// do not serve its tenant are left out. A member that fails costs what its fail policy
    /// says; the members after it run in a fresh instance. So does a member that changes the
    /// tenant: the members after it run in that tenant's instance.
    pub(super) async fn run_bundle(
        &mut self,
        bundle: &Arc<Bundle>,
        i: usize,
        end: usize,
    ) -> Result<Step, PluginFailure> {
        let mut step = Step {
            next: end,
            hint: None,
            answer: None,
        };
        let tenant = self.state.tenant().map(str::to_string);
        // Bundle index -> chain position, for the members of this run.
        let mut at = [usize::MAX; 64];
        let mut run = 0u64;
        for k in i..end {
            let (plugin, slot) = (&self.plugins[k], &mut self.slots[k]);
            let Some((_, member)) = plugin.bundle_member() else {
                continue;
            };
            if slot.skipped() || !plugin.settings.serves_tenant(tenant.as_deref()) {
                continue;
            }
            if plugin.state() != PluginState::Active {
                slot.outcome = Outcome::Skipped;
                continue;
            }
            run |= 1 << member;
            at[member as usize] = k;
        }
        if run == 0 {
            return Ok(step);
        }
        let mut checkout = match bundle.checkout(tenant.as_deref()).await {
            Ok(c) => c,
            Err(failure) => {
                // No instance: the first member fails; the next run tries again without it.
                let k = at[run.trailing_zeros() as usize];
                let plugin = &self.plugins[k];
                let failure = match failure {
                    f @ crate::CallFailure::NoInstance => f,
                    f => plugin.record_failure(f),
                };
                fail(plugin, &mut self.slots[k], failure)?;
                step.next = k + 1;
                return Ok(step);
            }
        };
        let inst = checkout.inst.as_mut().expect("checked out");
        let data = inst.store.data_mut();
        let mut head = std::mem::take(&mut data.head);
        codec::encode_head(&self.state, &mut head);
        std::mem::swap(&mut data.req, &mut self.state);
        data.io_wait = std::time::Duration::ZERO;
        let results = std::mem::take(&mut data.spare_results);
        data.bundle = Some(BundleRun::new(run, tenant, results));
        data.enter_member(run.trailing_zeros());
        inst.store.set_epoch_deadline(bundle.run_ticks(run));
        let started = Instant::now();
        inst.in_call = true;
        let result = inst
            .bindings
            .call_run_request_headers(&mut inst.store, run, &head)
            .await;
        inst.in_call = false;
        let data = inst.store.data_mut();
        std::mem::swap(&mut data.req, &mut self.state);
        data.head = head;
        let mut progress = data.bundle.take().expect("set above");

        let mut since = started;
        for r in progress.results.drain(..) {
            let k = at[r.member as usize];
            self.count_member_call(k, since, r.at - since, false);
            since = r.at;
            let slot = &mut self.slots[k];
            slot.no_response_body |= r.skip_response_body;
            slot.outcome = Outcome::Continued;
            step.next = k + 1;
            match r.action {
                Action::Continue => {}
                Action::ContinueTo(target) => {
                    slot.outcome = Outcome::Routed;
                    step.hint = Some(target);
                }
                Action::Respond(resp) => {
                    slot.outcome = Outcome::Answered;
                    step.answer = Some(resp);
                }
            }
        }
        match result {
            Ok(()) => {
                if step.answer.is_none() && progress.current.is_none() {
                    step.next = end;
                }
                if let Some(inst) = checkout.inst.as_mut() {
                    inst.store.data_mut().spare_results = progress.results;
                }
                bundle.give_back(checkout);
                Ok(step)
            }
            Err(e) => {
                // The member that had not committed failed; the store is unusable.
                let Some(member) = progress.current else {
                    // Every member committed and the call still failed (it ran out of time
                    // returning): their results stand.
                    drop(checkout);
                    step.next = end;
                    return Ok(step);
                };
                let failure = classify(&e, inst.store.data());
                drop(checkout);
                let k = at[member as usize];
                self.count_member_call(k, since, since.elapsed(), true);
                let plugin = &self.plugins[k];
                let failure = plugin.record_failure(failure);
                fail(plugin, &mut self.slots[k], failure)?;
                step.next = k + 1;
                Ok(step)
            }
        }
    }

    /// Counts member `k`'s share of a run as its call: statistics, and the trace's timing.
    fn count_member_call(
        &mut self,
        k: usize,
        start: Instant,
        duration: std::time::Duration,
        failed: bool,
    ) {
        let stats = &self.plugins[k].stats;
        stats
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        stats.record_duration(duration);
        if let Some(calls) = self.calls.as_mut() {
            calls.push(CallTiming {
                plugin: k,
                phase: "on-request-headers",
                start,
                duration,
                failed,
            });
        }
    }
}
