//! The block-service half of the CLI (`pool`, `image`, `health`, `status` without a CID, `osd`,
//! `df`, `scrub`): one call to the node's `/block/v1/...` API each, printed the way `ceph` and `rbd`
//! print theirs, or as the API's JSON with `--format json`.
//!
//! Exit codes: 0 ok; 1 the node refused (unknown pool, bad size, ...) or scrub left objects
//! unrepaired; 2 bad command line; 69 the node is unreachable or answered 503 (too few replicas
//! up: retrying later may succeed).

use crate::cli::{exit, Cli, Cmd, FormatArg, ImageCmd, OsdCmd, PoolCmd};
use crate::client::{check, http, json, pretty, unreachable, Failure, R};
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};
use std::io::Write;

/// Runs a block command.
pub(crate) async fn run(cli: &Cli, out: &mut dyn Write) -> R<()> {
    match &cli.cmd {
        Cmd::Pool { cmd } => pool(cli, cmd, out).await,
        Cmd::Image { cmd } => image(cli, cmd, out).await,
        Cmd::Health { detail, format } => {
            let h = get(cli, &["health"], &[]).await?;
            if format.json() {
                return emit(out, &pretty(&h));
            }
            emit(out, &fmt_health(&h, detail.is_some()))
        }
        Cmd::Osd { cmd } => {
            let (path, format, f): (&str, &FormatArg, fn(&Value) -> String) = match cmd {
                OsdCmd::Tree { format } => ("tree", format, fmt_osd_tree),
                OsdCmd::Df { format } => ("df", format, fmt_osd_df),
            };
            let v = get(cli, &["osd", path], &[]).await?;
            emit(out, &if format.json() { pretty(&v) } else { f(&v) })
        }
        Cmd::Df { format } => {
            let v = get(cli, &["df"], &[]).await?;
            emit(
                out,
                &if format.json() {
                    pretty(&v)
                } else {
                    fmt_df(&v)
                },
            )
        }
        Cmd::Scrub { pool, format } => {
            let q: Vec<(&str, String)> = pool.iter().map(|p| ("pool", p.clone())).collect();
            let v = call(cli, Method::POST, &["scrub"], &q, None)
                .await?
                .unwrap_or(Value::Null);
            emit(
                out,
                &if format.json() {
                    pretty(&v)
                } else {
                    fmt_scrub(&v)
                },
            )?;
            match v["unrepaired"].as_u64().unwrap_or(0) {
                0 => Ok(()),
                n => Err(Failure::new(
                    exit::FAILED,
                    format!("scrub left {n} objects unrepaired"),
                )),
            }
        }
        _ => unreachable!("not a block command"),
    }
}

/// `storage status` without a CID: the block cluster's status, as `ceph -s`.
pub(crate) async fn status(cli: &Cli, format: &str, out: &mut dyn Write) -> R<()> {
    let v = get(cli, &["status"], &[]).await?;
    if format == "json" {
        return emit(out, &pretty(&v));
    }
    emit(out, &fmt_status(&v))
}

async fn pool(cli: &Cli, cmd: &PoolCmd, out: &mut dyn Write) -> R<()> {
    match cmd {
        PoolCmd::Create {
            name,
            size,
            min_size,
            pg_num,
            failure_domain,
            format,
        } => {
            let mut b = Map::new();
            b.insert("name".into(), name.clone().into());
            if let Some(v) = size {
                b.insert("size".into(), (*v).into());
            }
            if let Some(v) = min_size {
                b.insert("min_size".into(), (*v).into());
            }
            if let Some(v) = pg_num {
                b.insert("pg_num".into(), (*v).into());
            }
            if let Some(v) = failure_domain {
                b.insert("failure_domain".into(), v.clone().into());
            }
            let p = body(call(cli, Method::POST, &["pools"], &[], Some(Value::Object(b))).await?);
            emit(
                out,
                &if format.json() {
                    pretty(&p)
                } else {
                    fmt_pool_created(&p)
                },
            )
        }
        PoolCmd::Ls { format } => {
            let v = get(cli, &["pools"], &[]).await?;
            emit(
                out,
                &if format.json() {
                    pretty(&v)
                } else {
                    fmt_pools(&v)
                },
            )
        }
        PoolCmd::Rm { name, format } => {
            call(cli, Method::DELETE, &["pools", name], &[], None).await?;
            if format.json() {
                return emit(out, &pretty(&json!({ "removed": name })));
            }
            emit(out, &format!("pool '{name}' removed"))
        }
        PoolCmd::Set {
            name,
            key,
            value,
            format,
        } => {
            let p = body(
                call(
                    cli,
                    Method::PATCH,
                    &["pools", name],
                    &[],
                    Some(json!({ key.as_str(): value })),
                )
                .await?,
            );
            if format.json() {
                return emit(out, &pretty(&p));
            }
            // As `ceph osd pool set`.
            emit(
                out,
                &format!("set pool {} {key} to {}", num(&p, "id"), p[key.as_str()]),
            )
        }
    }
}

