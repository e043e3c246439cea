//! Bad input, one kind at a time: each must name the line and the field.
use super::*;

const GOOD: &str = r#"name = "t"

[[target]]
node = "node3"
admin = "127.0.0.13:9901"
listeners = ["rpc", "gateway"]

[candidate]
binary = "target/release/storage"

[baseline]
kind = "fresh"

[steps]
weights = [5, 25, 50]
min_time = "1m"
max_time = "10m"
min_requests = 2000
tick = "5s"

[slo]
error_rate = 0.001
p99_ratio = 1.5

[test]
alpha = 0.05
beta = 0.2
effect = 2.0

[inconclusive]
hold = "5m"

[promotion]
scope = "one"
bake = "2m"

[split]
ttl = "30s"
"#;

fn with(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from}");
    GOOD.replacen(from, to, 1)
}

/// The problems of `text`, as `(line, field)` plus the rendered error.
fn problems(text: &str) -> (Vec<(usize, String)>, String) {
    match Plan::parse(text, "p.toml") {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => {
            let shown = e.to_string();
            let PlanError::Invalid { problems, .. } = e else {
                panic!("{shown}")
            };
            (
                problems.into_iter().map(|p| (p.line, p.field)).collect(),
                shown,
            )
        }
    }
}

fn one(text: &str, line: usize, field: &str) -> String {
    let (p, shown) = problems(text);
    assert_eq!(p, vec![(line, field.to_string())], "{shown}");
    assert!(
        shown.starts_with(&format!("p.toml:{line}: {field}: ")),
        "{shown}"
    );
    shown
}

#[test]
fn the_good_plan_parses_with_defaults() {
    let p = Plan::parse(GOOD, "p.toml").unwrap();
    assert_eq!(p.steps.weights, vec![5, 25, 50]);
    assert_eq!(p.steps.min_time, Duration::from_secs(60));
    assert_eq!(p.slo.critical_local_errors, 1);
    assert!(!p.split.sticky && p.load.is_none());
    // Two tests carried over the whole rollout (guard, relative), whatever the steps and bakes.
    assert_eq!(p.tests_in_budget(), 2);
    assert!((p.alpha_per_test() - 0.05 / 2.0).abs() < 1e-15);
    assert_eq!(p.split_at(1), (25, 25, 50));
    // Serializable for the journal, and back.
    let json = serde_json::to_string(&p).unwrap();
    assert!(json.contains("\"min_time\":\"1m\""), "{json}");
    assert_eq!(serde_json::from_str::<Plan>(&json).unwrap(), p);
}

#[test]
fn syntax_error() {
    one(&with("alpha = 0.05", "alpha = = 0.05"), 26, "test.alpha");
}

#[test]
fn unknown_field_is_named() {
    let shown = one(
        &with("min_requests = 2000", "min_requets = 2000"),
        18,
        "steps.min_requets",
    );
    assert!(shown.contains("unknown field"), "{shown}");
}

#[test]
fn missing_field_is_named() {
    // The line of the table that lacks it.
    one(&with("hold = \"5m\"\n", ""), 30, "inconclusive.hold");
    let (p, shown) = problems(&with("[split]\nttl = \"30s\"\n", ""));
    assert_eq!(p[0].1, "split", "{shown}");
}

#[test]
fn wrong_type() {
    one(
        &with("min_requests = 2000", "min_requests = \"lots\""),
        18,
        "steps.min_requests",
    );
    one(
        &with("kind = \"fresh\"", "kind = \"yesterday\""),
        12,
        "baseline.kind",
    );
}

#[test]
fn bad_durations_and_time_order() {
    one(
        &with("min_time = \"1m\"", "min_time = \"a minute\""),
        16,
        "steps.min_time",
    );
    one(
        &with("max_time = \"10m\"", "max_time = \"30s\""),
        17,
        "steps.max_time",
    );
    one(&with("ttl = \"30s\"", "ttl = \"5s\""), 38, "split.ttl");
}

