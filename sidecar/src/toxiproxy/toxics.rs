//! Toxic definitions: the JSON shapes of Toxiproxy's toxics, their attributes (with Toxiproxy's
//! units), and validation of create/update bodies.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// `upstream` = client → server bytes, `downstream` = server → client bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Upstream,
    Downstream,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Upstream => "upstream",
            Stream::Downstream => "downstream",
        }
    }

    pub fn index(self) -> usize {
        match self {
            Stream::Upstream => 0,
            Stream::Downstream => 1,
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "upstream" => Some(Stream::Upstream),
            "downstream" => Some(Stream::Downstream),
            _ => None,
        }
    }
}

/// A toxic's type with its attributes. Units as in Toxiproxy: milliseconds unless noted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "attributes", rename_all = "snake_case")]
pub enum Kind {
    /// Each chunk is delayed `latency ± U[-jitter, +jitter)` ms from its arrival.
    Latency {
        #[serde(default)]
        latency: u64,
        #[serde(default)]
        jitter: u64,
    },
    /// Paces data to `rate` KB/s (0 = unlimited).
    Bandwidth {
        #[serde(default)]
        rate: u64,
    },
    /// Delays the close (after EOF) by `delay` ms.
    SlowClose {
        #[serde(default)]
        delay: u64,
    },
    /// Drops all data; closes the connection after `timeout` ms (0 = never, until removed).
    Timeout {
        #[serde(default)]
        timeout: u64,
    },
    /// On the first chunk after attaching, waits `timeout` ms then resets the connection (RST).
    ResetPeer {
        #[serde(default)]
        timeout: u64,
    },
    /// Splits chunks into slices of `average_size ± size_variation` bytes, `delay` **µs** apart.
    Slicer {
        #[serde(default)]
        average_size: u64,
        #[serde(default)]
        size_variation: u64,
        #[serde(default)]
        delay: u64,
    },
    /// Passes at most `bytes` bytes per connection in this direction, then closes it.
    LimitData {
        #[serde(default)]
        bytes: u64,
    },
    /// Pass-through.
    Noop {},
}

pub const TYPES: &[&str] = &[
    "latency",
    "bandwidth",
    "slow_close",
    "timeout",
    "reset_peer",
    "slicer",
    "limit_data",
    "noop",
];

impl Kind {
    pub fn type_name(&self) -> &'static str {
        match self {
            Kind::Latency { .. } => "latency",
            Kind::Bandwidth { .. } => "bandwidth",
            Kind::SlowClose { .. } => "slow_close",
            Kind::Timeout { .. } => "timeout",
            Kind::ResetPeer { .. } => "reset_peer",
            Kind::Slicer { .. } => "slicer",
            Kind::LimitData { .. } => "limit_data",
            Kind::Noop {} => "noop",
        }
    }

    fn from_parts(ty: &str, attributes: Value) -> Result<Self, ApiErr> {
        if !TYPES.contains(&ty) {
            return Err(ApiErr::bad("invalid toxic type"));
        }
        serde_json::from_value(json!({"type": ty, "attributes": attributes}))
            .map_err(|e| ApiErr::bad(format!("bad request body: {e}")))
    }

    pub fn attributes(&self) -> Value {
        match serde_json::to_value(self) {
            Ok(Value::Object(mut m)) => m.remove("attributes").unwrap_or(json!({})),
            _ => json!({}),
        }
    }
}

/// One toxic on a proxy.
#[derive(Clone, Debug, PartialEq)]
pub struct Toxic {
    pub name: String,
    pub kind: Kind,
    pub stream: Stream,
    pub toxicity: f32,
    /// Bulwark extension: the toxic removes itself this many ms after its last create/update.
    pub ttl_ms: Option<u64>,
    /// Changes on every create/update (process-unique): toxicity is re-rolled per connection for a
    /// new version, and a TTL only removes the version it was set for.
    pub version: u64,
}

/// An API error: `{"error": msg, "status": code}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiErr {
    pub status: u16,
    pub msg: String,
}

impl ApiErr {
    pub fn new(status: u16, msg: impl Into<String>) -> Self {
        Self {
            status,
            msg: msg.into(),
        }
    }
    pub fn bad(msg: impl Into<String>) -> Self {
        Self::new(400, msg)
    }
}

fn obj(body: &Value) -> Result<&Map<String, Value>, ApiErr> {
    body.as_object()
        .ok_or_else(|| ApiErr::bad("bad request body: expected a JSON object"))
}

fn toxicity_of(v: Option<&Value>, default: f32) -> Result<f32, ApiErr> {
    match v {
        None | Some(Value::Null) => Ok(default),
        Some(v) => {
            let t = v
                .as_f64()
                .ok_or_else(|| ApiErr::bad("bad request body: toxicity must be a number"))?;
            if !(0.0..=1.0).contains(&t) {
                return Err(ApiErr::bad("toxicity must be between 0 and 1"));
            }
            Ok(t as f32)
        }
    }
}

fn ttl_of(v: Option<&Value>, default: Option<u64>) -> Result<Option<u64>, ApiErr> {
    match v {
        None => Ok(default),
        Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| ApiErr::bad("bad request body: ttl_ms must be a non-negative integer")),
    }
}

