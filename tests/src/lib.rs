//! Harness for end-to-end tests: builds the workspace binaries once, starts real node processes on
//! free loopback ports, waits for conditions with bounded polling, and kills everything on drop.
#![forbid(unsafe_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Directory holding the workspace binaries of the profile these tests were built with.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // target/<profile>/deps/<test-exe> → target/<profile>
        let exe = std::env::current_exe().expect("current exe");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf();
        let release = dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build", "--quiet", "--bins", "-p", "storage", "-p", "sidecar",
        ]);
        if release {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("run cargo build");
        assert!(st.success(), "building the binaries failed");
        dir
    })
}

pub fn storage_bin() -> PathBuf {
    bin_dir().join("storage")
}

/// A port that was free a moment ago on `ip`, chosen *below* the kernel's ephemeral range: ports
/// from `bind(0)` can be taken as source ports by any outgoing connection while a test has a process
/// stopped, and then that process cannot listen on its port again when it restarts.
pub fn free_port(ip: &str) -> u16 {
    use rand::Rng;
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u16>().ok())
        })
        .unwrap_or(32768);
    let (from, to) = if low > 12_000 {
        (10_000, low)
    } else {
        (40_000, 60_000)
    };
    // Tests of one binary run in parallel threads of this process: never hand a port out twice,
    // or two tests can both see it free before either binds it.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().expect("ports lock");
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let p = rng.random_range(from..to);
        if !given.contains(&p) && TcpListener::bind((ip, p)).is_ok() {
            given.push(p);
            return p;
        }
    }
    TcpListener::bind((ip, 0))
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The first of `count` consecutive ports on `ip` that were all free a moment ago, for a process
/// that takes ports from a range (a canary plan's `members.ports`). Taken from 61000–65499, above
/// the kernel's usual ephemeral range and outside [`free_port`]'s, and never handed out twice by
/// this test binary.
pub fn free_port_block(ip: &str, count: u16) -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        61_000 + (std::process::id() % 200) as u16 * 10,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..400 {
        let mut first = NEXT.fetch_add(count, Ordering::SeqCst);
        if first + count > 65_500 {
            NEXT.store(61_000 + count, Ordering::SeqCst);
            first = 61_000;
        }
        if (first..first + count).all(|p| TcpListener::bind((ip, p)).is_ok()) {
            return first;
        }
    }
    panic!("no {count} consecutive free ports on {ip} in 61000-65499");
}

fn addr(ip: &str) -> SocketAddr {
    format!("{ip}:{}", free_port(ip)).parse().expect("addr")
}

/// Polls `f` every 50–250 ms until it returns `Some`, for at most `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    let mut delay = Duration::from_millis(50);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(250));
    }
}

/// A child process whose stderr is appended to a log file; killed when dropped.
pub struct Managed {
    pub log: PathBuf,
    child: Option<Child>,
}

impl Managed {
    pub fn new(log: PathBuf) -> Self {
        Self { log, child: None }
    }

