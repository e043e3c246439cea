//! `${name}` placeholders: filled from the file's own defaults (`[vars]` in TOML, `configuration`
//! in Chaos Toolkit JSON) and overridden by `--var name=value` on the command line, so the same
//! experiment runs against the local cluster (its defaults) and against a test's cluster on free
//! ports (the test's `--var`s).
//!
//! In TOML the substitution is textual and happens before parsing, which keeps line numbers intact
//! (values may not contain newlines). A value that is a TOML number or boolean is inserted as is, so
//! `rate = ${rate}` works; any other value is escaped for a basic string (`"…${x}…"`). `$${` writes a
//! literal `${`.

use crate::model::Problem;
use std::collections::BTreeMap;

/// The 1-based line of byte offset `at` in `text`.
pub fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

/// Every placeholder in `text`: (byte range of `${…}`, name).
fn placeholders(text: &str) -> Vec<(std::ops::Range<usize>, &str)> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i + 1 < b.len() {
        if b[i] == b'$' && b[i + 1] == b'$' && b.get(i + 2) == Some(&b'{') {
            i += 3; // escaped
            continue;
        }
        if b[i] == b'$' && b[i + 1] == b'{' {
            match text[i + 2..].find('}') {
                Some(end) => {
                    let name = &text[i + 2..i + 2 + end];
                    out.push((i..i + 3 + end, name));
                    i += 3 + end;
                    continue;
                }
                None => {
                    out.push((i..text.len(), ""));
                    break;
                }
            }
        }
        i += 1;
    }
    out
}

/// `text` with every placeholder replaced by `0`, which parses both inside a string and as a bare
/// value: enough to read the `[vars]` table of a file whose values still hold placeholders.
pub fn neutralized(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (r, _) in placeholders(text) {
        out.push_str(&text[last..r.start]);
        out.push('0');
        last = r.end;
    }
    out.push_str(&text[last..]);
    out
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.')
}

fn is_bare_scalar(v: &str) -> bool {
    v == "true" || v == "false" || v.parse::<i64>().is_ok() || v.parse::<f64>().is_ok()
}

/// Replaces the placeholders of a TOML text. `skip` is a byte range (the `[vars]` table) where a
/// placeholder is an error rather than a reference.
pub fn substitute_toml(
    text: &str,
    vars: &BTreeMap<String, String>,
    skip: Option<std::ops::Range<usize>>,
) -> Result<String, Vec<Problem>> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    let mut last = 0;
    for (r, name) in placeholders(text) {
        out.push_str(&text[last..r.start]);
        last = r.end;
        let line = Some(line_of(text, r.start));
        if skip.as_ref().is_some_and(|s| s.contains(&r.start)) {
            problems.push(Problem::new(
                line,
                "vars",
                "a [vars] value cannot use another variable",
            ));
            continue;
        }
        if !valid_name(name) {
            problems.push(Problem::new(
                line,
                format!("${{{name}}}"),
                "unterminated or empty placeholder (write ${name}, or $${ for a literal ${)",
            ));
            continue;
        }
        match vars.get(name) {
            Some(v) if v.contains('\n') => problems.push(Problem::new(
                line,
                format!("${{{name}}}"),
                "variable values cannot contain newlines",
            )),
            Some(v) if is_bare_scalar(v) => out.push_str(v),
            Some(v) => out.push_str(&v.replace('\\', "\\\\").replace('"', "\\\"")),
            None => problems.push(Problem::new(
                line,
                format!("${{{name}}}"),
                format!(
                    "unknown variable {name:?}: declare it under [vars] or pass --var {name}=VALUE"
                ),
            )),
        }
    }
    out.push_str(&text[last..]);
    let out = out.replace("$${", "${");
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Replaces placeholders inside one JSON string (Chaos Toolkit style). A string that is exactly one
/// placeholder whose value is a number becomes that number. Unknown names are reported by name.
pub fn substitute_json(v: &mut serde_json::Value, vars: &BTreeMap<String, String>) -> Vec<String> {
    let mut unknown = Vec::new();
    walk(v, vars, &mut unknown);
    unknown
}

fn walk(v: &mut serde_json::Value, vars: &BTreeMap<String, String>, unknown: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => {
            let ph = placeholders(s);
            if ph.is_empty() {
                return;
            }
            if ph.len() == 1 && ph[0].0 == (0..s.len()) {
                if let Some(val) = vars.get(ph[0].1) {
                    if let Ok(n) = serde_json::from_str::<serde_json::Number>(val) {
                        *v = serde_json::Value::Number(n);
                        return;
                    }
                }
            }
            let mut out = String::new();
            let mut last = 0;
            for (r, name) in &ph {
                out.push_str(&s[last..r.start]);
                last = r.end;
                match vars.get(*name) {
                    Some(val) => out.push_str(val),
                    None => {
                        unknown.push(name.to_string());
                        out.push_str(&s[r.clone()]);
                    }
                }
            }
            out.push_str(&s[last..]);
            *s = out.replace("$${", "${");
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| walk(x, vars, unknown)),
        serde_json::Value::Object(m) => m.values_mut().for_each(|x| walk(x, vars, unknown)),
        _ => {}
    }
}

/// Parses `name=value` from `--var`.
pub fn parse_cli_var(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("--var {s:?}: expected NAME=VALUE"))?;
    let k = k.trim();
    if !valid_name(k) {
        return Err(format!(
            "--var {s:?}: a name is letters, digits, '_', '-' or '.'"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn numbers_go_in_bare_strings_are_escaped_unknown_names_are_reported_with_their_line() {
        let v = vars(&[("rate", "20"), ("url", "http://a/\"b\""), ("d", "5s")]);
        let out = substitute_toml(
            "rate = ${rate}\nurl = \"${url}\"\nd = \"${d}\"\nlit = \"$${x}\"\n",
            &v,
            None,
        )
        .unwrap();
        assert_eq!(
            out,
            "rate = 20\nurl = \"http://a/\\\"b\\\"\"\nd = \"5s\"\nlit = \"${x}\"\n"
        );
        let e = substitute_toml("a = 1\n\nb = \"${nope}\"\n", &v, None).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].line, Some(3));
        assert!(e[0].msg.contains("--var nope="), "{}", e[0].msg);
        let e = substitute_toml("b = \"${oops\"\n", &v, None).unwrap_err();
        assert!(e[0].msg.contains("unterminated"));
        assert_eq!(
            neutralized("x = ${a}\ny = \"${b}/c\""),
            "x = 0\ny = \"0/c\""
        );
    }

    #[test]
    fn json_placeholders_keep_numbers_and_report_unknown_names() {
        let mut j = serde_json::json!({"a": "${n}", "b": ["x${s}y", "${zz}"]});
        let unknown = substitute_json(&mut j, &vars(&[("n", "2.5"), ("s", "-")]));
        assert_eq!(j, serde_json::json!({"a": 2.5, "b": ["x-y", "${zz}"]}));
        assert_eq!(unknown, vec!["zz".to_string()]);
        assert_eq!(
            parse_cli_var("a=b=c").unwrap(),
            ("a".to_string(), "b=c".to_string())
        );
        assert!(parse_cli_var("nope").is_err());
    }
}
