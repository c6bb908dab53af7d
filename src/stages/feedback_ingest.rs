//! `feedback-ingest`: import human feedback from a JSONL, CSV or Parquet file in one of the
//! common formats into hone's normalised feedback tables, with every bad row kept in a
//! rejects table with its reason.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Kind, ParamError, Port, Signature, StageContext, StageError};
use crate::artifact::ArtifactType;
use crate::feedback::{self, FileType, Format, IngestError, IngestOptions, OnBadRows};
use crate::spec::node::PathSeg;

pub struct FeedbackIngest;

/// Parameters of a `feedback-ingest` stage.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestParams {
    /// The feedback file, relative to the workspace (its content is part of the cache
    /// key). Leave it out to ingest the artifact bound to the `file` input instead.
    #[serde(default)]
    pub path: Option<String>,
    /// The layout of the rows.
    pub format: Format,
    /// The container; by default from the file name (`.jsonl`, `.csv`, `.parquet`).
    #[serde(default)]
    pub file_type: Option<FileType>,
    /// `reject` (default): bad rows go to the rejects table; `fail`: the first bad row fails
    /// the stage.
    #[serde(default)]
    pub on_bad_rows: OnBadRows,
    /// With `reject`, the stage still fails when more than this fraction of rows is bad
    /// (default 0.1): a file that is mostly broken is usually the wrong format.
    #[serde(default = "default_max_reject_fraction")]
    #[schemars(range(min = 0, max = 1))]
    pub max_reject_fraction: f64,
    /// The annotator id for rows that do not name one.
    #[serde(default)]
    pub annotator: Option<String>,
    /// Reject rows whose labels repeat an earlier row's (default true).
    #[serde(default = "default_true")]
    pub dedupe: bool,
}

fn default_max_reject_fraction() -> f64 {
    0.1
}

fn default_true() -> bool {
    true
}

impl Kind for FeedbackIngest {
    const NAME: &'static str = "feedback-ingest";

    /// 2: ratings rejected one by one (a row keeps its other ratings), `N/A`, null and
    /// NaN counted as missing, `NaN`/`Infinity` tokens read in JSON Lines, CSV rows
    /// numbered by file line, `dropped_values` and `missing_values` in `summary.json`.
    const VERSION: u32 = 2;

    const SUMMARY: &'static str = "import human feedback (hone, TRL, HH-RLHF, UltraFeedback; JSONL, CSV, Parquet) into normalised tables";

    type Params = IngestParams;

    fn signature(
        &self,
        p: &IngestParams,
        input_names: &[&str],
    ) -> Result<Signature, Vec<ParamError>> {
        let mut errors = Vec::new();
        let has_file_input = input_names.contains(&"file");
        match (&p.path, has_file_input) {
            (Some(_), true) => errors.push(ParamError::new(
                vec![PathSeg::Key("path".into())],
                "give `path` or a `file` input, not both",
            )),
            (None, false) => errors.push(ParamError::new(
                Vec::new(),
                "missing required key `path` (or bind a `file` input)",
            )),
            _ => {}
        }
        if let Some(path) = &p.path
            && p.file_type.is_none()
            && FileType::from_path(std::path::Path::new(path)).is_none()
        {
            let mut e = ParamError::new(
                vec![PathSeg::Key("path".into())],
                format!("cannot tell the file type of `{path}` from its name"),
            );
            e.help = Some("set `file_type: jsonl`, `csv` or `parquet`".into());
            errors.push(e);
        }
        if has_file_input && p.file_type.is_none() {
            let mut e = ParamError::new(
                Vec::new(),
                "missing required key `file_type` (an input artifact has no file name to tell it from)",
            );
            e.help = Some("set `file_type: jsonl`, `csv` or `parquet`".into());
            errors.push(e);
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut file = Port::new("file", ArtifactType::Files);
        file.required = false;
        Ok(Signature {
            inputs: vec![file],
            open_inputs: false,
            outputs: vec![
                Port::new("feedback", ArtifactType::Feedback),
                Port::new("rejects", ArtifactType::Table(Some("rejects".into()))),
            ],
            deps: p.path.clone().into_iter().collect(),
        })
    }

    fn run(&self, p: &IngestParams, ctx: &StageContext<'_>) -> Result<(), StageError> {
        let source = match (&p.path, ctx.inputs.get("file").and_then(|f| f.first())) {
            (Some(path), _) => ctx.workspace.join(path),
            (None, Some(input)) => ctx.workspace.join(input),
            (None, None) => return Err(StageError::Failed("no `path` and no `file` input".into())),
        };
        let file_type = p
            .file_type
            .or_else(|| FileType::from_path(&source))
            .ok_or_else(|| {
                StageError::Failed(format!(
                    "cannot tell the file type of `{}`",
                    source.display()
                ))
            })?;
        if std::fs::metadata(&source).is_ok_and(|m| m.is_dir()) {
            return Err(StageError::Failed(format!(
                "`{}` is a directory, not a feedback file",
                source.display()
            )));
        }
        let options = IngestOptions {
            format: p.format,
            file_type,
            on_bad_rows: p.on_bad_rows,
            max_reject_fraction: p.max_reject_fraction,
            annotator: p.annotator.clone(),
            dedupe: p.dedupe,
        };
        let provenance = ctx.provenance();
        let feedback_dir = ctx.workspace.join(&ctx.outputs["feedback"]);
        let rejects = ctx.workspace.join(&ctx.outputs["rejects"]);
        let summary = feedback::ingest(
            &source,
            &options,
            &feedback_dir,
            &rejects,
            &provenance,
            ctx.cancel,
        )
        .map_err(|e| match e {
            IngestError::Cancelled => StageError::Cancelled,
            other => StageError::Failed(other.to_string()),
        })?;
        tracing::info!(
            rows = summary.rows_read,
            comparisons = summary.comparisons,
            rankings = summary.rankings,
            scores = summary.scores,
            flags = summary.flags,
            rejected = summary.rejected,
            dropped_values = summary.dropped_values,
            missing_values = summary.missing_values,
            "ingested"
        );
        Ok(())
    }
}