    pub fn spawn(&mut self, mut cmd: Command) {
        assert!(
            self.child.is_none(),
            "{} already running",
            self.log.display()
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        self.child = Some(
            cmd.stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn"),
        );
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn child(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits (up to 20 s) until the request `req` builds gets a 2xx answer.
pub async fn wait_ok(what: &str, req: impl Fn() -> reqwest::RequestBuilder) {
    wait_for(what, Duration::from_secs(20), || {
        let sent = req().send();
        async move {
            sent.await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        }
    })
    .await;
}

pub struct NodeProc {
    pub name: String,
    pub data: PathBuf,
    pub rpc: SocketAddr,
    pub gateway: SocketAddr,
    pub cluster: SocketAddr,
    pub peer: SocketAddr,
    pub nbd: SocketAddr,
    pub process: Managed,
}

impl NodeProc {
    /// `storage init` a node in `root/name` with fresh loopback ports.
    pub fn init(root: &Path, name: &str, key: &Path, extra: &[String]) -> Self {
        let ip = "127.0.0.1";
        let n = Self {
            name: name.into(),
            data: root.join(name),
            rpc: addr(ip),
            gateway: addr(ip),
            cluster: addr(ip),
            peer: addr(ip),
            nbd: addr(ip),
            process: Managed::new(root.join(format!("{name}.log"))),
        };
        let mut args: Vec<String> = vec![
            "init".into(),
            "--data".into(),
            n.data.display().to_string(),
            "--swarm-key".into(),
            key.display().to_string(),
            "--peername".into(),
            name.into(),
            "--rpc".into(),
            n.rpc.to_string(),
            "--gateway".into(),
            n.gateway.to_string(),
            "--cluster".into(),
            n.cluster.to_string(),
            "--peer-listen".into(),
            n.peer.to_string(),
            "--nbd".into(),
            n.nbd.to_string(),
            // Every test node is its own failure domain, although all share 127.0.0.1.
            "--block-host".into(),
            format!("host-{name}"),
        ];
        args.extend(extra.iter().cloned());
        let out = run(&storage_bin(), &args);
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        n
    }

    pub fn start(&mut self) {
        let mut cmd = Command::new(storage_bin());
        cmd.args(["daemon", "--data"])
            .arg(&self.data)
            .env("STORAGE_LOG", "info,storage=debug");
        self.process.spawn(cmd);
    }

    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// `start` with extra `storage daemon` flags (e.g. `--transient`), not saved in the config.
    pub fn start_with(&mut self, extra: &[&str]) {
        let mut cmd = Command::new(storage_bin());
        cmd.args(["daemon", "--data"])
            .arg(&self.data)
            .args(extra)
            .env("STORAGE_LOG", "info,storage=debug");
        self.process.spawn(cmd);
    }

    /// Sends SIGTERM and waits up to `limit` for the process to exit; its exit status, or `None`
    /// if it was not running or did not exit in time.
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.process.pid()?;
        let st = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .ok()?;
        if !st.success() {
            return None;
        }
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(s) = self.process.child()?.try_wait().ok().flatten() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// This node's Cluster `/peers` answer, one JSON value per peer (empty on any error).
    pub async fn peers(&self) -> Vec<serde_json::Value> {
        let Ok(r) = http().get(self.cluster_url("/peers")).send().await else {
            return vec![];
        };
        let text = r.text().await.unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn running(&mut self) -> bool {
        self.process.running()
    }

    pub fn peer_id(&self) -> String {
        let text = std::fs::read_to_string(self.data.join("identity.json")).expect("identity");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        v["PeerID"].as_str().expect("PeerID").to_string()
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    /// Runs a client command against this node.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut all = vec![
            "--api".to_string(),
            self.rpc.to_string(),
            "--cluster-api".into(),
            self.cluster.to_string(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        run(&storage_bin(), &all)
    }

    pub fn rpc_url(&self, cmd: &str) -> String {
        format!("http://{}/api/v0/{cmd}", self.rpc)
    }

    pub fn cluster_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.cluster)
    }

    pub fn gateway_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway)
    }

    pub async fn wait_ready(&self) {
        let url = self.rpc_url("id");
        wait_ok(&format!("{} to answer", self.name), || http().post(&url)).await;
    }
}

pub fn run(bin: &Path, args: &[String]) -> Output {
    Command::new(bin).args(args).output().expect("run command")
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// GET `url` and parse the answer as JSON; panics (failing the test) on any error.
pub async fn get_json(url: &str) -> serde_json::Value {
    let r = http().get(url).send().await.expect("GET");
    let status = r.status();
    let text = r.text().await.expect("body");
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("GET {url}: {status}, not JSON ({e}): {text}"))
}

/// A cluster of nodes sharing one swarm key, node 0 bootstrapping the others.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub key: PathBuf,
    pub nodes: Vec<NodeProc>,
}

impl Cluster {
    pub fn key_file(dir: &Path, name: &str) -> PathBuf {
        let out = Command::new(storage_bin())
            .arg("keygen")
            .output()
            .expect("keygen");
        assert!(out.status.success());
        let p = dir.join(name);
        std::fs::write(&p, out.stdout).expect("write key");
        p
    }

    pub async fn start(n: usize, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = Self::key_file(dir.path(), "swarm.key");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut nodes: Vec<NodeProc> = Vec::new();
        for i in 0..n {
            let mut args = extra.clone();
            if i > 0 {
                args.extend(["--bootstrap".to_string(), nodes[0].peer.to_string()]);
            }
            nodes.push(NodeProc::init(
                dir.path(),
                &format!("node{}", i + 1),
                &key,
                &args,
            ));
        }
        for node in nodes.iter_mut() {
            node.start();
        }
        for node in &nodes {
            node.wait_ready().await;
        }
        let c = Self { dir, key, nodes };
        c.wait_members(n).await;
        c
    }

