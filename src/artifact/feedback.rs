//! The normalised feedback artifact: a directory of four Parquet tables (comparisons,
//! rankings, scores, flags) and a `summary.json`, whatever format the feedback came in.
//! `feedback-ingest` and `annotate` write it; reward modelling reads it.

use std::path::Path;

use arrow::array::ArrayRef;
use serde::{Deserialize, Serialize};

use super::table::{Column, ColumnType::*, Provenance, TableKind, TableRow, TableWriter, col};

const PROMPT_ID: Column = Column::new(
    "prompt_id",
    Utf8,
    false,
    "prompt identifier: given by the source, else the first 16 hex digits of blake3(prompt)",
);
const PROMPT: Column = Column::new("prompt", Utf8, false, "the prompt text");
const ANNOTATOR: Column = Column::new("annotator", Utf8, true, "who gave the label, when known");
const SOURCE_ROW: Column = Column::new(
    "source_row",
    UInt64,
    false,
    "1-based row (line, record) of the source file the label came from",
);

pub static COMPARISONS: TableKind = TableKind {
    name: "comparisons",
    version: 1,
    doc: "pairwise preferences: `chosen` was preferred to `rejected` for `prompt`",
    columns: &[
        PROMPT_ID,
        PROMPT,
        Column::new("chosen", Utf8, false, "the preferred response"),
        Column::new("rejected", Utf8, false, "the other response"),
        Column::new(
            "margin",
            Float64,
            true,
            "how strongly `chosen` is preferred, when the source says (Bradley-Terry margin)",
        ),
        ANNOTATOR,
        SOURCE_ROW,
    ],
};

pub static RANKINGS: TableKind = TableKind {
    name: "rankings",
    version: 1,
    doc: "K-way rankings of responses to one prompt, best first",
    columns: &[
        PROMPT_ID,
        PROMPT,
        Column::new(
            "responses",
            ListUtf8,
            false,
            "the responses, best first (at least two, all different)",
        ),
        ANNOTATOR,
        SOURCE_ROW,
    ],
};

pub static SCORES: TableKind = TableKind {
    name: "scores",
    version: 1,
    doc: "a numeric rating of one response on one aspect",
    columns: &[
        PROMPT_ID,
        PROMPT,
        Column::new("response", Utf8, false, "the rated response"),
        Column::new(
            "aspect",
            Utf8,
            false,
            "what was rated: `overall`, `helpfulness`, `honesty`, ..., or `label` for a binary good/bad label (1 or 0)",
        ),
        Column::new(
            "score",
            Float64,
            false,
            "the rating, on the scale of `scale_min`..`scale_max`",
        ),
        Column::new("scale_min", Float64, false, "lowest possible rating"),
        Column::new("scale_max", Float64, false, "highest possible rating"),
        ANNOTATOR,
        SOURCE_ROW,
    ],
};

pub static FLAGS: TableKind = TableKind {
    name: "flags",
    version: 1,
    doc: "a behavioural flag raised (or explicitly cleared) on one response",
    columns: &[
        PROMPT_ID,
        PROMPT,
        Column::new("response", Utf8, false, "the flagged response"),
        Column::new("flag", Utf8, false, "`hallucination`, `bias` or `unsafe`"),
        Column::new("value", Boolean, false, "whether the behaviour is present"),
        ANNOTATOR,
        SOURCE_ROW,
    ],
};

pub static REJECTS: TableKind = TableKind {
    name: "rejects",
    version: 1,
    doc: "source rows that were not ingested, and why",
    columns: &[
        SOURCE_ROW,
        Column::new(
            "reason",
            Utf8,
            false,
            "a reason code: `malformed`, `invalid_utf8`, `missing_field`, `wrong_type`, `empty_text`, `identical_pair`, `out_of_range`, `not_a_number`, `duplicate`, `prompt_mismatch`, `unknown_kind`, `too_few_responses`",
        ),
        Column::new("detail", Utf8, false, "what exactly was wrong, in words"),
        Column::new(
            "raw",
            Utf8,
            false,
            "the start of the offending row (at most 500 characters; invalid UTF-8 replaced)",
        ),
    ],
};