#[test]
fn bad_weights() {
    one(&with("[5, 25, 50]", "[5, 60]"), 15, "steps.weights");
    one(&with("[5, 25, 50]", "[25, 5]"), 15, "steps.weights");
    one(&with("[5, 25, 50]", "[]"), 15, "steps.weights");
    // With the stable node as baseline, up to 99 %.
    let stable =
        with("kind = \"fresh\"", "kind = \"stable\"").replacen("[5, 25, 50]", "[5, 60, 99]", 1);
    let p = Plan::parse(&stable, "p.toml").unwrap();
    assert_eq!(p.split_at(1), (60, 0, 40));
}

#[test]
fn bad_statistics() {
    one(&with("alpha = 0.05", "alpha = 0.7"), 26, "test.alpha");
    one(&with("beta = 0.2", "beta = 0"), 27, "test.beta");
    one(&with("effect = 2.0", "effect = 1.0"), 28, "test.effect");
    one(
        &with("error_rate = 0.001", "error_rate = 1.5"),
        22,
        "slo.error_rate",
    );
    one(
        &with("p99_ratio = 1.5", "p99_ratio = 0.9"),
        23,
        "slo.p99_ratio",
    );
    one(
        &with("min_requests = 2000", "min_requests = 0"),
        18,
        "steps.min_requests",
    );
}

#[test]
fn effect_times_objective_must_stay_a_probability() {
    let t =
        with("error_rate = 0.001", "error_rate = 0.4").replacen("effect = 2.0", "effect = 3", 1);
    one(&t, 28, "test.effect");
}

#[test]
fn bad_targets() {
    one(&with("127.0.0.13:9901", "node3:9901"), 5, "target[0].admin");
    one(
        &with("[\"rpc\", \"gateway\"]", "[]"),
        6,
        "target[0].listeners",
    );
    one(
        &with("[\"rpc\", \"gateway\"]", "[\"rpc\", \"rpc\"]"),
        6,
        "target[0].listeners",
    );
    let twice = with("[candidate]", "[[target]]\nnode = \"node3\"\nadmin = \"127.0.0.12:9901\"\nlisteners = [\"rpc\"]\n\n[candidate]");
    one(&twice, 8, "target[1]");
    one(
        &with("binary = \"target/release/storage\"", "binary = \" \""),
        9,
        "candidate.binary",
    );
}

#[test]
fn bad_load() {
    let load = "\n[load]\nlistener = \"nbd\"\nrate = 0\nmethod = \"get\"\npaths = [\"api\"]\n";
    let text = format!("{GOOD}{load}");
    let (p, shown) = problems(&text);
    let fields: Vec<&str> = p.iter().map(|(_, f)| f.as_str()).collect();
    assert_eq!(
        fields,
        ["load.listener", "load.rate", "load.method", "load.paths"],
        "{shown}"
    );
    assert_eq!(p[0].0, 41, "{shown}");
}

#[test]
fn several_problems_are_all_reported_in_line_order() {
    let t = with("alpha = 0.05", "alpha = 2").replacen("hold = \"5m\"", "hold = \"soon\"", 1);
    let (p, _) = problems(&t);
    assert_eq!(
        p,
        vec![(26, "test.alpha".into()), (31, "inconclusive.hold".into())]
    );
}

#[test]
fn unreadable_file() {
    let e = Plan::load(Path::new("/nonexistent/plan.toml")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/nonexistent/plan.toml: cannot read"),
        "{e}"
    );
}

#[test]
fn target_data_and_restart() {
    let text = with(
        "listeners = [\"rpc\", \"gateway\"]",
        "listeners = [\"rpc\", \"gateway\"]\ndata = \"/var/lib/n3\"\nrestart = \"systemctl restart n3 {binary}\"",
    );
    let p = Plan::parse(&text, "p.toml").unwrap();
    assert_eq!(p.targets[0].data, Some(PathBuf::from("/var/lib/n3")));
    assert!(p.targets[0]
        .restart
        .as_deref()
        .unwrap()
        .contains("{binary}"));
    let bad = with(
        "listeners = [\"rpc\", \"gateway\"]",
        "listeners = [\"rpc\", \"gateway\"]\nrestart = \"systemctl restart n3\"",
    );
    let msg = one(&bad, 7, "target[0].restart");
    assert!(msg.contains("{binary}"), "{msg}");
}
