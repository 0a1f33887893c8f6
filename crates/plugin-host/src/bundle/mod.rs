//! The built-in bundle (`wit/builtin-bundle.wit`): several built-in plugins ("members") in one
//! component, so that a route's consecutive members run with one instance and one call per
//! request instead of one each. Each member is still a [`LoadedPlugin`] of its own — its own
//! settings, grants, key namespace, metrics, outcome, statistics, fail policy and state — and
//! the host scopes every import a member calls to that member. What is shared is the
//! component's instances (their linear memory: the members are wasmgate's own code) and the
//! call.
//!
//! A run ([`run`]): the session packs the request head once ([`codec::encode_head`]); the
//! component runs the members whose bit is set, each answering `request` calls from the head
//! and handing what it changed to `bundle.commit` ([`codec::apply_effects`]), which applies
//! it as the `request` and `metrics` imports would. A trap is the fault of the member that
//! had not committed yet; the members after it run again in a fresh instance.
pub mod codec;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::Component;

use crate::bindings::bundle::{BuiltinBundle, BuiltinBundlePre, MemberInit};
use crate::bindings::Action;
use crate::engine::PluginEngine;
use crate::host::{Grants, HostState};
use crate::plugin::{adopt, budget_ticks, new_store, CallFailure, LoadedPlugin};
use crate::pool::{Checkout, Pooled, Pools};
use crate::services::HostServices;
use crate::settings::{high_water, PluginSettings};
use crate::{PluginError, Result};

/// The interface only a bundle imports (`wasmgate:plugin/bundle@<version>`).
pub const INTERFACE: &str = "wasmgate:plugin/bundle@";

/// The phase a bundle runs: members implement `on-request-headers` and nothing else.
const MEMBER_PHASES: &str = "request-headers";

/// One member, as the bundle's instances need it: who it is and what it may do.
struct MemberSpec {
    name: String,
    granted: Vec<String>,
    settings: PluginSettings,
}