    /// Waits until every running node sees `n` live peers (itself included).
    pub async fn wait_members(&self, n: usize) {
        for node in &self.nodes {
            let url = node.cluster_url("/peers");
            let c = http();
            wait_for(
                &format!("{} to see {n} live peers", node.name),
                Duration::from_secs(20),
                || {
                    let req = c.get(&url).send();
                    async move {
                        let text = req.await.ok()?.text().await.ok()?;
                        let live = text
                            .lines()
                            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                            .filter(|v| v["error"].as_str() == Some(""))
                            .count();
                        (live == n).then_some(())
                    }
                },
            )
            .await;
        }
    }
}

/// Deterministic pseudo-random bytes for test files.
pub fn test_bytes(len: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

pub mod fixture;

pub fn sidecar_bin() -> PathBuf {
    bin_dir().join("sidecar")
}

/// A sidecar process started from a TOML config written to `dir`.
pub struct SidecarProc {
    pub config: PathBuf,
    pub admin: SocketAddr,
    pub process: Managed,
}

impl SidecarProc {
    /// `body` is the config without `[admin]`, which the harness adds with a free port (after the
    /// body's top-level keys, which TOML needs before any table).
    pub fn start(dir: &Path, name: &str, body: &str) -> Self {
        Self::start_with_admin(dir, name, body, addr("127.0.0.1"))
    }

    pub fn start_with_admin(dir: &Path, name: &str, body: &str, admin: SocketAddr) -> Self {
        let config = dir.join(format!("{name}.toml"));
        let split = match body.starts_with('[') {
            true => 0,
            false => body.find("\n[").map_or(body.len(), |i| i + 1),
        };
        let (top, rest) = body.split_at(split);
        std::fs::write(
            &config,
            format!("{top}[admin]\nlisten = \"{admin}\"\n\n{rest}"),
        )
        .expect("write config");
        let mut s = Self {
            config,
            admin,
            process: Managed::new(dir.join(format!("{name}.log"))),
        };
        s.spawn();
        s
    }

    pub fn spawn(&mut self) {
        let mut cmd = Command::new(sidecar_bin());
        cmd.arg("run").arg(&self.config);
        self.process.spawn(cmd);
    }

    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    pub fn child(&mut self) -> Option<&mut Child> {
        self.process.child()
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// An admin API call with an optional JSON body: the status and the answer as JSON
    /// (`Null` when it is empty or not JSON).
    pub async fn admin_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = http().request(method, self.admin_url(path));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("admin call");
        let status = r.status().as_u16();
        let text = r.text().await.expect("admin answer");
        (status, serde_json::from_str(&text).unwrap_or_default())
    }

    /// The sidecar's `/metrics` text.
    pub async fn metrics(&self) -> String {
        http()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    pub async fn wait_ready(&self) {
        let url = self.admin_url("/ready");
        wait_ok("sidecar ready", || http().get(&url)).await;
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }
}

/// A free loopback address, for configs written by tests.
pub fn free_addr() -> SocketAddr {
    addr("127.0.0.1")
}

/// One host of a mesh: a storage node behind its sidecar, the node's peer traffic leaving through
/// the sidecar's outbound listener.
pub struct MeshHost {
    pub node: NodeProc,
    pub sidecar: SidecarProc,
    /// Public addresses (the sidecar's).
    pub rpc: SocketAddr,
    pub cluster: SocketAddr,
    pub peer: SocketAddr,
    pub nbd: SocketAddr,
}

impl MeshHost {
    pub fn rpc_url(&self, cmd: &str) -> String {
        format!("http://{}/api/v0/{cmd}", self.rpc)
    }
    pub fn cluster_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.cluster)
    }
}

/// `n` hosts on loopback, like `deploy/local/cluster` but on free ports. `policy` is extra sidecar
/// TOML (e.g. breaker settings).
pub async fn start_mesh(dir: &Path, n: usize, policy: &str) -> Vec<MeshHost> {
    start_mesh_with(dir, n, policy, false, &[]).await
}

/// Like [`start_mesh`], with extra `storage init` flags for every node.
pub async fn start_mesh_nodes(
    dir: &Path,
    n: usize,
    policy: &str,
    node_flags: &[&str],
) -> Vec<MeshHost> {
    start_mesh_with(dir, n, policy, false, node_flags).await
}

/// Like [`start_mesh`], with graceful degradation wired as in `deploy/local`: each sidecar knows
/// the others' admin APIs (`[mesh] peers`) and fails reads over to the other hosts' RPC ports.
pub async fn start_mesh_degrading(dir: &Path, n: usize, policy: &str) -> Vec<MeshHost> {
    start_mesh_with(dir, n, policy, true, &[]).await
}

async fn start_mesh_with(
    dir: &Path,
    n: usize,
    policy: &str,
    degrade: bool,
    node_flags: &[&str],
) -> Vec<MeshHost> {
    let key = Cluster::key_file(dir, "swarm.key");
    type Pubs = (SocketAddr, SocketAddr, SocketAddr, SocketAddr, SocketAddr);
    let pubs: Vec<Pubs> = (0..n)
        .map(|_| {
            (
                addr("127.0.0.1"),
                addr("127.0.0.1"),
                addr("127.0.0.1"),
                addr("127.0.0.1"),
                addr("127.0.0.1"),
            )
        })
        .collect();
    let peers: Vec<String> = pubs.iter().map(|p| format!("\"{}\"", p.2)).collect();
    let admins: Vec<SocketAddr> = (0..n).map(|_| addr("127.0.0.1")).collect();
    let mut hosts = Vec::new();
    for (i, (rpc, cluster, peer, out, nbd)) in pubs.iter().enumerate() {
        let mut extra = vec![
            "--advertise".to_string(),
            peer.to_string(),
            "--outbound-proxy".to_string(),
            out.to_string(),
        ];
        extra.extend(node_flags.iter().map(|f| f.to_string()));
        if i > 0 {
            extra.extend(["--bootstrap".to_string(), pubs[0].2.to_string()]);
        }
        let node = NodeProc::init(dir, &format!("node{}", i + 1), &key, &extra);
        let others = |f: &dyn Fn(usize) -> String| {
            (0..n)
                .filter(|&j| j != i)
                .map(|j| format!("\"{}\"", f(j)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (failover, mesh) = if degrade {
            (
                format!("failover = [{}]\n", others(&|j| pubs[j].0.to_string())),
                format!(
                    "[mesh]\npeers = [{}]\n\n",
                    others(&|j| admins[j].to_string())
                ),
            )
        } else {
            (String::new(), String::new())
        };
        let cfg = format!(
            "{mesh}[[listener]]\nname = \"rpc\"\nlisten = \"{rpc}\"\nupstream = \"{}\"\n{failover}\n\
             [[listener]]\nname = \"cluster\"\nlisten = \"{cluster}\"\nupstream = \"{}\"\n\n\
             [[listener]]\nname = \"nbd\"\nlisten = \"{nbd}\"\nupstream = \"{}\"\nprotocol = \"tcp\"\n\n\
             [[listener]]\nname = \"peer-in\"\nlisten = \"{peer}\"\nupstream = \"{}\"\nclass = \"replication\"\n\n\
             [[listener]]\nname = \"peer-out\"\nlisten = \"{out}\"\ndirection = \"outbound\"\nallowed_upstreams = [{}]\nclass = \"replication\"\n\n\
             [[class_rule]]\nname = \"peer-hello\"\npath_prefix = \"/peer/v1/hello\"\nclass = \"control\"\n\n{policy}",
            node.rpc,
            node.cluster,
            node.nbd,
            node.peer,
            peers.join(", ")
        );
        let sidecar =
            SidecarProc::start_with_admin(dir, &format!("sidecar{}", i + 1), &cfg, admins[i]);
        hosts.push(MeshHost {
            node,
            sidecar,
            rpc: *rpc,
            cluster: *cluster,
            peer: *peer,
            nbd: *nbd,
        });
    }
    for h in hosts.iter_mut() {
        h.sidecar.wait_ready().await;
        h.node.start();
    }
    for h in &hosts {
        h.node.wait_ready().await;
    }
    // Everyone sees everyone, through the sidecars.
    for h in &hosts {
        let url = h.cluster_url("/peers");
        wait_for("mesh membership", Duration::from_secs(20), || {
            let req = http().get(&url).send();
            async move {
                let t = req.await.ok()?.text().await.ok()?;
                (t.lines().filter(|l| l.contains("\"error\":\"\"")).count() == n).then_some(())
            }
        })
        .await;
    }
    hosts
}

/// The `canary` binary, built once (the common `bin_dir` build covers storage and sidecar).
pub fn canary_bin() -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let dir = bin_dir();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--bins", "-p", "canary"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        assert!(
            cmd.status().expect("cargo build").success(),
            "building canary failed"
        );
    });
    dir.join("canary")
}
