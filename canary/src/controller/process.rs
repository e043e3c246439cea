//! The candidate and fresh-baseline processes: `storage init` + `storage daemon --transient` of a
//! given binary on the target node's host (the host of its advertised peer address) with ports
//! from the plan's `members.ports` range (five per member: RPC, gateway, cluster REST, peer, NBD),
//! advertising that peer port, sending peer traffic through the node's own outbound proxy (if its
//! config has one) and joined through the node's advertised peer address — the way
//! `deploy/local` admits transient members (deploy/README.md). A member's pid is written to
//! `members.pid_dir/NODE-NAME.pid` while it runs. Stopped with SIGTERM, a bounded wait, then
//! SIGKILL.
//!
//! Each member has a *watchdog*: a detached `sh` in a process group of its own (so neither a
//! SIGKILL of the controller nor a terminal's Ctrl-C reaches it) that polls the controller's pid
//! every second and, once the controller is gone without having stopped the member, waits out the
//! split's TTL (so the sidecar has stopped routing to the member before it goes), then sends the
//! member SIGTERM (SIGKILL after 5 s) and removes its pid file (if it still names that member).
//! A controller that stops a member itself kills the watchdog first.
use super::node::{NodeInfo, Role};
use super::Error;
use crate::decide::ProcessState;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// How long a started member has to answer `/api/v0/id`.
const START_LIMIT: Duration = Duration::from_secs(20);
/// How long SIGTERM gets before SIGKILL.
const STOP_LIMIT: Duration = Duration::from_secs(5);

/// A transient member this controller started.
pub struct Member {
    /// `candidate` or `baseline`.
    pub name: String,
    /// The binary it runs.
    pub binary: PathBuf,
    /// Kubo RPC.
    pub rpc: SocketAddr,
    /// Gateway.
    pub gateway: SocketAddr,
    /// Cluster REST.
    pub cluster: SocketAddr,
    /// Its peer ID.
    pub peer_id: String,
    /// Its pid file, while it exists.
    pub pid_file: Option<PathBuf>,
    child: Option<Child>,
    exited: Option<Option<i32>>,
    watchdog: Option<std::process::Child>,
}

/// What outlives the controller: the member's pid file, and how long after the controller's death
/// the member may go on running (the split's TTL and a margin).
pub struct Leash {
    /// `members.pid_dir/NODE-NAME.pid`, if the plan has a pid dir.
    pub pid_file: Option<PathBuf>,
    /// The watchdog's wait between the controller's death and the member's SIGTERM.
    pub linger: Duration,
}

/// The five ports of one member: RPC, gateway, cluster REST, peer, NBD.
pub type MemberPorts = [u16; 5];

/// Ports for `members` members on `host` from `range` (inclusive): the first ones that can be
/// bound now, five per member. All are chosen before any member starts, so members started
/// together never pick the same port.
pub fn allocate_ports(
    host: IpAddr,
    range: (u16, u16),
    members: usize,
) -> Result<Vec<MemberPorts>, Error> {
    let need = members * 5;
    let free: Vec<u16> = (range.0..=range.1)
        .filter(|&p| TcpListener::bind((host, p)).is_ok())
        .take(need)
        .collect();
    if free.len() < need {
        return Err(Error::Env(format!(
            "transient members need {need} free ports on {host} in {}-{} (members.ports), only {} \
             are free: is another canary's candidate or baseline still running there?",
            range.0,
            range.1,
            free.len()
        )));
    }
    Ok(free
        .chunks(5)
        .map(|c| [c[0], c[1], c[2], c[3], c[4]])
        .collect())
}

fn arg(p: &Path) -> String {
    p.display().to_string()
}

