//! The fault spec as read from the admin API (JSON) and config (TOML), and its validation.

use super::matcher::Matcher;
use crate::classify::TrafficClass;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// No fault lives longer than this.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Upper bound of any delay (fixed, drawn or clamped).
pub const MAX_DELAY_MS: u64 = 10 * 60 * 1000;
/// Upper bound of an id's length (it ends up in headers, logs and URLs).
pub const MAX_ID_LEN: usize = 128;

/// How long a fault lives: a humantime string (`"30s"`, `"10m"`, `"1h 30m"`) or milliseconds.
/// Serialized as a humantime string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ttl(pub Duration);

impl Serialize for Ttl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime_serde::re::humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Ttl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Ttl;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a duration: a humantime string such as \"30s\" or \"10m\", or milliseconds",
                )
            }
            fn visit_u64<E: serde::de::Error>(self, ms: u64) -> Result<Ttl, E> {
                Ok(Ttl(Duration::from_millis(ms)))
            }
            fn visit_i64<E: serde::de::Error>(self, ms: i64) -> Result<Ttl, E> {
                u64::try_from(ms)
                    .map(|ms| Ttl(Duration::from_millis(ms)))
                    .map_err(|_| E::custom(format!("ttl must not be negative, got {ms}")))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Ttl, E> {
                humantime_serde::re::humantime::parse_duration(s.trim())
                    .map(Ttl)
                    .map_err(|e| E::custom(format!("ttl {s:?}: {e}")))
            }
        }
        d.deserialize_any(V)
    }
}

/// What a fault does. Internally tagged: `{"type": "abort", "status": 503}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultKind {
    Abort { status: u16 },
    Delay(Delay),
    Reset,
    Blackhole,
    Corrupt { bytes: u32 },
    Truncate { after_bytes: u64 },
    Bandwidth { bytes_per_sec: u64 },
}

impl FaultKind {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Abort { .. } => "abort",
            Self::Delay(_) => "delay",
            Self::Reset => "reset",
            Self::Blackhole => "blackhole",
            Self::Corrupt { .. } => "corrupt",
            Self::Truncate { .. } => "truncate",
            Self::Bandwidth { .. } => "bandwidth",
        }
    }
}

/// A delay: `{"fixed_ms": 200}` (or `"dist": "fixed"`), `{"dist": "uniform", "min_ms", "max_ms"}`
/// or `{"dist": "normal", "mean_ms", "stddev_ms"}`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawDelay", into = "RawDelay")]
pub enum Delay {
    Fixed { ms: u64 },
    Uniform { min_ms: u64, max_ms: u64 },
    Normal { mean_ms: u64, stddev_ms: u64 },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelay {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dist: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fixed_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mean_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stddev_ms: Option<u64>,
}

impl TryFrom<RawDelay> for Delay {
    type Error = String;

    fn try_from(r: RawDelay) -> Result<Self, String> {
        let dist = r.dist.as_deref().unwrap_or("fixed");
        let only = |allowed: &[&str]| -> Result<(), String> {
            let present = [
                ("fixed_ms", r.fixed_ms.is_some()),
                ("min_ms", r.min_ms.is_some()),
                ("max_ms", r.max_ms.is_some()),
                ("mean_ms", r.mean_ms.is_some()),
                ("stddev_ms", r.stddev_ms.is_some()),
            ];
            match present.iter().find(|(n, p)| *p && !allowed.contains(n)) {
                Some((n, _)) => Err(format!(
                    "delay with dist {dist:?} takes {}, not {n}",
                    allowed.join(" and ")
                )),
                None => Ok(()),
            }
        };
        let need = |v: Option<u64>, name: &str| {
            v.ok_or_else(|| format!("delay with dist {dist:?} needs {name}"))
        };
        let d = match dist {
            "fixed" => {
                only(&["fixed_ms"])?;
                Delay::Fixed {
                    ms: need(r.fixed_ms, "fixed_ms")?,
                }
            }
            "uniform" => {
                only(&["min_ms", "max_ms"])?;
                Delay::Uniform {
                    min_ms: need(r.min_ms, "min_ms")?,
                    max_ms: need(r.max_ms, "max_ms")?,
                }
            }
            "normal" => {
                only(&["mean_ms", "stddev_ms"])?;
                Delay::Normal {
                    mean_ms: need(r.mean_ms, "mean_ms")?,
                    stddev_ms: need(r.stddev_ms, "stddev_ms")?,
                }
            }
            other => {
                return Err(format!(
                    "unknown delay dist {other:?}: expected fixed, uniform or normal"
                ))
            }
        };
        d.validate()?;
        Ok(d)
    }
}

impl From<Delay> for RawDelay {
    fn from(d: Delay) -> Self {
        match d {
            Delay::Fixed { ms } => RawDelay {
                fixed_ms: Some(ms),
                ..Default::default()
            },
            Delay::Uniform { min_ms, max_ms } => RawDelay {
                dist: Some("uniform".into()),
                min_ms: Some(min_ms),
                max_ms: Some(max_ms),
                ..Default::default()
            },
            Delay::Normal { mean_ms, stddev_ms } => RawDelay {
                dist: Some("normal".into()),
                mean_ms: Some(mean_ms),
                stddev_ms: Some(stddev_ms),
                ..Default::default()
            },
        }
    }
}

impl Delay {
    fn validate(&self) -> Result<(), String> {
        let cap = |v: u64, name: &str| {
            if v > MAX_DELAY_MS {
                Err(format!(
                    "delay {name} must be at most {MAX_DELAY_MS} ms, got {v}"
                ))
            } else {
                Ok(())
            }
        };
        match *self {
            Delay::Fixed { ms } => cap(ms, "fixed_ms"),
            Delay::Uniform { min_ms, max_ms } => {
                cap(max_ms, "max_ms")?;
                if min_ms > max_ms {
                    return Err(format!(
                        "delay min_ms ({min_ms}) must not exceed max_ms ({max_ms})"
                    ));
                }
                Ok(())
            }
            Delay::Normal { mean_ms, stddev_ms } => {
                cap(mean_ms, "mean_ms")?;
                cap(stddev_ms, "stddev_ms")
            }
        }
    }

