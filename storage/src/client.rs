//! The client half of the CLI: each command is one or two HTTP calls to a running node.

use crate::cli::{exit, Cli, Cmd, PeersCmd, PinCmd};
use futures::StreamExt;
use serde_json::Value;
use std::io::Write;

/// A failed client command: the message to print and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub(crate) fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

pub(crate) type R<T> = Result<T, Failure>;

pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client")
}

pub(crate) fn unreachable(addr: &str, e: reqwest::Error) -> Failure {
    Failure::new(
        exit::UNAVAILABLE,
        format!("cannot reach the node at {addr}: {e} (is `storage daemon` running? see --api)"),
    )
}

/// Turns a node's error answer (Kubo or Cluster dialect, or plain text) into a message.
pub(crate) async fn check(resp: reqwest::Response) -> R<reqwest::Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let msg = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| {
            v.get("Message")
                .or_else(|| v.get("message"))
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| text.trim().to_string());
    Err(Failure::new(
        exit::FAILED,
        format!("{msg} (HTTP {})", status.as_u16()),
    ))
}

async fn rpc(cli: &Cli, path: &str, query: &[(&str, String)]) -> R<reqwest::Response> {
    let url = format!("http://{}/api/v0/{path}", cli.api);
    let resp = http()
        .post(url)
        .query(query)
        .send()
        .await
        .map_err(|e| unreachable(&cli.api, e))?;
    check(resp).await
}

async fn cluster(
    cli: &Cli,
    method: reqwest::Method,
    path: &str,
    query: &[(&str, String)],
) -> R<reqwest::Response> {
    let addr = cli.cluster_addr();
    let url = format!("http://{addr}{path}");
    let resp = http()
        .request(method, url)
        .query(query)
        .send()
        .await
        .map_err(|e| unreachable(&addr, e))?;
    check(resp).await
}

pub(crate) async fn json(resp: reqwest::Response) -> R<Value> {
    resp.json()
        .await
        .map_err(|e| Failure::new(exit::FAILED, format!("malformed answer: {e}")))
}

async fn ndjson(resp: reqwest::Response) -> R<Vec<Value>> {
    let text = resp
        .text()
        .await
        .map_err(|e| Failure::new(exit::FAILED, format!("answer cut off: {e}")))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .map_err(|e| Failure::new(exit::FAILED, format!("malformed answer line: {e}")))
        })
        .collect()
}

pub(crate) fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).expect("json")
}

type Out<'a> = std::io::StdoutLock<'a>;

/// Writes one line to stdout.
fn line(out: &mut Out, s: String) -> R<()> {
    writeln!(out, "{s}").map_err(|e| Failure::new(exit::FAILED, format!("stdout: {e}")))
}

pub async fn run(cli: &Cli) -> R<()> {
    let mut out = std::io::stdout().lock();
    let out = &mut out;
    match &cli.cmd {
        Cmd::Id => line(out, pretty(&json(rpc(cli, "id", &[]).await?).await?)),
        Cmd::Version { local, format } => version(cli, out, *local, format.json()).await,
        Cmd::Peers {
            cmd: PeersCmd::Ls { format },
        } => peers_ls(cli, out, format.json()).await,
        Cmd::Peers {
            cmd: PeersCmd::Rm { peer_id },
        } => {
            let path = format!("/peers/{peer_id}");
            cluster(cli, reqwest::Method::DELETE, &path, &[]).await?;
            line(out, format!("removed {peer_id}"))
        }
        Cmd::Add {
            file,
            cid_version,
            raw_leaves,
            only_hash,
            no_pin,
            quiet,
        } => {
            let mut q = vec![
                ("cid-version", cid_version.to_string()),
                ("only-hash", only_hash.to_string()),
                ("pin", (!no_pin).to_string()),
            ];
            if let Some(r) = raw_leaves {
                q.push(("raw-leaves", r.to_string()));
            }
            add(cli, out, file, &q, *quiet).await
        }
        Cmd::Cat {
            cid,
            offset,
            length,
        } => cat(cli, out, cid, *offset, *length).await,
        Cmd::Pin { cmd } => match cmd {
            PinCmd::Add {
                cid,
                replication_min,
                replication_max,
                name,
            } => pin_add(cli, out, cid, *replication_min, *replication_max, name).await,
            PinCmd::Rm { cid } => {
                let p = json(
                    cluster(cli, reqwest::Method::DELETE, &format!("/pins/{cid}"), &[]).await?,
                )
                .await?;
                line(out, format!("unpinned {}", p["cid"].as_str().unwrap_or("")))
            }
            PinCmd::Ls => pin_ls(cli, out).await,
        },
        Cmd::Status { cid: None, format } => crate::block_client::status(cli, format, out).await,
        Cmd::Status {
            cid: Some(cid),
            format,
        } => {
            let g = json(cluster(cli, reqwest::Method::GET, &format!("/pins/{cid}"), &[]).await?)
                .await?;
            if format == "json" {
                return line(out, pretty(&g));
            }
            print_status(out, &g)
        }
        Cmd::Recover { cid } => {
            let g = json(
                cluster(
                    cli,
                    reqwest::Method::POST,
                    &format!("/pins/{cid}/recover"),
                    &[],
                )
                .await?,
            )
            .await?;
            print_status(out, &g)
        }
        Cmd::Pool { .. }
        | Cmd::Image { .. }
        | Cmd::Health { .. }
        | Cmd::Osd { .. }
        | Cmd::Df { .. }
        | Cmd::Scrub { .. } => crate::block_client::run(cli, out).await,
        Cmd::Init { .. } | Cmd::Keygen | Cmd::Daemon { .. } | Cmd::Check { .. } => {
            unreachable!("handled by main")
        }
    }
}

