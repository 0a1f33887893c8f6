//! The `router` built-in (docs/plugins/router.md): chooses the upstream target of each request
//! among the route's healthy targets, as the host reports them (`upstream` import), and tells
//! the host with `continue-to`.
//!
//! - `least-connections`: the target with the fewest requests in flight from this gateway.
//! - `region-affinity`: targets tagged with the client's region (from a request header, else
//!   the client network table), least connections among them; the other targets when none of
//!   the region is healthy.
//! - `least-loaded`: the target whose GPU workers (worker registry, `target_tags.workers`)
//!   report the shortest queue, then the lowest GPU utilization; least connections when no
//!   target maps to a live worker.
//!
//! Round-robin needs no plugin: the host does it. Ejected targets are never chosen while a
//! healthy one remains (and the host would not honour such a choice).
use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use wasmgate_plugin_sdk::prelude::*;
use wasmgate_plugin_sdk::upstream::TargetRef as Target;

#[derive(serde::Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum Strategy {
    RoundRobin,
    LeastConnections,
    RegionAffinity,
    LeastLoaded,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    strategy: Strategy,
    #[serde(default = "region_header")]
    region_header: String,
    /// `[cidr, region]` pairs.
    #[serde(default)]
    networks: Vec<(String, String)>,
}

fn region_header() -> String {
    "x-region".into()
}

/// The plugin (a member of the built-in bundle, `guest-plugins/builtins/bundle`).
pub struct Router {
    strategy: Strategy,
    region_header: String,
    networks: Vec<(IpNet, String)>,
    /// Rotates among equally good targets.
    turn: usize,
}

impl Router {
    /// The client's region: the header, else the first network containing its address.
    fn client_region(&self) -> Option<String> {
        if let Some(r) = request::get_header(&self.region_header) {
            let r = r.trim();
            if !r.is_empty() {
                return Some(r.to_ascii_lowercase());
            }
        }
        if self.networks.is_empty() {
            return None;
        }
        let ip: IpAddr = request::client_addr().parse().ok()?;
        self.networks
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .map(|(_, r)| r.clone())
    }

    /// Among the targets `eligible` accepts, the one with the fewest requests in flight; ties
    /// rotate. No allocation: this runs on every request.
    fn least_connections<'t>(
        &mut self,
        targets: &'t [Target<'_>],
        eligible: impl Fn(&Target) -> bool,
    ) -> Option<&'t Target<'t>> {
        let min = targets
            .iter()
            .filter(|t| eligible(t))
            .map(|t| t.in_flight)
            .min()?;
        let tie = |t: &&Target| eligible(t) && t.in_flight == min;
        let n = targets.iter().filter(tie).count();
        self.turn = self.turn.wrapping_add(1);
        targets.iter().filter(tie).nth(self.turn % n)
    }

    fn region_affinity<'t>(
        &mut self,
        targets: &'t [Target<'_>],
        candidate: impl Fn(&Target) -> bool + Copy,
    ) -> Option<&'t Target<'t>> {
        if let Some(region) = self.client_region() {
            let local = |t: &Target| {
                candidate(t) && t.region.is_some_and(|r| r.eq_ignore_ascii_case(&region))
            };
            if let Some(t) = self.least_connections(targets, local) {
                return Some(t);
            }
        }
        self.least_connections(targets, candidate)
    }

    fn least_loaded<'t>(
        &mut self,
        targets: &'t [Target<'_>],
        candidate: impl Fn(&Target) -> bool + Copy,
    ) -> Option<&'t Target<'t>> {
        if targets
            .iter()
            .filter(|t| candidate(t))
            .all(|t| t.workers().next().is_none())
        {
            return self.least_connections(targets, candidate);
        }
        let live: HashMap<String, (f64, f64)> = workers::active()
            .into_iter()
            .map(|w| {
                let queue = w.queue_depth.unwrap_or(0) as f64;
                (w.id, (queue, w.gpu_utilization.unwrap_or(0.0)))
            })
            .collect();
        // (mean queue depth, mean utilization, in flight) of each target with a live worker.
        let mut best: Option<((f64, f64, u32), &Target)> = None;
        for t in targets.iter().filter(|t| candidate(t)) {
            let loads: Vec<&(f64, f64)> = t.workers().filter_map(|w| live.get(w)).collect();
            if loads.is_empty() {
                continue;
            }
            let n = loads.len() as f64;
            let score = (
                loads.iter().map(|l| l.0).sum::<f64>() / n,
                loads.iter().map(|l| l.1).sum::<f64>() / n,
                t.in_flight,
            );
            if best.as_ref().is_none_or(|(b, _)| score < *b) {
                best = Some((score, t));
            }
        }
        match best {
            Some((_, t)) => Some(t),
            None => self.least_connections(targets, candidate),
        }
    }
}

impl Plugin for Router {
    fn new(config: Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        let networks = s
            .networks
            .into_iter()
            .map(|(net, region)| {
                let parsed = net
                    .parse::<IpNet>()
                    .or_else(|_| net.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("networks: `{net}` is not a CIDR block"))?;
                Ok((parsed, region.to_ascii_lowercase()))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Router {
            strategy: s.strategy,
            region_header: s.region_header.to_ascii_lowercase(),
            networks,
            turn: 0,
        })
    }

    fn info(&self) -> Info {
        let info = Info::new("router", env!("CARGO_PKG_VERSION")).phase(Phase::RequestHeaders);
        if self.strategy == Strategy::LeastLoaded {
            info.capability("workers")
        } else {
            info
        }
    }

    fn on_request_headers(&mut self) -> Action {
        if self.strategy == Strategy::RoundRobin {
            return Action::Continue;
        }
        // Borrowed: no allocation per target (docs/plugins/router.md).
        let pick = upstream::with_targets(|all| {
            if all.len() < 2 {
                return None;
            }
            // The healthy targets; all of them when none is (the host then picks anyway).
            let any_healthy = all.iter().any(|t| t.healthy);
            let candidate = move |t: &Target| t.healthy || !any_healthy;
            let pick = match self.strategy {
                Strategy::RoundRobin => None,
                Strategy::LeastConnections => self.least_connections(all, candidate),
                Strategy::RegionAffinity => self.region_affinity(all, candidate),
                Strategy::LeastLoaded => self.least_loaded(all, candidate),
            };
            pick.map(|t| t.address.to_owned())
        });
        match pick {
            Some(address) => Action::ContinueTo(address),
            None => Action::Continue,
        }
    }
}