impl Member {
    /// Initialises and starts `binary` as transient member `name` under `dir`, and waits until
    /// it answers. On any failure nothing is left running.
    pub async fn start(
        name: &str,
        binary: &Path,
        dir: &Path,
        node: &NodeInfo,
        ports: MemberPorts,
        leash: Leash,
        http: &reqwest::Client,
    ) -> Result<Member, Error> {
        if !binary.is_file() {
            return Err(Error::Env(format!(
                "{name} binary {} does not exist",
                binary.display()
            )));
        }
        let data = dir.join(name);
        let host = node.advertise.ip();
        let [rpc, gateway, cluster, peer, nbd] = ports.map(|p| SocketAddr::new(host, p));
        let mut init = Command::new(binary);
        init.args(["init", "--data", &arg(&data), "--swarm-key"])
            .arg(&node.swarm_key)
            .args(["--peername", &format!("canary-{name}")])
            .args(["--rpc", &rpc.to_string(), "--gateway", &gateway.to_string()])
            .args(["--cluster", &cluster.to_string()])
            .args([
                "--peer-listen",
                &peer.to_string(),
                "--nbd",
                &nbd.to_string(),
            ])
            .args(["--advertise", &peer.to_string()])
            .args(["--bootstrap", &node.advertise.to_string()])
            .args(["--block-host", &format!("canary-{name}")])
            .stdin(Stdio::null());
        if let Some(proxy) = &node.outbound_proxy {
            init.args(["--outbound-proxy", proxy]);
        }
        let init = init
            .output()
            .await
            .map_err(|e| Error::Env(format!("{name}: {} init: {e}", binary.display())))?;
        if !init.status.success() {
            return Err(Error::Env(format!(
                "{name}: {} init failed: {}",
                binary.display(),
                String::from_utf8_lossy(&init.stderr).trim()
            )));
        }
        let log = std::fs::File::create(dir.join(format!("{name}.log")))
            .map_err(|e| Error::Env(format!("{name} log: {e}")))?;
        let err = log
            .try_clone()
            .map_err(|e| Error::Env(format!("{name} log: {e}")))?;
        let child = Command::new(binary)
            .args(["daemon", "--transient", "--data", &arg(&data)])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::Env(format!("{name}: {} daemon: {e}", binary.display())))?;
        let mut m = Member {
            name: name.into(),
            binary: binary.into(),
            peer_id: peer_id(&data).unwrap_or_default(),
            rpc,
            gateway,
            cluster,
            pid_file: None,
            child: Some(child),
            exited: None,
            watchdog: None,
        };
        if let (Some(f), Some(pid)) = (leash.pid_file, m.pid()) {
            let written = f
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&f, format!("{pid}\n")));
            if let Err(e) = written {
                m.stop().await;
                return Err(Error::Env(format!("{name} pid file {}: {e}", f.display())));
            }
            m.pid_file = Some(f);
        }
        if let Some(pid) = m.pid() {
            let (ctl, f) = (std::process::id(), m.pid_file.as_deref());
            m.watchdog = spawn_watchdog(ctl, pid, f, leash.linger);
        }
        if let Err(e) = m.wait_ready(http).await {
            m.stop().await;
            return Err(e);
        }
        Ok(m)
    }

    async fn wait_ready(&mut self, http: &reqwest::Client) -> Result<(), Error> {
        let url = format!("http://{}/api/v0/id", self.rpc);
        let start = Instant::now();
        while start.elapsed() < START_LIMIT {
            if let ProcessState::Exited { code } = self.state() {
                return Err(Error::Env(format!(
                    "{} ({}) exited while starting (code {code:?}); see {}.log",
                    self.name,
                    self.binary.display(),
                    self.name
                )));
            }
            if let Ok(r) = http.post(&url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Error::Env(format!(
            "{} did not answer within {START_LIMIT:?}",
            self.name
        )))
    }

    /// The node port playing `role`.
    pub fn port(&self, role: Role) -> SocketAddr {
        match role {
            Role::Rpc => self.rpc,
            Role::Gateway => self.gateway,
            Role::Cluster => self.cluster,
        }
    }

    /// The process's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Running, or exited with its code (`None`: killed by a signal).
    pub fn state(&mut self) -> ProcessState {
        if let Some(code) = self.exited {
            return ProcessState::Exited { code };
        }
        let Some(c) = self.child.as_mut() else {
            return ProcessState::Exited { code: None };
        };
        match c.try_wait() {
            Ok(Some(st)) => {
                self.exited = Some(st.code());
                ProcessState::Exited { code: st.code() }
            }
            _ => ProcessState::Running,
        }
    }

    /// SIGTERM, up to 5 s, then SIGKILL. True when it left cleanly (exit 0 after SIGTERM).
    pub async fn stop(&mut self) -> bool {
        self.end_watchdog();
        let left = self.terminate().await;
        self.remove_pid_file();
        left
    }

    fn end_watchdog(&mut self) {
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }

    fn remove_pid_file(&mut self) {
        if let Some(f) = self.pid_file.take() {
            let _ = std::fs::remove_file(f);
        }
    }

    async fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        if let Ok(Some(_)) = c.try_wait() {
            return false;
        }
        if let Some(pid) = c.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        match tokio::time::timeout(STOP_LIMIT, c.wait()).await {
            Ok(Ok(st)) => st.success(),
            _ => {
                let _ = c.kill().await;
                false
            }
        }
    }
}

impl Drop for Member {
    /// A member dropped unstopped is killed (`kill_on_drop`); its pid file goes with it.
    fn drop(&mut self) {
        self.end_watchdog();
        self.remove_pid_file();
    }
}

/// The member's watchdog (module doc): once process `controller` is gone (or a zombie), `linger`
/// later `member` gets SIGTERM, then SIGKILL after 5 s; then `pid_file` is removed if it still
/// holds `member`'s pid.
fn spawn_watchdog(
    controller: u32,
    member: u32,
    pid_file: Option<&Path>,
    linger: Duration,
) -> Option<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let rm = pid_file.map_or(String::new(), |f| {
        let f = format!("'{}'", f.display().to_string().replace('\'', "'\\''"));
        format!("[ \"$(cat {f} 2>/dev/null)\" = {member} ] && rm -f {f}")
    });
    let linger = linger.as_secs() + u64::from(linger.subsec_nanos() > 0);
    let script = format!(
        "alive() {{ [ -e /proc/$1 ] && [ \"$(cut -d' ' -f3 /proc/$1/stat 2>/dev/null)\" != Z ]; }}\n\
         while alive {controller}; do sleep 1; done\n\
         sleep {linger}\n\
         kill -TERM {member} 2>/dev/null\n\
         i=0; while alive {member} && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done\n\
         alive {member} && kill -KILL {member} 2>/dev/null\n\
         {rm}\n"
    );
    std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

fn peer_id(data: &Path) -> Option<String> {
    let text = std::fs::read_to_string(data.join("identity.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["PeerID"].as_str().map(String::from)
}

/// `DELETE /peers/{id}` on the node's Cluster REST API (`storage peers rm`): a member that did not
/// say goodbye is removed for good.
pub async fn peers_rm(http: &reqwest::Client, cluster: SocketAddr, id: &str) -> Result<(), String> {
    let url = format!("http://{cluster}/peers/{id}");
    let r = http.delete(&url).send().await.map_err(|e| e.to_string())?;
    if r.status().is_success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            r.status(),
            r.text().await.unwrap_or_default()
        ))
    }
}