async fn image(cli: &Cli, cmd: &ImageCmd, out: &mut dyn Write) -> R<()> {
    match cmd {
        ImageCmd::Create {
            spec,
            size,
            object_size,
            format,
        } => {
            let mut b = json!({ "pool": spec.pool, "name": spec.image, "size": size });
            if let Some(o) = object_size {
                b["object_size"] = o.clone().into();
            }
            let i = body(call(cli, Method::POST, &["images"], &[], Some(b)).await?);
            if format.json() {
                return emit(out, &pretty(&i));
            }
            emit(
                out,
                &format!(
                    "image '{spec}' created: {} in {} objects of {}",
                    human(num(&i, "size")),
                    num(&i, "objects"),
                    human(num(&i, "object_size"))
                ),
            )
        }
        ImageCmd::Ls { pool, long, format } => {
            let q: Vec<(&str, String)> = pool.iter().map(|p| ("pool", p.clone())).collect();
            let v = get(cli, &["images"], &q).await?;
            if format.json() {
                return emit(out, &pretty(&v));
            }
            emit(out, &fmt_images(&v, *long, pool.is_none()))
        }
        ImageCmd::Info { spec, format } => {
            let i = get(cli, &["images", &spec.pool, &spec.image], &[]).await?;
            emit(
                out,
                &if format.json() {
                    pretty(&i)
                } else {
                    fmt_image_info(&i)
                },
            )
        }
        ImageCmd::Resize {
            spec,
            size,
            allow_shrink,
            format,
        } => {
            let i = body(
                call(
                    cli,
                    Method::POST,
                    &["images", &spec.pool, &spec.image, "resize"],
                    &[],
                    Some(json!({ "size": size, "allow_shrink": allow_shrink })),
                )
                .await?,
            );
            if format.json() {
                return emit(out, &pretty(&i));
            }
            emit(
                out,
                &format!(
                    "image '{spec}' resized to {} ({} objects)",
                    human(num(&i, "size")),
                    num(&i, "objects")
                ),
            )
        }
        ImageCmd::Rm { spec, format } => {
            call(
                cli,
                Method::DELETE,
                &["images", &spec.pool, &spec.image],
                &[],
                None,
            )
            .await?;
            if format.json() {
                return emit(out, &pretty(&json!({ "removed": spec.to_string() })));
            }
            emit(out, &format!("image '{spec}' removed"))
        }
    }
}

// ---- HTTP -------------------------------------------------------------------------------------

/// One call to `/block/v1/{path...}` (each segment percent-encoded). `None` for an empty answer
/// (204). A 503 (too few replicas up) exits 69 like an unreachable node; other errors exit 1.
async fn call(
    cli: &Cli,
    method: Method,
    path: &[&str],
    query: &[(&str, String)],
    body: Option<Value>,
) -> R<Option<Value>> {
    let bad_api = || {
        Failure::new(
            exit::USAGE,
            format!("invalid --api address {:?}: expected HOST:PORT", cli.api),
        )
    };
    let mut url = reqwest::Url::parse(&format!("http://{}/", cli.api)).map_err(|_| bad_api())?;
    url.path_segments_mut()
        .map_err(|_| bad_api())?
        .pop_if_empty()
        .extend(["block", "v1"])
        .extend(path);
    let shown = url.path().to_string();
    let mut req = http().request(method, url).query(query);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.map_err(|e| unreachable(&cli.api, e))?;
    let status = resp.status();
    let retry = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let is_json = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    if status == StatusCode::NOT_FOUND && !is_json {
        return Err(Failure::new(
            exit::FAILED,
            format!(
                "the node at {} has no block service ({shown}: HTTP 404); is it a Bulwark node with the block service?",
                cli.api
            ),
        ));
    }
    let resp = check(resp).await.map_err(|mut f| {
        if status == StatusCode::SERVICE_UNAVAILABLE {
            f.code = exit::UNAVAILABLE;
            if let Some(r) = retry {
                f.message.push_str(&format!("; retry after {r}s"));
            }
        }
        f
    })?;
    if status == StatusCode::NO_CONTENT {
        return Ok(None);
    }
    json(resp).await.map(Some)
}

