//! Lines and field names for problems, from byte offsets into the plan text.
//!
//! toml's errors and `Spanned` values give byte ranges; people need `LINE: field`. The field is the
//! enclosing table header (`[steps]`, the n-th `[[target]]`) plus the key on that line, which is
//! how plan files are written (docs/canary.md); for anything else the table alone is still named.

/// 1-based line of byte offset `at`.
pub(super) fn line_of(text: &str, at: usize) -> usize {
    let at = at.min(text.len());
    text.as_bytes()[..at]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The dotted field at byte offset `at`: table path plus the key written on that line (or the
/// nearest `key =` above it inside the same table, for values spanning lines).
pub(super) fn field_at(text: &str, at: usize) -> String {
    let target = line_of(text, at);
    let mut table = String::new();
    let mut key = String::new();
    let mut array_counts: Vec<(String, usize)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if i + 1 > target {
            break;
        }
        let t = line.trim();
        if let Some(name) = header(t) {
            table = name.to_string();
            if t.starts_with("[[") {
                let n = match array_counts.iter_mut().find(|(k, _)| k == name) {
                    Some((_, n)) => {
                        *n += 1;
                        *n
                    }
                    None => {
                        array_counts.push((name.to_string(), 0));
                        0
                    }
                };
                table = format!("{name}[{n}]");
            }
            key.clear();
        } else if let Some((k, _)) = t.split_once('=') {
            if !t.starts_with('#') {
                key = k.trim().trim_matches('"').to_string();
            }
        }
    }
    join(&table, &key)
}

/// `a.b`, or whichever of the two is non-empty.
pub(super) fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (false, true) => a.to_string(),
        (false, false) => format!("{a}.{b}"),
    }
}

/// The table name of a `[name]` or `[[name]]` header line.
fn header(t: &str) -> Option<&str> {
    let inner = t.strip_prefix('[')?;
    let inner = inner.strip_prefix('[').unwrap_or(inner);
    let end = inner.find(']')?;
    Some(inner[..end].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "name = \"x\"\n\n[[target]]\nnode = \"a\"\n\n[[target]]\nnode = \"b\"\nlisteners = [\n  \"rpc\",\n]\n[steps]\nmin_time = \"1m\"\n";

    #[test]
    fn lines_and_fields() {
        let at = |s: &str| T.find(s).unwrap();
        assert_eq!(line_of(T, at("name")), 1);
        assert_eq!(field_at(T, at("name")), "name");
        assert_eq!(field_at(T, at("\"a\"")), "target[0].node");
        assert_eq!(field_at(T, at("\"b\"")), "target[1].node");
        assert_eq!(field_at(T, at("\"rpc\"")), "target[1].listeners");
        assert_eq!(field_at(T, at("\"1m\"")), "steps.min_time");
        assert_eq!(line_of(T, at("\"1m\"")), 12);
        assert_eq!(field_at(T, at("[steps]")), "steps");
    }
}
