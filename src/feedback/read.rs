//! Streaming readers for feedback files: JSONL, CSV and Parquet each yield one JSON object
//! per source row, with its 1-based row number, or a reject for a row that cannot be read.
//! JSONL and CSV stream; a Parquet file is read into memory when it is at most 64 MiB
//! (`artifact::table::batches`), larger ones stream.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde_json::{Map, Value};

use super::RowError;
use crate::artifact::table;

/// The container format of a feedback file.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum FileType {
    Jsonl,
    Csv,
    Parquet,
}

impl FileType {
    /// From the file name: `.jsonl`/`.json`/`.ndjson`, `.csv`, `.parquet`/`.pq`.
    pub fn from_path(path: &Path) -> Option<FileType> {
        let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        if name.ends_with(".jsonl") || name.ends_with(".ndjson") || name.ends_with(".json") {
            Some(FileType::Jsonl)
        } else if name.ends_with(".csv") {
            Some(FileType::Csv)
        } else if name.ends_with(".parquet") || name.ends_with(".pq") {
            Some(FileType::Parquet)
        } else {
            None
        }
    }
}

/// One source row: its number and its fields, or why it could not be read.
pub type SourceRow = (u64, Result<Map<String, Value>, RowError>);

/// Opens `path` as `file_type` and streams its rows.
pub fn rows(
    path: &Path,
    file_type: FileType,
) -> std::io::Result<Box<dyn Iterator<Item = SourceRow>>> {
    Ok(match file_type {
        FileType::Jsonl => Box::new(JsonlRows {
            reader: BufReader::with_capacity(1 << 16, File::open(path)?),
            line: 0,
            buf: Vec::new(),
        }),
        FileType::Csv => Box::new(csv_rows(path)?),
        FileType::Parquet => Box::new(parquet_rows(path)?),
    })
}

/// Shortens a raw row for the rejects table.
pub fn excerpt(raw: &str) -> String {
    let mut out: String = raw.chars().take(500).collect();
    if out.len() < raw.len() {
        out.push_str("...");
    }
    out
}

struct JsonlRows {
    reader: BufReader<File>,
    line: u64,
    buf: Vec<u8>,
}

impl Iterator for JsonlRows {
    type Item = SourceRow;

    fn next(&mut self) -> Option<SourceRow> {
        loop {
            self.buf.clear();
            self.line += 1;
            match self.reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => {
                    return Some((
                        self.line,
                        Err(RowError::new(
                            "malformed",
                            format!("read error: {e}"),
                            String::new(),
                        )),
                    ));
                }
            }
            while matches!(self.buf.last(), Some(b'\n' | b'\r')) {
                self.buf.pop();
            }
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue; // blank lines are not rows
            }
            let text = match std::str::from_utf8(&self.buf) {
                Ok(t) => t,
                Err(e) => {
                    let raw = excerpt(&String::from_utf8_lossy(&self.buf));
                    return Some((
                        self.line,
                        Err(RowError::new(
                            "invalid_utf8",
                            format!("invalid UTF-8 at byte {}", e.valid_up_to()),
                            raw,
                        )),
                    ));
                }
            };
            // Python's `json` writes NaN and infinities as bare `NaN`, `Infinity` and
            // `-Infinity` tokens, which JSON does not have: they are read as null (a
            // missing number).
            let repaired;
            let text = match serde_json::from_str::<Value>(text) {
                Err(_) => match non_finite_to_null(text) {
                    Some(fixed) => {
                        repaired = fixed;
                        repaired.as_str()
                    }
                    None => text,
                },
                Ok(_) => text,
            };
            return Some((
                self.line,
                match serde_json::from_str::<Value>(text) {
                    Ok(Value::Object(map)) => Ok(map),
                    Ok(other) => Err(RowError::new(
                        "malformed",
                        format!("a row must be a JSON object, found {}", json_kind(&other)),
                        excerpt(text),
                    )),
                    Err(e) => Err(RowError::new(
                        "malformed",
                        format!("invalid JSON: {e}"),
                        excerpt(text),
                    )),
                },
            ));
        }
    }
}

