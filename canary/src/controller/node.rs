//! What the controller knows of a target node: read from its data directory (`config.toml`,
//! `swarm.key`) and from its sidecar's `/config` (which listener fronts which node port).
use super::Error;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The node ports a sidecar listener can front; a transient member has the same set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Kubo RPC.
    Rpc,
    /// Gateway.
    Gateway,
    /// Cluster REST.
    Cluster,
}

/// A target node as read from its data directory.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// Its data directory.
    pub data: PathBuf,
    /// Kubo RPC address.
    pub rpc: SocketAddr,
    /// Gateway address.
    pub gateway: SocketAddr,
    /// Cluster REST address.
    pub cluster: SocketAddr,
    /// The peer address the node advertises (`peer.advertise`, else its listen address): the
    /// transient members' bootstrap, and its host is where they bind.
    pub advertise: SocketAddr,
    /// The node's `peer.outbound_proxy` (its sidecar's outbound listener), which the transient
    /// members use too, so their peer traffic goes through the node's sidecar.
    pub outbound_proxy: Option<String>,
    /// The swarm key file.
    pub swarm_key: PathBuf,
}

fn field(v: &toml::Value, table: &str, key: &str, file: &Path) -> Result<SocketAddr, Error> {
    v.get(table)
        .and_then(|t| t.get(key))
        .and_then(|x| x.as_str())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Env(format!("{}: no {table}.{key} address", file.display())))
}

impl NodeInfo {
    /// Reads `data/config.toml`; the swarm key must be `data/swarm.key`.
    pub fn read(data: &Path) -> Result<NodeInfo, Error> {
        let file = data.join("config.toml");
        let text = std::fs::read_to_string(&file)
            .map_err(|e| Error::Env(format!("{}: {e}", file.display())))?;
        let v: toml::Value =
            toml::from_str(&text).map_err(|e| Error::Env(format!("{}: {e}", file.display())))?;
        let swarm_key = data.join("swarm.key");
        if !swarm_key.is_file() {
            return Err(Error::Env(format!("{}: missing", swarm_key.display())));
        }
        let peer = field(&v, "peer", "listen", &file)?;
        let opt = |key: &str| {
            v.get("peer")
                .and_then(|t| t.get(key))
                .and_then(|x| x.as_str())
                .map(String::from)
        };
        let advertise = match opt("advertise") {
            None => peer,
            Some(a) => a.parse().map_err(|e| {
                Error::Env(format!(
                    "{}: peer.advertise {a:?} is not an IP:PORT address ({e}); transient members \
                     bind the advertised host",
                    file.display()
                ))
            })?,
        };
        Ok(NodeInfo {
            advertise,
            outbound_proxy: opt("outbound_proxy"),
            data: data.to_path_buf(),
            rpc: field(&v, "api", "rpc", &file)?,
            gateway: field(&v, "api", "gateway", &file)?,
            cluster: field(&v, "api", "cluster", &file)?,
            swarm_key,
        })
    }

    /// The role of the node port `upstream` (a listener's upstream), if it is one of this node's.
    pub fn role_of(&self, upstream: &str) -> Option<Role> {
        let a: SocketAddr = upstream.parse().ok()?;
        [
            (self.rpc, Role::Rpc),
            (self.gateway, Role::Gateway),
            (self.cluster, Role::Cluster),
        ]
        .into_iter()
        .find(|(p, _)| *p == a)
        .map(|(_, r)| r)
    }
}

/// One split listener as the sidecar's `/config` describes it.
#[derive(Clone, Debug)]
pub struct ListenerInfo {
    /// Its name.
    pub name: String,
    /// Where clients reach it.
    pub listen: SocketAddr,
    /// Which node port it fronts.
    pub role: Role,
}

/// Reads the sidecar's listeners from `GET /config` and maps each of `names` to the node port it
/// fronts (by its upstream; failing that by its name: rpc, gateway, cluster).
pub async fn listeners(
    http: &reqwest::Client,
    admin: SocketAddr,
    names: &[String],
    node: &NodeInfo,
) -> Result<Vec<ListenerInfo>, Error> {
    let url = format!("http://{admin}/config");
    let cfg: serde_json::Value = async { http.get(&url).send().await?.json().await }
        .await
        .map_err(|e| Error::Env(format!("sidecar admin {admin}: {e}")))?;
    let all = cfg["listener"].as_array().cloned().unwrap_or_default();
    names
        .iter()
        .map(|name| {
            let l = all
                .iter()
                .find(|l| l["name"].as_str() == Some(name))
                .ok_or_else(|| Error::Env(format!("sidecar {admin} has no listener {name:?}")))?;
            let listen = l["listen"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| Error::Env(format!("listener {name:?}: no listen address")))?;
            let by_name = match name.as_str() {
                "rpc" | "api" => Some(Role::Rpc),
                "gateway" => Some(Role::Gateway),
                "cluster" => Some(Role::Cluster),
                _ => None,
            };
            let role = l["upstream"]
                .as_str()
                .and_then(|u| node.role_of(u))
                .or(by_name)
                .ok_or_else(|| {
                    Error::Env(format!(
                        "listener {name:?}: its upstream is none of the node's rpc, gateway or \
                         cluster ports"
                    ))
                })?;
            Ok(ListenerInfo {
                name: name.clone(),
                listen,
                role,
            })
        })
        .collect()
}

/// SHA-256 of a file, hex, as `sha256sum` prints it (what `storage version` reports).
pub fn digest(path: &Path) -> Result<String, Error> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).map_err(|e| Error::Env(format!("{}: {e}", path.display())))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// The digest the node at `rpc` reports running (`/api/v0/version`).
pub async fn running_digest(http: &reqwest::Client, rpc: SocketAddr) -> Option<String> {
    let url = format!("http://{rpc}/api/v0/version");
    let v: serde_json::Value = http.post(&url).send().await.ok()?.json().await.ok()?;
    v["BinaryDigest"].as_str().map(String::from)
}
