//! The running controller's control endpoint and the commands that talk to it.
//!
//! The controller listens on `127.0.0.1:<free port>` and writes `controller.json` (address, pid,
//! plan, controller id) into the state directory; `canary status|promote|resume|abort` read it
//! and send `GET /status` or `POST /promote|/resume|/abort`. A tiny HTTP/1.1 server: one request
//! per connection, JSON answers.
use super::Error;
use crate::decide::Command;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What `controller.json` says.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ControllerFile {
    /// The control endpoint.
    pub addr: SocketAddr,
    /// The controller's pid.
    pub pid: u32,
    /// The controller id its splits carry.
    pub controller: String,
    /// The plan file.
    pub plan: String,
}

/// Shared between the tick loop and the endpoint.
#[derive(Default)]
pub struct Shared {
    /// Commands not yet delivered to a tick.
    pub pending: Vec<Command>,
    /// The latest status (last tick's report and run facts), as JSON.
    pub status: serde_json::Value,
}

/// `controller.json` in `state`.
pub fn file(state: &Path) -> PathBuf {
    state.join("controller.json")
}

/// Binds the endpoint and serves it in the background.
pub async fn serve(shared: Arc<Mutex<Shared>>) -> Result<SocketAddr, Error> {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::Env(format!("control endpoint: {e}")))?;
    let addr = l
        .local_addr()
        .map_err(|e| Error::Env(format!("control endpoint: {e}")))?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let mut words = head.split_whitespace();
                let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                let (code, body) = answer(&shared, method, path);
                let reply = format!(
                    "HTTP/1.1 {code}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    Ok(addr)
}

fn answer(shared: &Mutex<Shared>, method: &str, path: &str) -> (&'static str, String) {
    let mut sh = shared.lock().unwrap_or_else(|p| p.into_inner());
    let cmd = match path {
        "/promote" => Command::Promote,
        "/resume" => Command::Resume,
        "/abort" => Command::Abort,
        "/status" => return ("200 OK", sh.status.to_string()),
        _ => return ("404 Not Found", "{\"error\":\"unknown path\"}".into()),
    };
    if method != "POST" {
        return ("405 Method Not Allowed", "{\"error\":\"POST\"}".into());
    }
    sh.pending.push(cmd);
    let body = serde_json::json!({"accepted": cmd.to_string(), "applies": "at the next tick"});
    ("202 Accepted", body.to_string())
}

/// `canary status|promote|resume|abort`: sends `cmd` (`None` = status) to the controller whose
/// `controller.json` is in `state`; the answer's JSON.
pub async fn send(state: &Path, cmd: Option<Command>) -> Result<serde_json::Value, Error> {
    let f = file(state);
    let text = std::fs::read_to_string(&f).map_err(|e| {
        Error::Env(format!(
            "no running controller ({}: {e}); start one with `canary run`",
            f.display()
        ))
    })?;
    let c: ControllerFile =
        serde_json::from_str(&text).map_err(|e| Error::Env(format!("{}: {e}", f.display())))?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| Error::Env(e.to_string()))?;
    let req = match cmd {
        None => http.get(format!("http://{}/status", c.addr)),
        Some(cmd) => http.post(format!("http://{}/{cmd}", c.addr)),
    };
    let r = req.send().await.map_err(|e| {
        Error::Env(format!(
            "controller pid {} at {} does not answer ({e}); is it still running?",
            c.pid, c.addr
        ))
    })?;
    r.json()
        .await
        .map_err(|e| Error::Env(format!("controller answer: {e}")))
}