    /// Draws one delay (uniform: inclusive bounds; normal: Box–Muller, clamped to
    /// `0..=MAX_DELAY_MS`).
    pub fn sample(&self, rng: &mut impl Rng) -> Duration {
        let ms = match *self {
            Delay::Fixed { ms } => ms,
            Delay::Uniform { min_ms, max_ms } => rng.random_range(min_ms..=max_ms),
            Delay::Normal { mean_ms, stddev_ms } => {
                // u1 in (0, 1] so ln(u1) is finite.
                let u1 = 1.0 - rng.random::<f64>();
                let u2 = rng.random::<f64>();
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                let v = mean_ms as f64 + z * stddev_ms as f64;
                v.round().clamp(0.0, MAX_DELAY_MS as f64) as u64
            }
        };
        Duration::from_millis(ms)
    }
}

/// `{"name": "x-tenant"}` matches when the header is present, `{"name", "value"}` when one of its
/// values equals `value` exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

fn hundred() -> f64 {
    100.0
}

fn is_hundred(p: &f64) -> bool {
    *p == 100.0
}

/// One fault: what it does, to which requests, how often, for how long.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    pub id: String,
    pub kind: FaultKind,
    /// Mandatory (an `Option` only so that its absence gets a precise message).
    #[serde(default)]
    pub ttl: Option<Ttl>,
    #[serde(default = "hundred", skip_serializing_if = "is_hundred")]
    pub percent: f64,
    /// Path prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderMatch>,
    /// The client's IP address, exactly (no CIDR).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The upstream the request is sent to
    /// ([`UpstreamName`](crate::policy::breaker::UpstreamName)), exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// The listener's name, for layers built with
    /// [`FaultLayer::for_listener`](super::FaultLayer::for_listener).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<TrafficClass>,
}

impl FaultSpec {
    pub fn validate(&self) -> Result<(), String> {
        self.compile().map(|_| ())
    }