/// `version`: the node's build (Kubo RPC `version`), or with `--local` this binary's own.
async fn version(cli: &Cli, out: &mut Out<'_>, local: bool, as_json: bool) -> R<()> {
    let v = if local {
        let b = tokio::task::spawn_blocking(crate::build::identity)
            .await
            .map_err(|e| Failure::new(exit::FAILED, format!("digest task: {e}")))?;
        serde_json::json!({ "BuildVersion": b.version, "BinaryDigest": b.digest })
    } else {
        json(rpc(cli, "version", &[]).await?).await?
    };
    if as_json {
        return line(out, pretty(&v));
    }
    let mut s = format!(
        "bulwark-storage {} binary-sha256 {}",
        v["BuildVersion"].as_str().unwrap_or("?"),
        v["BinaryDigest"].as_str().unwrap_or("?")
    );
    if let Some(k) = v["Version"].as_str() {
        s.push_str(&format!(" (kubo-rpc {k})"));
    }
    line(out, s)
}

/// `peers ls`: one line per cluster peer, up or down with its error, `| transient` for transient
/// members; `--format json`: the Cluster `/peers` answers (with digests) as one JSON array.
async fn peers_ls(cli: &Cli, out: &mut Out<'_>, as_json: bool) -> R<()> {
    let resp = cluster(cli, reqwest::Method::GET, "/peers", &[]).await?;
    let peers = ndjson(resp).await?;
    if as_json {
        return line(out, pretty(&Value::Array(peers)));
    }
    for p in peers {
        let err = p["error"].as_str().unwrap_or("");
        let state = if err.is_empty() {
            "up".to_string()
        } else {
            format!("DOWN: {err}")
        };
        let transient = if p["transient"].as_bool() == Some(true) {
            " | transient"
        } else {
            ""
        };
        line(
            out,
            format!(
                "{} | {} | {state}{transient}",
                p["id"].as_str().unwrap_or(""),
                p["peername"].as_str().unwrap_or(""),
            ),
        )?;
    }
    Ok(())
}

/// `add`: streams the file to the Kubo RPC `add` with the query `q`; prints what was added.
async fn add(
    cli: &Cli,
    out: &mut Out<'_>,
    file: &std::path::Path,
    q: &[(&str, String)],
    quiet: bool,
) -> R<()> {
    let f = tokio::fs::File::open(file)
        .await
        .map_err(|e| Failure::new(exit::FAILED, format!("cannot open {}: {e}", file.display())))?;
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let part = reqwest::multipart::Part::stream_with_length(reqwest::Body::from(f), len)
        .file_name(name)
        .mime_str("application/octet-stream")
        .expect("mime");
    let form = reqwest::multipart::Form::new().part("file", part);
    let url = format!("http://{}/api/v0/add", cli.api);
    let resp = http()
        .post(url)
        .query(q)
        .multipart(form)
        .send()
        .await
        .map_err(|e| unreachable(&cli.api, e))?;
    for ev in ndjson(check(resp).await?).await? {
        let hash = ev["Hash"].as_str().unwrap_or("");
        if quiet {
            line(out, hash.to_string())?;
        } else {
            line(
                out,
                format!("added {hash} {}", ev["Name"].as_str().unwrap_or("")),
            )?;
        }
    }
    Ok(())
}

