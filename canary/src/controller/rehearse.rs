//! `--rehearse abort=500,percent=5` (or `delay=MS,percent=P`): a fault on the candidate's traffic
//! only, so an operator can prove the rollout catches a bad build. It is installed as the
//! candidate subset's `fault` in the sidecar split (the sidecar's own fault layer runs before the
//! split and cannot single out a subset), so it carries the split's TTL and goes with it.
use sidecar::admin::api::SubsetFault;

/// What to inject.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Answer with this status instead of forwarding.
    Abort(u16),
    /// Wait this long before forwarding.
    DelayMs(u64),
}

/// A rehearsal fault: a kind and the percent of candidate requests it hits.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Rehearsal {
    /// Abort or delay.
    pub kind: FaultKind,
    /// Percent of requests, 0 < p ≤ 100.
    pub percent: f64,
}

impl std::str::FromStr for Rehearsal {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (mut kind, mut percent) = (None, None);
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected KEY=VALUE"))?;
            let bad = |e: &dyn std::fmt::Display| format!("{k}={v}: {e}");
            match k.trim() {
                "abort" => {
                    let code: u16 = v.trim().parse().map_err(|e| bad(&e))?;
                    if !(100..=599).contains(&code) {
                        return Err(bad(&"not an HTTP status"));
                    }
                    kind = Some(FaultKind::Abort(code));
                }
                "delay" => kind = Some(FaultKind::DelayMs(v.trim().parse().map_err(|e| bad(&e))?)),
                "percent" => percent = Some(v.trim().parse::<f64>().map_err(|e| bad(&e))?),
                _ => return Err(format!("unknown key {k:?} (abort, delay, percent)")),
            }
        }
        let kind = kind.ok_or("name abort=STATUS or delay=MS")?;
        let percent = percent.ok_or("name percent=P")?;
        if !(percent > 0.0 && percent <= 100.0) {
            return Err(format!("percent must be in (0, 100], got {percent}"));
        }
        Ok(Rehearsal { kind, percent })
    }
}

impl Rehearsal {
    /// The split's per-subset fault for the candidate subset.
    pub fn subset_fault(&self) -> SubsetFault {
        match self.kind {
            FaultKind::Abort(code) => SubsetFault::abort(code, self.percent),
            FaultKind::DelayMs(ms) => SubsetFault::delay(ms, self.percent),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms_and_refuses_nonsense() {
        let r: Rehearsal = "abort=500,percent=5".parse().unwrap();
        assert_eq!(r.kind, FaultKind::Abort(500));
        assert_eq!(r.percent, 5.0);
        let r: Rehearsal = "delay=250,percent=10".parse().unwrap();
        assert_eq!(r.kind, FaultKind::DelayMs(250));
        assert!("abort=500".parse::<Rehearsal>().is_err());
        assert!("abort=5000,percent=5".parse::<Rehearsal>().is_err());
        assert!("abort=500,percent=0".parse::<Rehearsal>().is_err());
        assert!("boom=1,percent=5".parse::<Rehearsal>().is_err());
    }
}