    /// Checks every field and pre-parses the matchers.
    pub(super) fn compile(&self) -> Result<Matcher, String> {
        if self.id.is_empty() || self.id.len() > MAX_ID_LEN {
            return Err(format!(
                "fault id must be 1 to {MAX_ID_LEN} characters, got {}",
                self.id.len()
            ));
        }
        if !self
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        {
            return Err(format!(
                "fault id {:?} may only contain ASCII letters, digits, '-', '_', '.' and ':'",
                self.id
            ));
        }
        let id = &self.id;
        match self.ttl {
            None => {
                return Err(format!(
                    "fault {id:?}: ttl is required (e.g. \"ttl\": \"10m\"), so that a crashed \
                     controller cannot leave the fault behind"
                ))
            }
            Some(Ttl(d)) if d.is_zero() || d > MAX_TTL => {
                return Err(format!(
                    "fault {id:?}: ttl must be more than 0 and at most 24h, got {}",
                    humantime_serde::re::humantime::format_duration(d)
                ))
            }
            Some(_) => {}
        }
        if !(0.0..=100.0).contains(&self.percent) {
            return Err(format!(
                "fault {id:?}: percent must be between 0 and 100, got {}",
                self.percent
            ));
        }
        match &self.kind {
            FaultKind::Abort { status } if !(400..=599).contains(status) => {
                return Err(format!(
                    "fault {id:?}: abort status must be between 400 and 599, got {status}"
                ))
            }
            FaultKind::Delay(d) => d.validate().map_err(|e| format!("fault {id:?}: {e}"))?,
            FaultKind::Corrupt { bytes: 0 } => {
                return Err(format!("fault {id:?}: corrupt bytes must be at least 1"))
            }
            FaultKind::Bandwidth { bytes_per_sec: 0 } => {
                return Err(format!(
                    "fault {id:?}: bandwidth bytes_per_sec must be at least 1 (use blackhole to stop traffic)"
                ))
            }
            _ => {}
        }
        Matcher::new(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::fault::{handle_add, FaultRegistry};
    use http::StatusCode;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn normal_delay_is_centred_and_clamped() {
        let mut rng = StdRng::seed_from_u64(5);
        let d = Delay::Normal {
            mean_ms: 200,
            stddev_ms: 50,
        };
        let xs: Vec<u64> = (0..5000)
            .map(|_| d.sample(&mut rng).as_millis() as u64)
            .collect();
        let mean = xs.iter().sum::<u64>() as f64 / xs.len() as f64;
        assert!((190.0..210.0).contains(&mean), "{mean}");
        let within = xs.iter().filter(|x| (150..=250).contains(*x)).count();
        assert!((3000..3800).contains(&within), "{within} within 1σ");
        let wide = Delay::Normal {
            mean_ms: 10,
            stddev_ms: 1000,
        };
        for _ in 0..1000 {
            assert!(wide.sample(&mut rng) <= Duration::from_millis(MAX_DELAY_MS));
        }
    }

    #[test]
    fn invalid_specs_are_refused_with_a_reason() {
        let reg = FaultRegistry::default();
        let bad = |json: &str, want: &str| {
            let e = handle_add(&reg, json.as_bytes()).expect_err(json);
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{json}");
            assert!(e.to_string().contains(want), "{json}: {e}");
        };
        bad(r#"{"id":"x","kind":{"type":"reset"}}"#, "ttl is required");
        bad(
            r#"{"id":"x","kind":{"type":"reset"},"ttl":"25h"}"#,
            "at most 24h",
        );
        bad(
            r#"{"id":"x","kind":{"type":"reset"},"ttl":0}"#,
            "more than 0",
        );
        bad(
            r#"{"id":"x","kind":{"type":"reset"},"ttl":"soon"}"#,
            "ttl \"soon\"",
        );
        bad(
            r#"{"id":"x","kind":{"type":"abort","status":200},"ttl":"1m"}"#,
            "between 400 and 599",
        );
        bad(
            r#"{"id":"x","kind":{"type":"abort","status":600},"ttl":"1m"}"#,
            "between 400 and 599",
        );
        bad(
            r#"{"id":"x","kind":{"type":"explode"},"ttl":"1m"}"#,
            "unknown variant",
        );
        bad(
            r#"{"id":"x","kind":{"type":"delay","dist":"uniform","min_ms":5,"max_ms":1},"ttl":"1m"}"#,
            "must not exceed",
        );
        bad(
            r#"{"id":"x","kind":{"type":"delay","dist":"normal","mean_ms":5},"ttl":"1m"}"#,
            "needs stddev_ms",
        );
        bad(
            r#"{"id":"x","kind":{"type":"delay","fixed_ms":5,"max_ms":9},"ttl":"1m"}"#,
            "not max_ms",
        );
        bad(
            r#"{"id":"x","kind":{"type":"delay","dist":"pareto"},"ttl":"1m"}"#,
            "unknown delay dist",
        );
        bad(
            r#"{"id":"x","kind":{"type":"reset"},"ttl":"1m","percent":101}"#,
            "percent",
        );
        bad(
            r#"{"id":"x","kind":{"type":"reset"},"ttl":"1m","peer":"10.0.0.0/8"}"#,
            "IP address",
        );
        bad(
            r#"{"id":"x","kind":{"type":"reset"},"ttl":"1m","route":"api"}"#,
            "starting with '/'",
        );
        bad(
            r#"{"id":"x","kind":{"type":"reset"},"ttl":"1m","rout":"/api"}"#,
            "unknown field",
        );
        bad(
            r#"{"id":"","kind":{"type":"reset"},"ttl":"1m"}"#,
            "fault id",
        );
        bad(
            r#"{"id":"a b","kind":{"type":"reset"},"ttl":"1m"}"#,
            "fault id",
        );
        bad(
            r#"{"id":"x","kind":{"type":"bandwidth","bytes_per_sec":0},"ttl":"1m"}"#,
            "at least 1",
        );
        bad("not json", "invalid fault");
        assert!(reg.is_empty());
    }

    #[test]
    fn specs_read_from_toml() {
        let s: FaultSpec = toml::from_str(
            r#"
            id = "cut"
            ttl = "5m"
            route = "/ipfs/"
            kind = { type = "truncate", after_bytes = 4096 }
            "#,
        )
        .expect("toml");
        s.validate().expect("valid");
        assert_eq!(s.kind, FaultKind::Truncate { after_bytes: 4096 });
    }
}