/// `cat`: copies the content to stdout and checks that all of it arrived.
async fn cat(
    cli: &Cli,
    out: &mut Out<'_>,
    cid: &str,
    offset: Option<u64>,
    length: Option<u64>,
) -> R<()> {
    let mut q = vec![("arg", cid.to_string())];
    if let Some(o) = offset {
        q.push(("offset", o.to_string()));
    }
    if let Some(l) = length {
        q.push(("length", l.to_string()));
    }
    let resp = rpc(cli, "cat", &q).await?;
    let size: Option<u64> = resp
        .headers()
        .get("x-content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let mut body = resp.bytes_stream();
    let mut got = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            Failure::new(
                exit::FAILED,
                format!("transfer failed after {got} bytes: {e}"),
            )
        })?;
        got += chunk.len() as u64;
        out.write_all(&chunk)
            .map_err(|e| Failure::new(exit::FAILED, format!("stdout: {e}")))?;
    }
    // reqwest does not expose trailers: check the length instead of X-Stream-Error.
    if let Some(size) = size {
        let want = size
            .saturating_sub(offset.unwrap_or(0))
            .min(length.unwrap_or(u64::MAX));
        if got != want {
            return Err(Failure::new(
                exit::FAILED,
                format!("transfer incomplete: got {got} of {want} bytes"),
            ));
        }
    }
    out.flush()
        .map_err(|e| Failure::new(exit::FAILED, format!("stdout: {e}")))
}

/// `pin add`: pins a CID in the cluster and prints where it is allocated.
async fn pin_add(
    cli: &Cli,
    out: &mut Out<'_>,
    cid: &str,
    replication_min: Option<i32>,
    replication_max: Option<i32>,
    name: &Option<String>,
) -> R<()> {
    let mut q = vec![];
    if let Some(v) = replication_min {
        q.push(("replication-min", v.to_string()));
    }
    if let Some(v) = replication_max {
        q.push(("replication-max", v.to_string()));
    }
    if let Some(n) = name {
        q.push(("name", n.clone()));
    }
    let p = json(cluster(cli, reqwest::Method::POST, &format!("/pins/{cid}"), &q).await?).await?;
    line(
        out,
        format!(
            "pinned {} on {}",
            p["cid"].as_str().unwrap_or(""),
            allocations(&p)
        ),
    )
}

/// `pin ls`: one line per pin with its replication factors and allocations.
async fn pin_ls(cli: &Cli, out: &mut Out<'_>) -> R<()> {
    let resp = cluster(cli, reqwest::Method::GET, "/allocations", &[]).await?;
    for p in ndjson(resp).await? {
        line(
            out,
            format!(
                "{} | {} | replication {}..{} | {}",
                p["cid"].as_str().unwrap_or(""),
                p["name"].as_str().unwrap_or(""),
                p["replication_factor_min"],
                p["replication_factor_max"],
                allocations(&p)
            ),
        )?;
    }
    Ok(())
}

fn allocations(p: &Value) -> String {
    match p["allocations"].as_array() {
        Some(a) if !a.is_empty() => a
            .iter()
            .filter_map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        _ => "every peer".to_string(),
    }
}

fn print_status(out: &mut std::io::StdoutLock, g: &Value) -> R<()> {
    let mut s = format!(
        "{} | {}:\n",
        g["cid"].as_str().unwrap_or(""),
        g["name"].as_str().unwrap_or("")
    );
    if let Some(map) = g["peer_map"].as_object() {
        for (id, p) in map {
            let name = p["peername"]
                .as_str()
                .filter(|n| !n.is_empty())
                .unwrap_or(id);
            s.push_str(&format!(
                "    > {name:<16} : {} | {} | Attempts: {}{}\n",
                p["status"].as_str().unwrap_or("").to_uppercase(),
                p["timestamp"].as_str().unwrap_or(""),
                p["attempt_count"],
                match p["error"].as_str() {
                    Some(e) if !e.is_empty() => format!(" | Error: {e}"),
                    _ => String::new(),
                }
            ));
        }
    }
    write!(out, "{s}").map_err(|e| Failure::new(exit::FAILED, format!("stdout: {e}")))
}
