//! Test fixture (not product code): an HTTP/1.1 upstream with a query of death.
//!
//! `qod_fixture LISTEN LOGFILE NAME` answers every request `200 "NAME METHOD TARGET"`, except:
//! - a request target with a run of 32+ encoded spaces (`%20` or `+`), or a query parameter named
//!   `evil`: the process dies on the spot (exit 3) — the query of death;
//! - a query parameter `hang=1`: answers after 3 s.
//!
//! Every request line is appended to LOGFILE *before* it is handled, so a test can tell which
//! process saw (and died of) what. Standard library only: one thread per connection, keep-alive.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn deadly(target: &str) -> bool {
    let query = target.split_once('?').map_or("", |(_, q)| q);
    if query
        .split('&')
        .any(|p| p.split_once('=').map_or(p, |(n, _)| n) == "evil")
    {
        return true;
    }
    let t = target.replace("%20", " ").replace('+', " ");
    t.contains(&" ".repeat(32))
}

fn serve(stream: TcpStream, log: &str, name: &str) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut out = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    // Bounded: at most 10,000 requests per connection.
    for _ in 0..10_000 {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end().to_string();
        let mut len = 0usize;
        for _ in 0..200 {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; len.min(16 << 20)];
        r.read_exact(&mut body)?;
        let mut parts = line.split(' ');
        let method = parts.next().unwrap_or("");
        let target = parts.next().unwrap_or("");
        {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)?;
            writeln!(f, "{method} {target}")?;
            f.sync_all()?;
        }
        if deadly(target) {
            eprintln!("{name}: query of death: {method} {target}");
            std::process::exit(3);
        }
        if target.contains("hang=1") {
            std::thread::sleep(Duration::from_secs(3));
        }
        let msg = format!("{name} {method} {target}\n");
        write!(
            out,
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{msg}",
            msg.len()
        )?;
        out.flush()?;
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: qod_fixture LISTEN LOGFILE NAME");
        std::process::exit(2);
    }
    let l = TcpListener::bind(&args[1]).expect("bind");
    let (log, name) = (args[2].clone(), args[3].clone());
    for s in l.incoming().flatten() {
        let (log, name) = (log.clone(), name.clone());
        std::thread::spawn(move || {
            let _ = serve(s, &log, &name);
        });
    }
}
