//! Finding the line and the dotted key of an error in the file's text.

use super::*; // a part of `config`: its types, helpers and imports

/// The marker [`dotted_path_at`] puts into a copy of the file.
pub(super) const PROBE: &str = "__twinfs_probe__";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Probe {
    /// The span covers a key.
    Key,
    /// The span covers a value.
    Value,
}

/// The dotted path of the key (or of the value) at `span` in `text`.
///
/// The TOML error knows the span but not the enclosing table, which may come from a
/// header lines above, a dotted key or an inline table. Rather than re-implement
/// TOML's scoping, put a marker at the span in a copy of the file, parse the copy
/// and look for the marker. Only runs on the error path.
pub(super) fn dotted_path_at(text: &str, span: Range<usize>, what: Probe) -> Option<String> {
    let spanned = text.get(span.clone())?;
    let before = text.get(..span.start)?;
    let at_line_start = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .trim()
        .is_empty();
    if what == Probe::Value && at_line_start && spanned.starts_with('[') {
        // The value is a whole `[table]` or `[[array]]` section: its span starts at
        // the header, and the header holds the dotted key.
        let header = spanned.lines().next()?;
        let key = header.trim_start_matches('[').split(']').next()?;
        let table: toml::Table = format!("{key} = \"{PROBE}\"").parse().ok()?;
        return find_unique(&table, what);
    }
    let marker = match what {
        Probe::Key => PROBE.to_owned(),
        Probe::Value => format!("\"{PROBE}\""),
    };
    let probed = [text.get(..span.start)?, &marker, text.get(span.end..)?].concat();
    let table: toml::Table = probed.parse().ok()?;
    find_unique(&table, what)
}

pub(super) fn find_unique(table: &toml::Table, what: Probe) -> Option<String> {
    let mut found = Vec::new();
    find_probe(table, &mut String::new(), what, &mut found);
    if found.len() == 1 {
        found.pop()
    } else {
        None
    }
}

pub(super) fn find_probe(
    table: &toml::Table,
    path: &mut String,
    what: Probe,
    found: &mut Vec<String>,
) {
    for (key, value) in table {
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
        let hit = match what {
            Probe::Key => key == PROBE,
            Probe::Value => value.as_str() == Some(PROBE),
        };
        if hit {
            found.push(path.clone());
        }
        find_probe_in_value(value, path, what, found);
        path.truncate(len);
    }
}

pub(super) fn find_probe_in_value(
    value: &toml::Value,
    path: &mut String,
    what: Probe,
    found: &mut Vec<String>,
) {
    match value {
        toml::Value::Table(t) => find_probe(t, path, what, found),
        toml::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                if what == Probe::Value && item.as_str() == Some(PROBE) {
                    found.push(path.clone());
                }
                find_probe_in_value(item, path, what, found);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// The 1-based line of byte `offset` in `text`.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Joins a multi-line parser message into one line (errors are printed as one line).
pub(super) fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}
