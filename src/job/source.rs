//! The text of a job file and its positions: byte offsets to lines, errors that name the file,
//! the line and the field, and the field a TOML error's span falls in.

use std::ops::Range;
use std::path::Path;

use toml::de::{DeTable, DeValue};

use crate::Error;

/// A job file's path (as given) and text.
pub(crate) struct Source<'a> {
    /// The path as given, for messages.
    pub path: &'a Path,
    /// The whole file.
    pub text: &'a str,
}

impl Source<'_> {
    /// The 1-based line of byte `offset` (the last line for offsets past the end).
    pub fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        1 + self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }

    /// An [`Error::Job`] at byte `offset` for `field` (a description such as ``field `nodes` ``).
    pub fn error(
        &self,
        offset: usize,
        field: impl Into<String>,
        detail: impl Into<String>,
    ) -> Error {
        Error::Job {
            path: self.path.display().to_string(),
            line: self.line(offset),
            field: field.into(),
            detail: detail.into(),
        }
    }

    /// Turns an error of the `toml` crate into an [`Error::Job`] naming the line and the field
    /// its span falls in (found in `doc`, the parsed document, when there is one).
    pub fn toml_error(&self, err: &toml::de::Error, doc: Option<&DeTable<'_>>) -> Error {
        let detail = err
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ")
            .replace("expected i64", "expected an integer")
            .replace("expected f64", "expected a number");
        let Some(span) = err.span() else {
            return self.error(0, "the file", detail);
        };
        let path = doc.map(|d| key_path(d, &span)).unwrap_or_default();
        let field = if path.is_empty() {
            match key_on_line(self.text, span.start) {
                Some(key) => format!("field `{key}`"),
                None => "TOML syntax".to_string(),
            }
        } else {
            describe(doc, &path)
        };
        self.error(span.start, field, detail)
    }
}

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// A key of a table.
    Key(String),
    /// An element of an array.
    Index(usize),
}

/// The deepest key path whose key or value contains the start of `span`.
fn key_path(table: &DeTable<'_>, span: &Range<usize>) -> Vec<Step> {
    let mut path = Vec::new();
    find_in_table(table, span.start, &mut path);
    path
}

/// Searches `table` for `pos`, pushing the steps of the deepest match.
fn find_in_table(table: &DeTable<'_>, pos: usize, path: &mut Vec<Step>) -> bool {
    for (key, value) in table {
        let depth = path.len();
        path.push(Step::Key(key.get_ref().to_string()));
        if find_in_value(value.get_ref(), pos, path) {
            return true;
        }
        let key_span = key.span();
        let value_span = value.span();
        if contains(&key_span, pos) || contains(&value_span, pos) {
            return true;
        }
        path.truncate(depth);
    }
    false
}

/// Searches inside a value (tables and arrays) for `pos`.
fn find_in_value(value: &DeValue<'_>, pos: usize, path: &mut Vec<Step>) -> bool {
    match value {
        DeValue::Table(t) => find_in_table(t, pos, path),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let depth = path.len();
                path.push(Step::Index(i));
                if find_in_value(item.get_ref(), pos, path) || contains(&item.span(), pos) {
                    return true;
                }
                path.truncate(depth);
            }
            false
        }
        _ => false,
    }
}

/// Whether `pos` lies in `span` (an empty span counts at its start).
fn contains(span: &Range<usize>, pos: usize) -> bool {
    span.contains(&pos) || (span.is_empty() && span.start == pos)
}

/// Describes a key path for messages: ``workload 2 (resnet), field `dtype` `` for a field of
/// a workload, ``field `nodes` `` at the top.
fn describe(doc: Option<&DeTable<'_>>, path: &[Step]) -> String {
    match path {
        [Step::Key(table), Step::Index(i), rest @ ..] if table == "workload" => {
            let name = doc.and_then(|d| workload_name(d, *i));
            let what = workload_label(*i, name.as_deref());
            match rest {
                [] => what,
                _ => format!("{what}, field `{}`", dotted(rest)),
            }
        }
        _ => format!("field `{}`", dotted(path)),
    }
}

/// The `name` of workload `index` in the parsed document, if it is a string.
fn workload_name(doc: &DeTable<'_>, index: usize) -> Option<String> {
    let (_, workloads) = doc.iter().find(|(k, _)| k.get_ref() == "workload")?;
    let DeValue::Array(items) = workloads.get_ref() else {
        return None;
    };
    let DeValue::Table(table) = items.get(index)?.get_ref() else {
        return None;
    };
    let (_, name) = table.iter().find(|(k, _)| k.get_ref() == "name")?;
    match name.get_ref() {
        DeValue::String(s) => Some(s.to_string()),
        _ => None,
    }
}

/// `workload 2 (resnet)` for workload index 1 named `resnet`; `workload 2` without a name.
pub(crate) fn workload_label(index: usize, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("workload {} ({name})", index + 1),
        None => format!("workload {}", index + 1),
    }
}

/// A key path as `inputs.data_0` or `shapes[1]`.
fn dotted(path: &[Step]) -> String {
    let mut text = String::new();
    for step in path {
        match step {
            Step::Key(k) => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push_str(k);
            }
            Step::Index(i) => text.push_str(&format!("[{i}]")),
        }
    }
    text
}

/// The bare key assigned on the line of byte `offset` (`reps` in `reps = "five"`), if any.
fn key_on_line(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = &text[start..end];
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    bare.then(|| key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_count_from_one() {
        let src = Source {
            path: Path::new("j.toml"),
            text: "a = 1\nb = 2\n",
        };
        assert_eq!(src.line(0), 1);
        assert_eq!(src.line(6), 2);
        assert_eq!(src.line(1000), 3);
    }

    #[test]
    fn the_key_of_a_line_is_found() {
        let text = "x = 1\nreps = \"five\"\n";
        assert_eq!(key_on_line(text, 13).as_deref(), Some("reps"));
        assert_eq!(key_on_line("[[workload]\n", 3), None);
    }
}