/// A loaded bundle: its component, members and instances.
pub struct Bundle {
    /// sha256 of the component.
    pub sha256: String,
    /// Whether the compiled code came from the disk cache.
    pub from_cache: bool,
    pre: BuiltinBundlePre<HostState>,
    engine: wasmtime::Engine,
    services: Arc<HostServices>,
    inits: Vec<MemberInit>,
    members: Vec<MemberSpec>,
    /// Its instances, shared by the members.
    pub(crate) pools: Pools<BuiltinBundle>,
    /// The largest of the members' memory caps: one linear memory serves them all.
    memory_bytes: usize,
    /// The largest of the members' instance limits.
    max_instances: usize,
    /// The smallest of the members' use limits.
    max_uses: u64,
    /// Instances made.
    pub instantiations: AtomicU64,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field(
                "members",
                &self.members.iter().map(|m| &m.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Bundle {
    /// Compiles the bundle `wasm`, sets up `members` (built-in name and settings, in chain
    /// order) in a probe instance, and returns one plugin per member. An error names the
    /// member at fault.
    pub async fn load(
        engine: &PluginEngine,
        services: Arc<HostServices>,
        wasm: &[u8],
        members: Vec<(String, PluginSettings)>,
    ) -> Result<Vec<Arc<LoadedPlugin>>> {
        if members.is_empty() || members.len() > 64 {
            return Err(PluginError::Init(format!(
                "a bundle runs 1 to 64 members, not {}",
                members.len()
            )));
        }
        let sha256 = crate::engine::sha256_hex(wasm);
        let (component, from_cache): (Component, bool) = engine.compile(wasm)?;
        let pre = engine
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PluginError::World(format!("{e:#}")))?;
        let pre = BuiltinBundlePre::new(pre).map_err(|e| PluginError::World(format!("{e:#}")))?;
        let inits = members
            .iter()
            .map(|(plugin, s)| MemberInit {
                plugin: plugin.clone(),
                config: s.config_json.clone(),
            })
            .collect();
        let mut bundle = Bundle {
            sha256,
            from_cache,
            pre,
            engine: engine.engine.clone(),
            services,
            inits,
            members: members
                .iter()
                .map(|(name, settings)| MemberSpec {
                    name: name.clone(),
                    granted: Vec::new(),
                    settings: settings.clone(),
                })
                .collect(),
            pools: Pools::default(),
            memory_bytes: members
                .iter()
                .map(|(_, s)| s.memory_bytes)
                .max()
                .unwrap_or(0),
            max_instances: members
                .iter()
                .map(|(_, s)| s.max_instances)
                .max()
                .unwrap_or(1),
            max_uses: members.iter().map(|(_, s)| s.max_uses).min().unwrap_or(1),
            instantiations: AtomicU64::new(0),
        };
        let (_, infos) = bundle.instantiate(None).await.map_err(PluginError::Init)?;
        let mut adopted = Vec::new();
        for ((name, settings), info) in members.iter().zip(infos) {
            let a = adopt(info, settings).map_err(|e| PluginError::Init(format!("{name}: {e}")))?;
            if a.name != *name {
                return Err(PluginError::Init(format!(
                    "bundle member `{name}` says its name is `{}`",
                    a.name
                )));
            }
            if a.phases.names() != [MEMBER_PHASES] {
                return Err(PluginError::Init(format!(
                    "bundle member `{name}` declares phases {:?}: a bundle runs {MEMBER_PHASES} only",
                    a.phases.names()
                )));
            }
            adopted.push(a);
        }
        for (spec, a) in bundle.members.iter_mut().zip(&adopted) {
            spec.granted = a.granted.clone();
        }
        // The probe's grants were made before the members' were known: make a fresh one.
        let bundle = Arc::new(bundle);
        let (probe, _) = bundle.instantiate(None).await.map_err(PluginError::Init)?;
        bundle.pools.keep_probe(probe);
        Ok(adopted
            .into_iter()
            .zip(members)
            .enumerate()
            .map(|(i, (a, (_, settings)))| {
                Arc::new(LoadedPlugin::member(bundle.clone(), i as u32, a, settings))
            })
            .collect())
    }

    /// The members' names, in order.
    pub fn member_names(&self) -> Vec<&str> {
        self.members.iter().map(|m| m.name.as_str()).collect()
    }

    /// Each member's grants for requests of `tenant`.
    fn grants(&self, tenant: Option<&str>) -> Vec<Arc<Grants>> {
        self.members
            .iter()
            .map(|m| {
                Arc::new(Grants::new(
                    &m.name,
                    tenant,
                    &self.services,
                    &m.granted,
                    &m.settings,
                ))
            })
            .collect()
    }

    /// A new instance for `tenant`, its members set up; the members' infos.
    async fn instantiate(
        &self,
        tenant: Option<&str>,
    ) -> std::result::Result<(Pooled<BuiltinBundle>, Vec<crate::bindings::PluginInfo>), String>
    {
        let grants = self.grants(tenant);
        let mut state = HostState::new(grants[0].clone(), self.services.clone(), self.memory_bytes);
        state.member_grants = grants;
        // Instantiation and the members' init get 10 budgets of each.
        let ticks: u64 = self
            .members
            .iter()
            .map(|m| budget_ticks(m.settings.cpu_budget_ms) * 10)
            .sum();
        let mut store = new_store(&self.engine, state, ticks);
        let bindings = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| format!("instantiation failed: {e:#}"))?;
        let infos = bindings
            .call_init_members(&mut store, &self.inits)
            .await
            .map_err(|e| format!("init trapped: {e:#}"))??;
        if infos.len() != self.members.len() {
            return Err(format!(
                "init-members returned {} members for {}",
                infos.len(),
                self.members.len()
            ));
        }
        self.instantiations.fetch_add(1, Ordering::Relaxed);
        Ok((Pooled::new(store, bindings), infos))
    }

    /// An instance for a request of `tenant`.
    pub(crate) async fn checkout(
        &self,
        tenant: Option<&str>,
    ) -> std::result::Result<Checkout<BuiltinBundle>, CallFailure> {
        let make = async || {
            self.instantiate(tenant)
                .await
                .map(|(inst, _)| inst)
                .map_err(CallFailure::Trap)
        };
        self.pools.checkout(tenant, self.max_instances, make).await
    }

    /// The CPU deadline of a run: the budgets of its members added up.
    pub(crate) fn run_ticks(&self, run: u64) -> u64 {
        self.members
            .iter()
            .enumerate()
            .filter(|(i, _)| run & (1 << i) != 0)
            .map(|(_, m)| budget_ticks(m.settings.cpu_budget_ms))
            .sum::<u64>()
            .max(1)
    }

    /// Returns an instance after a run (retired by the smallest of the members' use limits and
    /// the high-water mark of the largest memory cap).
    pub(crate) fn give_back(&self, c: Checkout<BuiltinBundle>) {
        c.give_back_used(self.max_uses, high_water(self.memory_bytes));
    }
}

/// What one member did in a run, recorded by `commit`.
#[derive(Debug)]
pub(crate) struct MemberResult {
    /// Its index in the bundle.
    pub member: u32,
    /// Its action.
    pub action: Action,
    /// It asked not to see this response's body.
    pub skip_response_body: bool,
    /// When it committed.
    pub at: Instant,
}

/// The state of a run in progress, in the instance's store.
#[derive(Debug)]
pub(crate) struct BundleRun {
    /// The members to run (bit i = member i).
    pub run: u64,
    /// The member running now (the next to commit); `None` once the last has.
    pub current: Option<u32>,
    /// The tenant the instance serves: a member that changes it ends the run.
    pub tenant: Option<String>,
    /// What each member that committed did, in order.
    pub results: Vec<MemberResult>,
}

impl BundleRun {
    /// A run of the members in `run`, for requests of `tenant`; `results` is an empty vector
    /// to fill (the instance's, kept from run to run).
    pub(crate) fn new(
        run: u64,
        tenant: Option<String>,
        mut results: Vec<MemberResult>,
    ) -> BundleRun {
        results.clear();
        results.reserve(run.count_ones() as usize);
        BundleRun {
            run,
            current: next_member(run, None),
            tenant,
            results,
        }
    }
}

/// The first member of `run` after `after` (or the first of all).
pub(crate) fn next_member(run: u64, after: Option<u32>) -> Option<u32> {
    let from = after.map_or(0, |a| a + 1);
    if from >= 64 {
        return None;
    }
    let rest = run & (u64::MAX << from);
    (rest != 0).then(|| rest.trailing_zeros())
}

#[cfg(test)]
mod tests {
    use super::next_member;

    #[test]
    fn members_follow_in_bit_order() {
        assert_eq!(next_member(0b1011, None), Some(0));
        assert_eq!(next_member(0b1011, Some(0)), Some(1));
        assert_eq!(next_member(0b1011, Some(1)), Some(3));
        assert_eq!(next_member(0b1011, Some(3)), None);
        assert_eq!(next_member(0, None), None);
        assert_eq!(next_member(1 << 63, Some(62)), Some(63));
        assert_eq!(next_member(1 << 63, Some(63)), None);
    }
}