impl Toxic {
    /// A toxic from a `POST /proxies/{p}/toxics` body. Defaults: `stream=downstream`,
    /// `toxicity=1.0`, `name=<type>_<stream>`. `direction` is accepted as an alias of `stream`
    /// (the noxious client sends it).
    pub fn from_create(body: &Value, version: u64) -> Result<Self, ApiErr> {
        let m = obj(body)?;
        let ty = match m.get("type") {
            Some(Value::String(s)) => s.as_str(),
            None | Some(Value::Null) => return Err(ApiErr::bad("invalid toxic type")),
            Some(_) => return Err(ApiErr::bad("bad request body: type must be a string")),
        };
        let stream = match m.get("stream").or_else(|| m.get("direction")) {
            None | Some(Value::Null) => Stream::Downstream,
            Some(Value::String(s)) if s.is_empty() => Stream::Downstream,
            Some(Value::String(s)) => Stream::parse(s).ok_or_else(|| {
                ApiErr::bad("stream was invalid, can be either upstream or downstream")
            })?,
            Some(_) => {
                return Err(ApiErr::bad(
                    "stream was invalid, can be either upstream or downstream",
                ))
            }
        };
        let attributes = match m.get("attributes") {
            None | Some(Value::Null) => json!({}),
            Some(a @ Value::Object(_)) => a.clone(),
            Some(_) => {
                return Err(ApiErr::bad(
                    "bad request body: attributes must be an object",
                ))
            }
        };
        let kind = Kind::from_parts(ty, attributes)?;
        let name = match m.get("name") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            None | Some(Value::Null) | Some(Value::String(_)) => {
                format!("{ty}_{}", stream.as_str())
            }
            Some(_) => return Err(ApiErr::bad("bad request body: name must be a string")),
        };
        Ok(Toxic {
            name,
            kind,
            stream,
            toxicity: toxicity_of(m.get("toxicity"), 1.0)?,
            ttl_ms: ttl_of(m.get("ttl_ms"), None)?,
            version,
        })
    }

    /// Applies a `POST/PATCH /proxies/{p}/toxics/{t}` body: attributes are decoded onto the
    /// current values (partial), `toxicity` and `ttl_ms` replace theirs when given; name, type and
    /// stream do not change.
    pub fn updated(&self, body: &Value, version: u64) -> Result<Self, ApiErr> {
        let m = obj(body)?;
        let mut attrs = match self.kind.attributes() {
            Value::Object(a) => a,
            _ => Map::new(),
        };
        match m.get("attributes") {
            None | Some(Value::Null) => {}
            Some(Value::Object(a)) => {
                for (k, v) in a {
                    attrs.insert(k.clone(), v.clone());
                }
            }
            Some(_) => {
                return Err(ApiErr::bad(
                    "bad request body: attributes must be an object",
                ))
            }
        }
        Ok(Toxic {
            name: self.name.clone(),
            kind: Kind::from_parts(self.kind.type_name(), Value::Object(attrs))?,
            stream: self.stream,
            toxicity: toxicity_of(m.get("toxicity"), self.toxicity)?,
            ttl_ms: ttl_of(m.get("ttl_ms"), self.ttl_ms)?,
            version,
        })
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "name": self.name,
            "type": self.kind.type_name(),
            "stream": self.stream.as_str(),
            "toxicity": self.toxicity,
            "attributes": self.kind.attributes(),
        });
        if let Some(t) = self.ttl_ms {
            v["ttl_ms"] = json!(t);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toxiproxy_toxic_defaults_and_validation() {
        let t = Toxic::from_create(&json!({"type": "latency", "attributes": {"latency": 5}}), 1)
            .unwrap();
        assert_eq!(t.name, "latency_downstream");
        assert_eq!(t.stream, Stream::Downstream);
        assert_eq!(t.toxicity, 1.0);
        assert_eq!(
            t.kind,
            Kind::Latency {
                latency: 5,
                jitter: 0
            }
        );
        assert_eq!(
            t.to_json(),
            json!({"name": "latency_downstream", "type": "latency", "stream": "downstream",
                   "toxicity": 1.0, "attributes": {"latency": 5, "jitter": 0}})
        );
        let t = Toxic::from_create(
            &json!({"type": "noop", "direction": "upstream", "toxicity": 0.0}),
            1,
        )
        .unwrap();
        assert_eq!(
            (t.name.as_str(), t.stream, t.toxicity),
            ("noop_upstream", Stream::Upstream, 0.0)
        );
        assert_eq!(t.to_json()["attributes"], json!({}));
        let e = Toxic::from_create(&json!({"type": "nope"}), 1).unwrap_err();
        assert_eq!((e.status, e.msg.as_str()), (400, "invalid toxic type"));
        let e = Toxic::from_create(&json!({"type": "noop", "stream": "sideways"}), 1).unwrap_err();
        assert!(e.msg.starts_with("stream was invalid"));
        assert!(Toxic::from_create(&json!({"type": "noop", "toxicity": 2}), 1).is_err());
        assert!(Toxic::from_create(
            &json!({"type": "latency", "attributes": {"latency": -1}}),
            1
        )
        .is_err());
    }

    #[test]
    fn toxiproxy_update_is_partial() {
        let t = Toxic::from_create(
            &json!({"type": "latency", "name": "l", "attributes": {"latency": 5, "jitter": 2}, "ttl_ms": 100}),
            1,
        )
        .unwrap();
        let u = t
            .updated(
                &json!({"attributes": {"jitter": 7}, "type": "timeout", "stream": "upstream"}),
                2,
            )
            .unwrap();
        assert_eq!(
            u.kind,
            Kind::Latency {
                latency: 5,
                jitter: 7
            }
        );
        assert_eq!(
            (u.stream, u.ttl_ms, u.version),
            (Stream::Downstream, Some(100), 2)
        );
        let u = u
            .updated(&json!({"toxicity": 0.5, "ttl_ms": null}), 3)
            .unwrap();
        assert_eq!((u.toxicity, u.ttl_ms), (0.5, None));
    }
}
