//! The environment and flag overlay: `GOCRED_A__B` names and values onto the parsed TOML table,
//! and serde's errors turned back into the key (and line) they are about.

/// The 1-based line of byte `offset` in `text`.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// `GOCRED_A__B_C` → `["a", "b_c"]`; `None` for names that are not config keys.
pub(super) fn env_key(name: &str) -> Option<Vec<String>> {
    let rest = name.strip_prefix("GOCRED_")?;
    if !rest.contains("__") {
        return None;
    }
    Some(rest.split("__").map(|s| s.to_ascii_lowercase()).collect())
}

/// An environment value as TOML: `true`/`false`, a `[...]` array, else a string.
pub(super) fn env_value(v: &str) -> toml::Value {
    match v {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ if v.trim_start().starts_with('[') => format!("v = {v}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(v.to_string())),
        _ => toml::Value::String(v.to_string()),
    }
}

/// Set `key` (a path of table names) in `table` to `value`, creating tables on the way.
pub(super) fn set_path(table: &mut toml::Table, key: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = key.split_last().ok_or("empty key")?;
    let mut cur = table;
    let mut parts = parents.iter().enumerate().peekable();
    while let Some((i, part)) = parts.next() {
        // `GOCRED_UPSTREAMS__0__URL`: a numeric part indexes an array of tables.
        let index = parts.peek().and_then(|(_, idx)| idx.parse::<usize>().ok());
        if let (Some(n), Some(toml::Value::Array(_))) = (index, cur.get(part.as_str())) {
            parts.next();
            let Some(toml::Value::Array(items)) = cur.get_mut(part.as_str()) else { unreachable!() };
            let item = items.get_mut(n).ok_or_else(|| format!("`{}` has no entry {n}", key[..=i].join(".")))?;
            cur = item.as_table_mut().ok_or_else(|| format!("`{}` is not a table", key[..=i + 1].join(".")))?;
            continue;
        }
        let entry = cur.entry(part.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry.as_table_mut().ok_or_else(|| format!("`{}` is not a table", key[..=i].join(".")))?;
    }
    cur.insert(last.clone(), value);
    Ok(())
}

/// Turn serde's error + path into (full key, message) so every message names the key.
pub(super) fn key_and_message(e: &serde_path_to_error::Error<toml::de::Error>) -> (String, String) {
    let path = e.path().to_string();
    let inner = e.inner().to_string();
    let mut inner = inner.trim().to_string();
    // toml appends " in `path`"; the key is named separately.
    if let Some(i) = inner.rfind(" in `")
        && inner.ends_with('`')
    {
        inner.truncate(i);
    }
    let join = |field: &str| {
        if path == "." || path.is_empty() { field.to_string() } else { format!("{path}.{field}") }
    };
    // serde: "missing field `x`" / "unknown field `x`, expected ..." are reported at the parent.
    for (prefix, what) in [("missing field `", "required key is missing"), ("unknown field `", "")] {
        if let Some(rest) = inner.strip_prefix(prefix)
            && let Some(end) = rest.find('`')
        {
            let field = &rest[..end];
            let key = if path.ends_with(field) { path.clone() } else { join(field) };
            let message = if what.is_empty() {
                let expected = rest[end + 1..].trim_start_matches(',').trim();
                if expected.is_empty() { "unknown key".to_string() } else { format!("unknown key ({expected})") }
            } else {
                what.to_string()
            };
            return (key, message);
        }
    }
    (if path == "." { String::new() } else { path }, inner)
}