/// The table kinds of feedback and candidates; `stages::table_kinds` adds the stages' own.
pub fn table_kinds() -> [&'static TableKind; 6] {
    [
        &COMPARISONS,
        &RANKINGS,
        &SCORES,
        &FLAGS,
        &REJECTS,
        &super::candidates::CANDIDATES,
    ]
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub prompt_id: String,
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    pub margin: Option<f64>,
    pub annotator: Option<String>,
    pub source_row: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranking {
    pub prompt_id: String,
    pub prompt: String,
    pub responses: Vec<String>,
    pub annotator: Option<String>,
    pub source_row: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub prompt_id: String,
    pub prompt: String,
    pub response: String,
    pub aspect: String,
    pub score: f64,
    pub scale_min: f64,
    pub scale_max: f64,
    pub annotator: Option<String>,
    pub source_row: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flag {
    pub prompt_id: String,
    pub prompt: String,
    pub response: String,
    pub flag: String,
    pub value: bool,
    pub annotator: Option<String>,
    pub source_row: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reject {
    pub source_row: u64,
    pub reason: String,
    pub detail: String,
    pub raw: String,
}

impl TableRow for Comparison {
    const KIND: &'static TableKind = &COMPARISONS;
    fn columns(rows: &[Self]) -> Vec<ArrayRef> {
        vec![
            col::utf8(rows.iter().map(|r| r.prompt_id.as_str())),
            col::utf8(rows.iter().map(|r| r.prompt.as_str())),
            col::utf8(rows.iter().map(|r| r.chosen.as_str())),
            col::utf8(rows.iter().map(|r| r.rejected.as_str())),
            col::f64_opt(rows.iter().map(|r| r.margin)),
            col::utf8_opt(rows.iter().map(|r| r.annotator.as_deref())),
            col::u64(rows.iter().map(|r| r.source_row)),
        ]
    }
}

impl TableRow for Ranking {
    const KIND: &'static TableKind = &RANKINGS;
    fn columns(rows: &[Self]) -> Vec<ArrayRef> {
        vec![
            col::utf8(rows.iter().map(|r| r.prompt_id.as_str())),
            col::utf8(rows.iter().map(|r| r.prompt.as_str())),
            col::list_utf8(rows.iter().map(|r| r.responses.as_slice())),
            col::utf8_opt(rows.iter().map(|r| r.annotator.as_deref())),
            col::u64(rows.iter().map(|r| r.source_row)),
        ]
    }
}

impl TableRow for Score {
    const KIND: &'static TableKind = &SCORES;
    fn columns(rows: &[Self]) -> Vec<ArrayRef> {
        vec![
            col::utf8(rows.iter().map(|r| r.prompt_id.as_str())),
            col::utf8(rows.iter().map(|r| r.prompt.as_str())),
            col::utf8(rows.iter().map(|r| r.response.as_str())),
            col::utf8(rows.iter().map(|r| r.aspect.as_str())),
            col::f64(rows.iter().map(|r| r.score)),
            col::f64(rows.iter().map(|r| r.scale_min)),
            col::f64(rows.iter().map(|r| r.scale_max)),
            col::utf8_opt(rows.iter().map(|r| r.annotator.as_deref())),
            col::u64(rows.iter().map(|r| r.source_row)),
        ]
    }
}

impl TableRow for Flag {
    const KIND: &'static TableKind = &FLAGS;
    fn columns(rows: &[Self]) -> Vec<ArrayRef> {
        vec![
            col::utf8(rows.iter().map(|r| r.prompt_id.as_str())),
            col::utf8(rows.iter().map(|r| r.prompt.as_str())),
            col::utf8(rows.iter().map(|r| r.response.as_str())),
            col::utf8(rows.iter().map(|r| r.flag.as_str())),
            col::bool(rows.iter().map(|r| r.value)),
            col::utf8_opt(rows.iter().map(|r| r.annotator.as_deref())),
            col::u64(rows.iter().map(|r| r.source_row)),
        ]
    }
}

impl TableRow for Reject {
    const KIND: &'static TableKind = &REJECTS;
    fn columns(rows: &[Self]) -> Vec<ArrayRef> {
        vec![
            col::u64(rows.iter().map(|r| r.source_row)),
            col::utf8(rows.iter().map(|r| r.reason.as_str())),
            col::utf8(rows.iter().map(|r| r.detail.as_str())),
            col::utf8(rows.iter().map(|r| r.raw.as_str())),
        ]
    }
}

/// One normalised label.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Comparison(Comparison),
    Ranking(Ranking),
    Score(Score),
    Flag(Flag),
}

/// Counts written to `summary.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub rows_read: u64,
    pub comparisons: u64,
    pub rankings: u64,
    pub scores: u64,
    pub flags: u64,
    /// Rows rejected whole.
    pub rejected: u64,
    /// Values dropped from rows whose other values were kept (an UltraFeedback rating
    /// out of range); each is a row of the rejects table.
    pub dropped_values: u64,
    /// Values that were `N/A`, null, NaN or empty: skipped, not rejected.
    pub missing_values: u64,
    /// Reason code -> number of rows of the rejects table (whole rows and dropped values).
    pub rejects_by_reason: std::collections::BTreeMap<String, u64>,
}

/// Writes the four tables of a feedback directory as records arrive.
pub struct FeedbackWriter {
    comparisons: TableWriter<Comparison>,
    rankings: TableWriter<Ranking>,
    scores: TableWriter<Score>,
    flags: TableWriter<Flag>,
    pub summary: Summary,
    dir: std::path::PathBuf,
}

impl FeedbackWriter {
    pub fn create(
        dir: &Path,
        provenance: &Provenance,
    ) -> Result<Self, parquet::errors::ParquetError> {
        std::fs::create_dir_all(dir)?;
        Ok(FeedbackWriter {
            comparisons: TableWriter::create(&dir.join("comparisons.parquet"), provenance)?,
            rankings: TableWriter::create(&dir.join("rankings.parquet"), provenance)?,
            scores: TableWriter::create(&dir.join("scores.parquet"), provenance)?,
            flags: TableWriter::create(&dir.join("flags.parquet"), provenance)?,
            summary: Summary::default(),
            dir: dir.to_path_buf(),
        })
    }

    pub fn push(&mut self, record: Record) -> Result<(), parquet::errors::ParquetError> {
        match record {
            Record::Comparison(r) => {
                self.summary.comparisons += 1;
                self.comparisons.push(r)
            }
            Record::Ranking(r) => {
                self.summary.rankings += 1;
                self.rankings.push(r)
            }
            Record::Score(r) => {
                self.summary.scores += 1;
                self.scores.push(r)
            }
            Record::Flag(r) => {
                self.summary.flags += 1;
                self.flags.push(r)
            }
        }
    }

    /// Closes the tables and writes `summary.json`.
    pub fn finish(self) -> Result<Summary, parquet::errors::ParquetError> {
        self.comparisons.finish()?;
        self.rankings.finish()?;
        self.scores.finish()?;
        self.flags.finish()?;
        let json = serde_json::to_vec_pretty(&self.summary).expect("summary serialises");
        std::fs::write(self.dir.join("summary.json"), json)?;
        Ok(self.summary)
    }
}

/// The id of a prompt that came without one: stable across files and runs.
pub fn prompt_id(prompt: &str) -> String {
    blake3::hash(prompt.as_bytes()).to_hex()[..16].to_string()
}