async fn get(cli: &Cli, path: &[&str], query: &[(&str, String)]) -> R<Value> {
    Ok(body(call(cli, Method::GET, path, query, None).await?))
}

fn body(v: Option<Value>) -> Value {
    v.unwrap_or(Value::Null)
}

fn emit(out: &mut dyn Write, s: &str) -> R<()> {
    let r = if s.is_empty() || s.ends_with('\n') {
        out.write_all(s.as_bytes())
    } else {
        writeln!(out, "{s}")
    };
    r.and_then(|_| out.flush())
        .map_err(|e| Failure::new(exit::FAILED, format!("stdout: {e}")))
}

// ---- formatting (pure) ------------------------------------------------------------------------

fn st<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

fn num(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// Bytes as Ceph prints them: `0 B`, `512 B`, `64 MiB`, `1.5 GiB`, `297 GiB`.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut u = 0;
    while u + 1 < UNITS.len() && n >= 1u64 << (10 * (u + 1)) {
        u += 1;
    }
    let unit = 1u64 << (10 * u);
    if n % unit == 0 {
        return format!("{} {}", n / unit, UNITS[u]);
    }
    let v = n as f64 / unit as f64;
    if v < 100.0 {
        format!("{v:.1} {}", UNITS[u])
    } else {
        format!("{v:.0} {}", UNITS[u])
    }
}

fn human_opt(v: &Value) -> String {
    v.as_u64().map(human).unwrap_or_else(|| "-".into())
}

