//! Human feedback in: reading feedback files in the formats people have, row by row,
//! normalising each row into hone's records and rejecting bad rows with a reason. The
//! `feedback-ingest` stage is a thin wrapper around [`ingest`].

pub mod formats;
pub mod read;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Deserialize;

use crate::artifact::feedback::{FeedbackWriter, Record, Reject, Summary};
use crate::artifact::table::{Provenance, TableWriter};
pub use formats::Format;
pub use read::FileType;

/// Why one source row was not ingested.
#[derive(Debug, Clone, PartialEq)]
pub struct RowError {
    /// A reason code (see the `rejects` table schema).
    pub reason: &'static str,
    pub detail: String,
    /// The start of the raw row, when the reader has it.
    pub raw: String,
}

impl RowError {
    pub fn new(reason: &'static str, detail: String, raw: String) -> Self {
        RowError {
            reason,
            detail,
            raw,
        }
    }
}

/// What to do with a bad row.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OnBadRows {
    /// Record it in the rejects table and go on (up to `max_reject_fraction`).
    #[default]
    Reject,
    /// Fail the stage at the first bad row.
    Fail,
}

#[derive(Debug, Clone)]
pub struct IngestOptions {
    pub format: Format,
    pub file_type: FileType,
    pub on_bad_rows: OnBadRows,
    pub max_reject_fraction: f64,
    pub annotator: Option<String>,
    pub dedupe: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("writing Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("row {row}: {reason}: {detail} (on_bad_rows: fail)")]
    BadRow {
        row: u64,
        reason: &'static str,
        detail: String,
    },
    #[error(
        "{rejected} of {rows} rows rejected ({percent:.1}%), more than max_reject_fraction {max}: {by_reason}; the first ones:\n{examples}"
    )]
    TooManyRejects {
        rejected: u64,
        rows: u64,
        percent: f64,
        max: f64,
        by_reason: String,
        examples: String,
    },
    #[error("interrupted")]
    Cancelled,
}

/// Reads `source`, writes the feedback tables into `feedback_dir` and the bad rows into
/// `rejects_path`. Streams: memory stays flat whatever the file size (the duplicate check
/// keeps 16 bytes per row).
pub fn ingest(
    source: &Path,
    options: &IngestOptions,
    feedback_dir: &Path,
    rejects_path: &Path,
    provenance: &Provenance,
    cancel: &AtomicBool,
) -> Result<Summary, IngestError> {
    let rows = read::rows(source, options.file_type).map_err(|source_err| IngestError::Io {
        context: format!("opening `{}`", source.display()),
        source: source_err,
    })?;
    let mut feedback = FeedbackWriter::create(feedback_dir, provenance)?;
    let mut rejects: TableWriter<Reject> = TableWriter::create(rejects_path, provenance)?;
    let mut seen: HashSet<[u8; 16]> = HashSet::new();
    let mut examples = Vec::new();
    for (n, (row, parsed)) in rows.enumerate() {
        if n % 4096 == 0 && cancel.load(Ordering::Relaxed) {
            return Err(IngestError::Cancelled);
        }
        if n > 0 && n % 200_000 == 0 {
            tracing::info!(rows = n, "ingesting");
        }
        feedback.summary.rows_read += 1;
        let outcome = parsed.and_then(|fields| {
            let raw = || read::excerpt(&serde_json::Value::Object(fields.clone()).to_string());
            let normalized =
                formats::normalize(options.format, &fields, row, options.annotator.as_deref())
                    .map_err(|e| RowError { raw: raw(), ..e })?;
            if options.dedupe
                && !normalized.records.is_empty()
                && !seen.insert(row_key(&normalized.records))
            {
                return Err(RowError::new(
                    "duplicate",
                    "the same labels appear on an earlier row".into(),
                    raw(),
                ));
            }
            let dropped_raw = if normalized.dropped.is_empty() {
                String::new()
            } else {
                raw()
            };
            Ok((normalized, dropped_raw))
        });
        match outcome {
            Ok((normalized, raw)) => {
                feedback.summary.missing_values += normalized.missing;
                for record in normalized.records {
                    feedback.push(record)?;
                }
                for e in normalized.dropped {
                    if options.on_bad_rows == OnBadRows::Fail {
                        return Err(IngestError::BadRow {
                            row,
                            reason: e.reason,
                            detail: e.detail,
                        });
                    }
                    feedback.summary.dropped_values += 1;
                    *feedback
                        .summary
                        .rejects_by_reason
                        .entry(e.reason.to_string())
                        .or_insert(0) += 1;
                    rejects.push(Reject {
                        source_row: row,
                        reason: e.reason.to_string(),
                        detail: e.detail,
                        raw: raw.clone(),
                    })?;
                }
            }
            Err(e) => {
                if options.on_bad_rows == OnBadRows::Fail {
                    return Err(IngestError::BadRow {
                        row,
                        reason: e.reason,
                        detail: e.detail,
                    });
                }
                feedback.summary.rejected += 1;
                *feedback
                    .summary
                    .rejects_by_reason
                    .entry(e.reason.to_string())
                    .or_insert(0) += 1;
                if examples.len() < 5 {
                    examples.push(format!("  row {row}: {}: {}", e.reason, e.detail));
                }
                rejects.push(Reject {
                    source_row: row,
                    reason: e.reason.to_string(),
                    detail: e.detail,
                    raw: e.raw,
                })?;
            }
        }
    }
    rejects.finish()?;
    let summary = feedback.finish()?;
    let fraction = if summary.rows_read == 0 {
        0.0
    } else {
        summary.rejected as f64 / summary.rows_read as f64
    };
    if fraction > options.max_reject_fraction {
        return Err(IngestError::TooManyRejects {
            rejected: summary.rejected,
            rows: summary.rows_read,
            percent: 100.0 * fraction,
            max: options.max_reject_fraction,
            by_reason: describe_counts(&summary.rejects_by_reason),
            examples: examples.join("\n"),
        });
    }
    Ok(summary)
}

/// Identity of a row's labels for the duplicate check: everything but the source row.
fn row_key(records: &[Record]) -> [u8; 16] {
    let mut hasher = blake3::Hasher::new();
    for record in records {
        let text = match record {
            Record::Comparison(c) => serde_json::to_string(&(
                &c.prompt_id,
                &c.prompt,
                &c.chosen,
                &c.rejected,
                c.margin,
                &c.annotator,
            )),
            Record::Ranking(r) => {
                serde_json::to_string(&(&r.prompt_id, &r.prompt, &r.responses, &r.annotator))
            }
            Record::Score(s) => serde_json::to_string(&(
                &s.prompt_id,
                &s.prompt,
                &s.response,
                &s.aspect,
                s.score,
                &s.annotator,
            )),
            Record::Flag(f) => serde_json::to_string(&(
                &f.prompt_id,
                &f.prompt,
                &f.response,
                &f.flag,
                f.value,
                &f.annotator,
            )),
        }
        .expect("records serialise");
        hasher.update(text.as_bytes());
        hasher.update(b"\0");
    }
    hasher.finalize().as_bytes()[..16]
        .try_into()
        .expect("16 bytes")
}

fn describe_counts(counts: &BTreeMap<String, u64>) -> String {
    counts
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}
