//! The sidecar split as the controller drives it: install/renew/remove on every target listener,
//! and the per-tick arm samples taken from the cumulative counters of `GET /split/{listener}`.
use super::Error;
use crate::decide::{ArmCounts, ArmSample};
use crate::stats::latency::Histogram;
use sidecar::admin::api::{
    Outcomes, SplitSpec, SplitStatus, Subset, SubsetFault, SubsetStatus, Ttl,
};
use sidecar::admin::client::AdminClient;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// One subset to route to: its name and, per listener, its address.
#[derive(Clone, Debug)]
pub struct SubsetTarget {
    /// `candidate`, `baseline` or `bake`.
    pub name: String,
    /// Listener name → upstream address.
    pub addrs: BTreeMap<String, SocketAddr>,
    /// A rehearsal fault on this subset's requests.
    pub fault: Option<SubsetFault>,
}

/// The split on one target's listeners, owned by one controller id.
pub struct SplitDriver {
    /// The sidecar admin client.
    pub admin: AdminClient,
    /// Listener names.
    pub listeners: Vec<String>,
    /// This run's controller id.
    pub controller: String,
    ttl: Duration,
    sticky: bool,
    seed: u64,
    last: BTreeMap<String, SplitStatus>,
}

/// Refuses a second rollout on a node: any live split on one of `listeners` belongs to another
/// controller (this run has not installed one yet). Checked before any member starts.
pub async fn refuse_other_controller(
    node: &str,
    admin: SocketAddr,
    listeners: &[String],
) -> Result<(), Error> {
    let client = AdminClient::new(&format!("http://{admin}"))
        .map_err(|e| Error::Env(format!("admin client: {e}")))?;
    for l in listeners {
        let live = client
            .get_split(l)
            .await
            .map_err(|e| Error::Env(format!("GET /split/{l}: {e}")))?;
        if let Some(st) = live.filter(|s| s.remaining_ms > 0) {
            let owner = st.controller.as_deref().unwrap_or("(no controller id)");
            return Err(Error::Env(format!(
                "{node}: another controller, {owner}, is rolling out here (its split on listener \
                 {l:?} is live, {} ms of its TTL left); one rollout per node at a time: wait for \
                 it to finish, or `canary abort` it",
                st.remaining_ms
            )));
        }
    }
    Ok(())
}

impl SplitDriver {
    /// A driver for `listeners` on the sidecar at `admin`.
    pub fn new(
        admin: SocketAddr,
        listeners: Vec<String>,
        controller: String,
        ttl: Duration,
        sticky: bool,
        seed: u64,
    ) -> Result<Self, Error> {
        let admin = AdminClient::new(&format!("http://{admin}"))
            .map_err(|e| Error::Env(format!("admin client: {e}")))?;
        Ok(SplitDriver {
            admin,
            listeners,
            controller,
            ttl,
            sticky,
            seed,
            last: BTreeMap::new(),
        })
    }

    /// PUTs the split (installs it, or renews it with new weights) on every listener.
    /// A 409 (another controller's split) is an environment failure naming the owner.
    pub async fn put(&mut self, subsets: &[(SubsetTarget, u32)]) -> Result<(), Error> {
        for l in &self.listeners {
            let spec = SplitSpec {
                subsets: subsets
                    .iter()
                    .map(|(s, w)| Subset {
                        name: s.name.clone(),
                        addr: s.addrs[l].to_string(),
                        weight: *w,
                        fault: s.fault,
                    })
                    .collect(),
                ttl: Some(Ttl(self.ttl)),
                sticky: self.sticky,
                controller: Some(self.controller.clone()),
                seed: Some(self.seed),
            };
            if let Err(e) = self.admin.put_split(l, &spec).await {
                return Err(Error::Env(if e.status() == Some(409) {
                    format!(
                        "listener {l:?}: another controller's split is live (409); one rollout \
                         per node at a time: {e}"
                    )
                } else {
                    format!("PUT /split/{l}: {e}")
                }));
            }
        }
        Ok(())
    }