/// A table with two spaces between columns; a header starting with `>` is right-aligned (numbers).
/// Empty when there are no rows.
pub fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let right: Vec<bool> = head.iter().map(|h| h.starts_with('>')).collect();
    let head: Vec<String> = head
        .iter()
        .map(|h| h.trim_start_matches('>').to_string())
        .collect();
    let mut width: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(width.len()) {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let mut s = String::new();
    for r in std::iter::once(&head).chain(rows) {
        let mut line = String::new();
        for (i, w) in width.iter().enumerate() {
            let c = r.get(i).map(String::as_str).unwrap_or("");
            if i > 0 {
                line.push_str("  ");
            }
            if right[i] {
                line.push_str(&format!("{c:>w$}"));
            } else {
                line.push_str(&format!("{c:<w$}"));
            }
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

pub fn fmt_pool_created(p: &Value) -> String {
    format!(
        "pool '{}' created (id {}, size {}, min_size {}, pg_num {}, failure domain {})",
        st(p, "name"),
        num(p, "id"),
        num(p, "size"),
        num(p, "min_size"),
        num(p, "pg_num"),
        st(p, "failure_domain")
    )
}

pub fn fmt_pools(v: &Value) -> String {
    let rows: Vec<Vec<String>> = arr(v)
        .iter()
        .map(|p| {
            vec![
                st(p, "name").to_string(),
                num(p, "id").to_string(),
                num(p, "size").to_string(),
                num(p, "min_size").to_string(),
                num(p, "pg_num").to_string(),
                st(p, "failure_domain").to_string(),
            ]
        })
        .collect();
    table(
        &["NAME", ">ID", ">SIZE", ">MIN_SIZE", ">PG_NUM", "DOMAIN"],
        &rows,
    )
}

/// `rbd ls` (names one per line) or `rbd ls -l`; across pools, names are `POOL/IMAGE`.
pub fn fmt_images(v: &Value, long: bool, all_pools: bool) -> String {
    let name = |i: &Value| {
        if all_pools {
            format!("{}/{}", st(i, "pool"), st(i, "name"))
        } else {
            st(i, "name").to_string()
        }
    };
    if !long {
        return arr(v).iter().map(|i| name(i) + "\n").collect();
    }
    let rows: Vec<Vec<String>> = arr(v)
        .iter()
        .map(|i| {
            vec![
                name(i),
                human(num(i, "size")),
                human(num(i, "used_bytes")),
                num(i, "objects").to_string(),
                human(num(i, "object_size")),
            ]
        })
        .collect();
    table(
        &["NAME", ">SIZE", ">USED", ">OBJECTS", ">OBJECT_SIZE"],
        &rows,
    )
}

/// As `rbd info`.
pub fn fmt_image_info(i: &Value) -> String {
    let os = num(i, "object_size");
    format!(
        "rbd image '{}':\n\tsize {} in {} objects\n\torder {} ({} objects)\n\tid: {}\n\tpool: {}\n\tused: {}\n\tcreated: {}\n",
        st(i, "name"),
        human(num(i, "size")),
        num(i, "objects"),
        if os == 0 { 0 } else { os.trailing_zeros() },
        human(os),
        st(i, "id"),
        st(i, "pool"),
        human(num(i, "used_bytes")),
        st(i, "created"),
    )
}

/// As `ceph health` (one line) or `ceph health detail`.
pub fn fmt_health(h: &Value, detail: bool) -> String {
    let status = h["status"].as_str().unwrap_or("HEALTH_UNKNOWN");
    let checks = arr(&h["checks"]);
    let mut s = status.to_string();
    if !checks.is_empty() {
        s.push(' ');
        s.push_str(
            &checks
                .iter()
                .map(|c| st(c, "summary"))
                .collect::<Vec<_>>()
                .join("; "),
        );
    }
    s.push('\n');
    if detail {
        for c in checks {
            let sev = match st(c, "severity") {
                "HEALTH_ERR" => "ERR",
                "HEALTH_WARN" => "WRN",
                _ => "INF",
            };
            s.push_str(&format!(
                "[{sev}] {}: {}\n",
                st(c, "code"),
                st(c, "summary")
            ));
            for d in arr(&c["detail"]) {
                s.push_str(&format!("    {}\n", d.as_str().unwrap_or("")));
            }
        }
    }
    s
}

fn pct(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 * 100.0 / b as f64
    }
}

/// As `ceph -s`.
pub fn fmt_status(v: &Value) -> String {
    let h = &v["health"];
    let mut s = String::from("  cluster:\n");
    s.push_str(&format!(
        "    health: {}\n",
        h["status"].as_str().unwrap_or("HEALTH_UNKNOWN")
    ));
    for c in arr(&h["checks"]) {
        s.push_str(&format!("            {}\n", st(c, "summary")));
    }
    let o = &v["osd"];
    s.push_str(&format!(
        "\n  services:\n    osd: {} osds: {} up, {} in\n",
        num(o, "total"),
        num(o, "up"),
        num(o, "in")
    ));
    let d = &v["data"];
    let (used, total) = (num(d, "raw_used_bytes"), num(d, "raw_total_bytes"));
    let avail = d
        .get("raw_avail_bytes")
        .and_then(|v| v.as_u64())
        .unwrap_or(total.saturating_sub(used));
    s.push_str(&format!(
        "\n  data:\n    pools:   {} pools, {} pgs\n    images:  {} images\n    objects: {} objects, {}\n    usage:   {} used, {} / {} avail\n",
        num(d, "pools"),
        num(d, "pgs"),
        num(d, "images"),
        num(d, "objects"),
        human(num(d, "stored_bytes")),
        human(used),
        human(avail),
        human(total),
    ));
    let mut pg_lines = Vec::new();
    let degraded = num(d, "degraded_objects");
    if degraded > 0 {
        pg_lines.push(format!(
            "{degraded}/{} objects degraded ({:.3}%)",
            num(d, "objects"),
            pct(degraded, num(d, "objects"))
        ));
    }
    let mut states: Vec<(&String, u64)> = d["pg_states"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| (k, n.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    states.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    pg_lines.extend(states.iter().map(|(k, n)| format!("{n} {k}")));
    for (i, l) in pg_lines.iter().enumerate() {
        let lead = if i == 0 {
            "    pgs:     "
        } else {
            "             "
        };
        s.push_str(&format!("{lead}{l}\n"));
    }
    let io = &v["io"];
    s.push_str(&format!(
        "\n  io:\n    client:   {} reads ({}), {} writes ({}), {} failed since start\n",
        num(io, "reads"),
        human(num(io, "read_bytes")),
        num(io, "writes"),
        human(num(io, "write_bytes")),
        num(io, "failed"),
    ));
    let r = &v["recovery"];
    s.push_str(&format!(
        "\n  recovery:\n    {} objects to recover by this node; {} objects ({}) recovered since start\n",
        num(r, "objects_to_recover_by_this_node"),
        num(r, "recovered_objects"),
        human(num(r, "recovered_bytes")),
    ));
    s
}

/// As `ceph osd tree`: the root, then each host with its nodes.
pub fn fmt_osd_tree(v: &Value) -> String {
    let mut rows = vec![vec![
        "-".to_string(),
        format!("root {}", v["root"].as_str().unwrap_or("default")),
    ]];
    for h in arr(&v["hosts"]) {
        let host = st(h, "host");
        rows.push(vec!["-".into(), format!("    host {host}")]);
        for o in arr(&h["osds"]) {
            let status = match (st(o, "status"), num(o, "down_for_s")) {
                ("down", n) if n > 0 => format!("down ({n}s)"),
                (s, _) => s.to_string(),
            };
            rows.push(vec![
                st(o, "id").to_string(),
                format!("        osd.{}", st(o, "name")),
                host.to_string(),
                status,
                if o["in"].as_bool().unwrap_or(false) {
                    "in"
                } else {
                    "out"
                }
                .to_string(),
            ]);
        }
    }
    table(&["ID", "NAME", "HOST", "STATUS", "IN"], &rows)
}

/// As `ceph osd df`, with a TOTAL line over the nodes that reported.
pub fn fmt_osd_df(v: &Value) -> String {
    let nodes = arr(&v["nodes"]);
    let mut rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                st(n, "name").to_string(),
                st(n, "host").to_string(),
                st(n, "status").to_string(),
                human_opt(&n["total_bytes"]),
                human_opt(&n["used_bytes"]),
                human_opt(&n["avail_bytes"]),
                n["use_percent"]
                    .as_f64()
                    .map(|p| format!("{p:.2}"))
                    .unwrap_or_else(|| "-".into()),
                n["objects"]
                    .as_u64()
                    .map(|o| o.to_string())
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    if !rows.is_empty() {
        let sum = |k: &str| nodes.iter().filter_map(|n| n[k].as_u64()).sum::<u64>();
        let (total, used) = (sum("total_bytes"), sum("used_bytes"));
        rows.push(vec![
            "TOTAL".into(),
            String::new(),
            String::new(),
            human(total),
            human(used),
            human(sum("avail_bytes")),
            format!("{:.2}", pct(used, total)),
            sum("objects").to_string(),
        ]);
    }
    table(
        &[
            "NAME", "HOST", "STATUS", ">SIZE", ">USED", ">AVAIL", ">%USE", ">OBJECTS",
        ],
        &rows,
    )
}

/// As `ceph df`.
pub fn fmt_df(v: &Value) -> String {
    let r = &v["raw"];
    let (total, used) = (num(r, "total_bytes"), num(r, "used_bytes"));
    let mut s = String::from("--- RAW STORAGE ---\n");
    s.push_str(&table(
        &[">SIZE", ">AVAIL", ">USED", ">%RAW USED"],
        &[vec![
            human(total),
            human(num(r, "avail_bytes")),
            human(used),
            format!("{:.2}", pct(used, total)),
        ]],
    ));
    s.push_str("\n--- POOLS ---\n");
    let rows: Vec<Vec<String>> = arr(&v["pools"])
        .iter()
        .map(|p| {
            vec![
                st(p, "name").to_string(),
                num(p, "id").to_string(),
                human(num(p, "stored_bytes")),
                num(p, "objects").to_string(),
                human(num(p, "used_bytes")),
                human(num(p, "max_avail_bytes")),
                format!("{}/{}", num(p, "size"), num(p, "min_size")),
            ]
        })
        .collect();
    let t = table(
        &[
            "NAME",
            ">ID",
            ">STORED",
            ">OBJECTS",
            ">USED",
            ">MAX_AVAIL",
            ">SIZE/MIN",
        ],
        &rows,
    );
    s.push_str(if t.is_empty() { "(no pools)\n" } else { &t });
    s
}

pub fn fmt_scrub(v: &Value) -> String {
    let mut s = format!(
        "objects scrubbed:  {}\nreplicas checked:  {}\ninconsistent:      {}\nrepaired:          {}\nunrepaired:        {}\n",
        num(v, "objects"),
        num(v, "replicas_checked"),
        num(v, "inconsistent"),
        num(v, "repaired"),
        num(v, "unrepaired"),
    );
    let errors = arr(&v["errors"]);
    if !errors.is_empty() {
        s.push_str("errors:\n");
        for e in errors {
            s.push_str(&format!("    {}\n", e.as_str().unwrap_or("")));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes_as_ceph() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(512), "512 B");
        assert_eq!(human(4 << 20), "4 MiB");
        assert_eq!(human(64 << 20), "64 MiB");
        assert_eq!(human(3 << 29), "1.5 GiB");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human((300 << 30) + 1), "300 GiB");
        assert_eq!(human(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn tables_align_and_skip_empty() {
        let t = table(
            &["NAME", ">ID"],
            &[
                vec!["rbd".into(), "1".into()],
                vec!["a".into(), "10".into()],
            ],
        );
        assert_eq!(t, "NAME  ID\nrbd    1\na     10\n");
        assert_eq!(table(&["NAME"], &[]), "");
    }

    fn health() -> Value {
        json!({
            "status": "HEALTH_ERR",
            "checks": [
                {"code": "OSD_DOWN", "severity": "HEALTH_WARN", "summary": "1 osds down",
                 "detail": ["osd.b (host=h2) is down (for 12s)"]},
                {"code": "PG_AVAILABILITY", "severity": "HEALTH_ERR",
                 "summary": "Reduced data availability: 3 pgs inactive", "detail": []},
            ]
        })
    }

    #[test]
    fn health_one_line_and_detail() {
        assert_eq!(
            fmt_health(&json!({"status": "HEALTH_OK", "checks": []}), false),
            "HEALTH_OK\n"
        );
        assert_eq!(
            fmt_health(&json!({"status": "HEALTH_OK", "checks": []}), true),
            "HEALTH_OK\n"
        );
        assert_eq!(
            fmt_health(&health(), false),
            "HEALTH_ERR 1 osds down; Reduced data availability: 3 pgs inactive\n"
        );
        assert_eq!(
            fmt_health(&health(), true),
            "HEALTH_ERR 1 osds down; Reduced data availability: 3 pgs inactive\n\
             [WRN] OSD_DOWN: 1 osds down\n    osd.b (host=h2) is down (for 12s)\n\
             [ERR] PG_AVAILABILITY: Reduced data availability: 3 pgs inactive\n"
        );
    }

    #[test]
    fn pools_and_images() {
        let p = json!({"id": 1, "name": "rbd", "size": 3, "min_size": 2, "pg_num": 64,
                       "failure_domain": "host", "created": "x"});
        assert_eq!(
            fmt_pool_created(&p),
            "pool 'rbd' created (id 1, size 3, min_size 2, pg_num 64, failure domain host)"
        );
        assert_eq!(
            fmt_pools(&json!([p])),
            "NAME  ID  SIZE  MIN_SIZE  PG_NUM  DOMAIN\nrbd    1     3         2      64  host\n"
        );
        let i = json!({"id": "ab12", "pool": "rbd", "pool_id": 1, "name": "disk", "size": 64u64 << 20,
                       "object_size": 4u64 << 20, "created": "2025-01-01T00:00:00Z",
                       "objects": 16, "used_bytes": 8192});
        let v = json!([i]);
        assert_eq!(fmt_images(&v, false, false), "disk\n");
        assert_eq!(fmt_images(&v, false, true), "rbd/disk\n");
        assert_eq!(
            fmt_images(&v, true, false),
            "NAME    SIZE   USED  OBJECTS  OBJECT_SIZE\ndisk  64 MiB  8 KiB       16        4 MiB\n"
        );
        assert_eq!(fmt_images(&json!([]), true, false), "");
        assert_eq!(
            fmt_image_info(&i),
            "rbd image 'disk':\n\tsize 64 MiB in 16 objects\n\torder 22 (4 MiB objects)\n\tid: ab12\n\tpool: rbd\n\tused: 8 KiB\n\tcreated: 2025-01-01T00:00:00Z\n"
        );
    }

    #[test]
    fn status_like_ceph_s() {
        let v = json!({
            "health": health(),
            "osd": {"total": 3, "up": 2, "in": 3},
            "data": {"pools": 1, "images": 2, "objects": 10, "degraded_objects": 5,
                     "stored_bytes": 40u64 << 20, "raw_used_bytes": 120u64 << 20,
                     "raw_total_bytes": 3u64 << 30, "pgs": 64,
                     "pg_states": {"active+clean": 40, "active+undersized+degraded": 24}},
            "io": {"reads": 1, "writes": 2, "read_bytes": 4096, "write_bytes": 8192, "failed": 0},
            "recovery": {"objects_to_recover_by_this_node": 0, "recovered_objects": 0, "recovered_bytes": 0},
        });
        let s = fmt_status(&v);
        assert!(s.starts_with("  cluster:\n    health: HEALTH_ERR\n            1 osds down\n"));
        assert!(s.contains("    osd: 3 osds: 2 up, 3 in\n"));
        assert!(s.contains("    usage:   120 MiB used, 2.9 GiB / 3 GiB avail\n"));
        assert!(s.contains(
            "    pgs:     5/10 objects degraded (50.000%)\n             40 active+clean\n             24 active+undersized+degraded\n"
        ));
    }

    #[test]
    fn osd_reports() {
        let tree = json!({"root": "default", "hosts": [{"host": "h1", "osds": [
            {"id": "12D3a", "name": "a", "status": "up", "in": true, "down_for_s": 0},
            {"id": "12D3b", "name": "b", "status": "down", "in": false, "down_for_s": 7}]}]});
        assert_eq!(
            fmt_osd_tree(&tree).lines().collect::<Vec<_>>(),
            [
                "ID     NAME           HOST  STATUS     IN",
                "-      root default",
                "-          host h1",
                "12D3a          osd.a  h1    up         in",
                "12D3b          osd.b  h1    down (7s)  out",
            ]
        );
        let df = json!({"nodes": [
            {"name": "a", "host": "h1", "status": "up", "total_bytes": 1u64 << 30,
             "used_bytes": 1u64 << 28, "avail_bytes": 3u64 << 28, "use_percent": 25.0, "objects": 4},
            {"name": "b", "host": "h2", "status": "down", "total_bytes": null, "used_bytes": null,
             "avail_bytes": null, "use_percent": null, "objects": null}]});
        let s = fmt_osd_df(&df);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[1].ends_with("1 GiB  256 MiB  768 MiB  25.00        4"));
        assert_eq!(
            lines[2],
            "b      h2    down        -        -        -      -        -"
        );
        assert!(lines[3].starts_with("TOTAL"));
    }

    #[test]
    fn df_and_scrub() {
        let v = json!({"raw": {"total_bytes": 4u64 << 30, "used_bytes": 1u64 << 30, "avail_bytes": 3u64 << 30},
                       "pools": [{"name": "rbd", "id": 1, "size": 3, "min_size": 2, "stored_bytes": 0,
                                  "objects": 0, "used_bytes": 0, "max_avail_bytes": 1u64 << 30}]});
        assert_eq!(
            fmt_df(&v),
            "--- RAW STORAGE ---\n\
             \x20SIZE  AVAIL   USED  %RAW USED\n\
             4 GiB  3 GiB  1 GiB      25.00\n\
             \n--- POOLS ---\n\
             NAME  ID  STORED  OBJECTS  USED  MAX_AVAIL  SIZE/MIN\n\
             rbd    1     0 B        0   0 B      1 GiB       3/2\n"
        );
        let r = json!({"objects": 2, "replicas_checked": 6, "inconsistent": 1, "repaired": 0,
                       "unrepaired": 1, "errors": ["obj x: replica on b corrupt"]});
        assert_eq!(
            fmt_scrub(&r),
            "objects scrubbed:  2\nreplicas checked:  6\ninconsistent:      1\nrepaired:          0\nunrepaired:        1\nerrors:\n    obj x: replica on b corrupt\n"
        );
    }

    #[test]
    fn image_specs_and_sizes() {
        use crate::cli::{parse_image_spec, parse_size_arg};
        let s = parse_image_spec("rbd/disk").unwrap();
        assert_eq!((s.pool.as_str(), s.image.as_str()), ("rbd", "disk"));
        assert!(parse_image_spec("disk").is_err());
        assert!(parse_image_spec("/disk").is_err());
        assert!(parse_image_spec("rbd/").is_err());
        assert!(parse_image_spec("a/b/c").is_err());
        assert_eq!(parse_size_arg("64M").unwrap(), "64M");
        assert!(parse_size_arg("12Q").is_err());
    }
}
