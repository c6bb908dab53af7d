//! The candidates table: K sampled responses per prompt, what `generate` writes and what
//! `annotate` and `odpo-select` read. Also readable from JSONL with the same fields, so that
//! candidates made elsewhere (or the HHH world's templated ones) plug in.

use std::path::Path;

use arrow::array::ArrayRef;
use serde::{Deserialize, Serialize};

use super::table::{self, Column, ColumnType::*, TableKind, TableRow, col};

pub static CANDIDATES: TableKind = TableKind {
    name: "candidates",
    version: 1,
    doc: "sampled responses, several per prompt",
    columns: &[
        Column::new("prompt_id", Utf8, false, "prompt identifier"),
        Column::new("prompt", Utf8, false, "the prompt text"),
        Column::new("response", Utf8, false, "the sampled response text"),
        Column::new(
            "sample",
            UInt64,
            false,
            "index of this sample among the prompt's samples (0-based)",
        ),
        Column::new(
            "token_ids",
            ListInt64,
            true,
            "the response's token ids (null when the response was not sampled by hone)",
        ),
        Column::new(
            "logprob_sum",
            Float64,
            true,
            "sum of the sampled tokens' log-probabilities under the sampling policy",
        ),
        Column::new("seed", UInt64, false, "the seed the sample was drawn with"),
    ],
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub prompt_id: String,
    pub prompt: String,
    pub response: String,
    #[serde(default)]
    pub sample: u64,
    #[serde(default)]
    pub token_ids: Option<Vec<i64>>,
    #[serde(default)]
    pub logprob_sum: Option<f64>,
    #[serde(default)]
    pub seed: u64,
}

impl TableRow for Candidate {
    const KIND: &'static TableKind = &CANDIDATES;
    fn columns(rows: &[Self]) -> Vec<ArrayRef> {
        let token_ids: Vec<Option<&[i64]>> = rows.iter().map(|r| r.token_ids.as_deref()).collect();
        vec![
            col::utf8(rows.iter().map(|r| r.prompt_id.as_str())),
            col::utf8(rows.iter().map(|r| r.prompt.as_str())),
            col::utf8(rows.iter().map(|r| r.response.as_str())),
            col::u64(rows.iter().map(|r| r.sample)),
            col::list_i64_opt(token_ids.into_iter()),
            col::f64_opt(rows.iter().map(|r| r.logprob_sum)),
            col::u64(rows.iter().map(|r| r.seed)),
        ]
    }
}

/// Reads candidates from a Parquet table or a JSONL file (by the file's first bytes).
pub fn read_candidates(path: &Path) -> Result<Vec<Candidate>, String> {
    let mut magic = [0u8; 4];
    let is_parquet = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok_and(|_| &magic == b"PAR1");
    let mut out = Vec::new();
    if is_parquet {
        for (i, row) in table::read_rows(path)
            .map_err(|e| format!("`{}`: {e}", path.display()))?
            .into_iter()
            .enumerate()
        {
            let candidate = serde_json::from_value(serde_json::Value::Object(row))
                .map_err(|e| format!("`{}` row {}: {e}", path.display(), i + 1))?;
            out.push(candidate);
        }
    } else {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("`{}`: {e}", path.display()))?;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let candidate = serde_json::from_str(line)
                .map_err(|e| format!("`{}` line {}: {e}", path.display(), i + 1))?;
            out.push(candidate);
        }
    }
    Ok(out)
}