    /// Removes the split from every listener (best effort over all of them).
    pub async fn delete(&mut self) -> Result<(), Error> {
        let mut first = None;
        for l in &self.listeners {
            if let Err(e) = self.admin.delete_split(l).await {
                first.get_or_insert(Error::Env(format!("DELETE /split/{l}: {e}")));
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Reads the counters, and returns the arms' samples since the last read: `(candidate arm,
    /// baseline arm)` where the baseline arm is subset `baseline_subset`. A new `generation`
    /// (the split was reinstalled, e.g. after it expired) counts from zero.
    pub async fn sample(
        &mut self,
        cand: &str,
        base: &str,
    ) -> Result<(ArmSample, ArmSample), Error> {
        let (mut c, mut b) = (ArmSample::default(), ArmSample::default());
        for l in self.listeners.clone() {
            let now = self
                .admin
                .get_split(&l)
                .await
                .map_err(|e| Error::Env(format!("GET /split/{l}: {e}")))?;
            let Some(now) = now else { continue };
            let prev = self.last.get(&l).filter(|p| p.generation == now.generation);
            add(
                &mut c,
                diff(now.subset(cand), prev.and_then(|p| p.subset(cand))),
            );
            add(
                &mut b,
                diff(now.subset(base), prev.and_then(|p| p.subset(base))),
            );
            self.last.insert(l, now);
        }
        Ok((c, b))
    }
}

fn add(to: &mut ArmSample, s: ArmSample) {
    to.counts.requests += s.counts.requests;
    to.counts.errors_5xx += s.counts.errors_5xx;
    to.counts.local_errors += s.counts.local_errors;
    to.counts.timeouts += s.counts.timeouts;
    to.latency.add(&s.latency);
}

fn sub(a: &Outcomes, b: &Outcomes) -> ArmCounts {
    ArmCounts {
        requests: a.total().saturating_sub(b.total()),
        errors_5xx: a.upstream_5xx.saturating_sub(b.upstream_5xx),
        local_errors: a.local_error.saturating_sub(b.local_error),
        timeouts: a.timeout.saturating_sub(b.timeout),
    }
}

/// A subset's per-attempt counts and latency since `prev` (or since zero).
fn diff(now: Option<&SubsetStatus>, prev: Option<&SubsetStatus>) -> ArmSample {
    let Some(now) = now else {
        return ArmSample::default();
    };
    let zero = Outcomes::default();
    let counts = sub(&now.attempts, prev.map_or(&zero, |p| &p.attempts));
    let lat = &now.latency;
    let mut buckets = lat.counts.clone();
    if let Some(p) = prev.filter(|p| p.latency.counts.len() == buckets.len()) {
        for (a, b) in buckets.iter_mut().zip(&p.latency.counts) {
            *a = a.saturating_sub(*b);
        }
    }
    let latency = if buckets.len() == lat.bounds_seconds.len() + 1 {
        Histogram {
            bounds: lat.bounds_seconds.clone(),
            counts: buckets,
        }
    } else {
        Histogram::default()
    };
    ArmSample { counts, latency }
}

/// Sum of `bulwark_split_attempts_total{subset="NAME"}` over every listener in a Prometheus
/// text (process-cumulative: it survives the split's removal).
pub fn metric_attempts(text: &str, subset: &str) -> u64 {
    let needle = format!("subset=\"{subset}\"");
    text.lines()
        .filter(|l| l.starts_with("bulwark_split_attempts_total{") && l.contains(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_attempts_sums_listeners_and_outcomes() {
        let t = "# HELP x\nbulwark_split_attempts_total{listener=\"rpc\",subset=\"candidate\",outcome=\"ok\"} 10\n\
                 bulwark_split_attempts_total{listener=\"gw\",subset=\"candidate\",outcome=\"upstream_5xx\"} 2\n\
                 bulwark_split_attempts_total{listener=\"rpc\",subset=\"stable\",outcome=\"ok\"} 99\n";
        assert_eq!(metric_attempts(t, "candidate"), 12);
        assert_eq!(metric_attempts(t, "stable"), 99);
    }
}