/// `text` with every bare `NaN`, `Infinity` and `-Infinity` token (outside strings)
/// replaced by `null`; `None` when there is none.
fn non_finite_to_null(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            out.push(c);
            rest = &rest[c.len_utf8()..];
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        let token = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t));
        if let Some(token) = token {
            // Only a whole token: not `NaNa` or a part of a longer name.
            let after = rest[token.len()..].chars().next();
            if after.is_none_or(|a| !a.is_ascii_alphanumeric() && a != '_') {
                out.push_str("null");
                rest = &rest[token.len()..];
                changed = true;
                continue;
            }
        }
        if c == '"' {
            in_string = true;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    changed.then_some(out)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// CSV with a header row. A cell that starts with `[` or `{` and parses as JSON is taken as
/// JSON (rankings, conversations); every other cell is a string (numbers are parsed later,
/// where a number is expected).
fn csv_rows(path: &Path) -> std::io::Result<impl Iterator<Item = SourceRow> + use<>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_path(path)
        .map_err(std::io::Error::other)?;
    let headers: Vec<String> = reader
        .byte_headers()
        .map_err(std::io::Error::other)?
        .iter()
        .map(|h| {
            String::from_utf8_lossy(h)
                .trim_start_matches('\u{feff}')
                .to_string()
        })
        .collect();
    let mut records = reader.into_byte_records();
    let mut lines = LineCounter::open(path)?;
    let mut row = 1u64; // the header is line 1
    Ok(std::iter::from_fn(move || {
        let record = records.next()?;
        row += 1;
        Some(match record {
            Err(e) => {
                if let Some(pos) = e.position() {
                    row = lines.line_at(pos.byte() + 1);
                }
                (
                    row,
                    Err(RowError::new(
                        "malformed",
                        format!("invalid CSV: {e}"),
                        String::new(),
                    )),
                )
            }
            Ok(record) => {
                if let Some(pos) = record.position() {
                    row = lines.line_at(pos.byte() + 1);
                }
                let raw = excerpt(&String::from_utf8_lossy(record.as_slice()));
                let mut map = Map::new();
                let mut bad = None;
                for (name, cell) in headers.iter().zip(record.iter()) {
                    match std::str::from_utf8(cell) {
                        Ok(text) => {
                            map.insert(name.clone(), csv_cell(text));
                        }
                        Err(e) => {
                            bad = Some(RowError::new(
                                "invalid_utf8",
                                format!(
                                    "column `{name}`: invalid UTF-8 at byte {}",
                                    e.valid_up_to()
                                ),
                                raw.clone(),
                            ));
                            break;
                        }
                    }
                }
                (row, bad.map_or(Ok(map), Err))
            }
        })
    }))
}

/// The line (1-based) at a byte offset of a file, read alongside the CSV reader: csv counts
/// records' lines without the line breaks inside quoted cells, an editor counts them all.
struct LineCounter {
    reader: BufReader<File>,
    at: u64,
    line: u64,
}

impl LineCounter {
    fn open(path: &Path) -> std::io::Result<Self> {
        Ok(LineCounter {
            reader: BufReader::with_capacity(1 << 16, File::open(path)?),
            at: 0,
            line: 1,
        })
    }

    /// The line of the byte just before `byte` (csv's record offsets point at the end of
    /// the previous record's terminator with CRLF line ends, at the record's first byte
    /// with LF ones: counting through the byte before covers both). Offsets must not
    /// decrease between calls.
    fn line_at(&mut self, byte: u64) -> u64 {
        while self.at < byte {
            let Ok(buf) = self.reader.fill_buf() else {
                break;
            };
            if buf.is_empty() {
                break;
            }
            let take = buf.len().min((byte - self.at) as usize);
            self.line += buf[..take].iter().filter(|&&b| b == b'\n').count() as u64;
            self.at += take as u64;
            self.reader.consume(take);
        }
        self.line
    }
}

fn csv_cell(text: &str) -> Value {
    let trimmed = text.trim_start();
    if (trimmed.starts_with('[') || trimmed.starts_with('{'))
        && let Ok(v) = serde_json::from_str::<Value>(text)
    {
        return v;
    }
    if text.is_empty() {
        return Value::Null;
    }
    Value::String(text.to_string())
}

fn parquet_rows(path: &Path) -> std::io::Result<impl Iterator<Item = SourceRow> + use<>> {
    let mut batches = table::batches(path).map_err(std::io::Error::other)?;
    let mut current: Option<arrow::array::RecordBatch> = None;
    let mut index = 0usize;
    let mut row = 0u64;
    let mut failed = false;
    Ok(std::iter::from_fn(move || {
        loop {
            if failed {
                return None;
            }
            if let Some(batch) = &current
                && index < batch.num_rows()
            {
                row += 1;
                let i = index;
                index += 1;
                let schema = batch.schema();
                let mut map = Map::new();
                for (c, field) in schema.fields().iter().enumerate() {
                    match table::json_value(batch.column(c).as_ref(), i) {
                        Some(v) => {
                            map.insert(field.name().clone(), v);
                        }
                        None => {
                            return Some((
                                row,
                                Err(RowError::new(
                                    "invalid_utf8",
                                    format!("column `{}` is not valid UTF-8", field.name()),
                                    String::new(),
                                )),
                            ));
                        }
                    }
                }
                return Some((row, Ok(map)));
            }
            match batches.next()? {
                Ok(batch) => {
                    current = Some(batch);
                    index = 0;
                }
                Err(e) => {
                    failed = true;
                    return Some((
                        row + 1,
                        Err(RowError::new(
                            "malformed",
                            format!("unreadable Parquet data: {e}"),
                            String::new(),
                        )),
                    ));
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_non_finite_tokens_become_null_outside_strings_only() {
        assert_eq!(
            non_finite_to_null(
                r#"{"a": NaN, "b": -Infinity, "c": [Infinity], "d": "NaN and Infinity"}"#
            )
            .unwrap(),
            r#"{"a": null, "b": null, "c": [null], "d": "NaN and Infinity"}"#
        );
        assert_eq!(non_finite_to_null(r#"{"a": "x \" NaN"}"#), None);
        assert_eq!(non_finite_to_null(r#"{"a": 1}"#), None);
        // Not a token: part of a longer word (invalid JSON either way).
        assert_eq!(non_finite_to_null("NaNa"), None);
    }
}
