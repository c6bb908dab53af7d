//! A model directory's `hone.json`: what hone knows of a checkpoint beyond its weights
//! (`{"hone": {...}}`: the stage that wrote it, the prompt template it was trained with,
//! a reward model's mean-zero offset and ordinal thresholds, ...). One typed reader and
//! writer; a directory without the file (a checkpoint from elsewhere) has no metadata.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{PolicyError, Result};

/// The fields are in alphabetical order and unset ones are left out, so the file reads as
/// it always did (`serde_json` writes maps sorted) and stays byte for byte the same.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// `pretrain-load`'s corpus (builtin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corpus: Option<String>,
    /// `sft`'s demonstrations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demos: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_loss: Option<f64>,
    /// A reward model's thresholds between the five score classes (its f32 values widened
    /// to f64, as the file has always held them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordinal_thresholds: Option<Vec<f64>>,
    /// `pretrain-load`'s checkpoint directory (`source: hf`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A reward model's mean over its training responses, removed when it scores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward_offset: Option<f64>,
    /// `pretrain-load`'s `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The stage kind that wrote the directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u64>,
    /// The template prompts (and, for a reward model, responses) were put to it with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct File {
    hone: ModelMeta,
}

impl ModelMeta {
    pub fn of_stage(stage: &str) -> Self {
        ModelMeta {
            stage: Some(stage.to_string()),
            ..ModelMeta::default()
        }
    }

    /// The metadata in `dir`, or `None` when it has no `hone.json`; a file that is there
    /// but unreadable is an error naming it.
    pub fn read(dir: &Path) -> Result<Option<ModelMeta>> {
        let path = dir.join("hone.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(PolicyError::input(&path, e)),
        };
        let file: File = serde_json::from_str(&text)
            .map_err(|e| PolicyError::input(&path, format!("not hone's metadata: {e}")))?;
        Ok(Some(file.hone))
    }

    /// Writes `dir/hone.json`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join("hone.json");
        let mut text = serde_json::to_string_pretty(&File { hone: self.clone() })
            .map_err(|e| PolicyError::input(&path, e))?;
        text.push('\n');
        std::fs::write(&path, text).map_err(|e| PolicyError::input(&path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_writes_what_the_untyped_writer_wrote_and_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let meta = ModelMeta {
            reward_offset: Some(0.25),
            template: Some("User: {prompt}\nAssistant: {response}".into()),
            ordinal_thresholds: Some(vec![f64::from(-1.5f32), f64::from(0.58f32)]),
            ..ModelMeta::of_stage("reward-fit")
        };
        meta.write(dir.path()).unwrap();
        let before = serde_json::json!({"hone": {
            "stage": "reward-fit", "reward_offset": 0.25, "ordinal_thresholds": [-1.5f32, 0.58f32],
            "template": "User: {prompt}\nAssistant: {response}"}});
        let text = std::fs::read_to_string(dir.path().join("hone.json")).unwrap();
        assert_eq!(
            text,
            format!("{}\n", serde_json::to_string_pretty(&before).unwrap())
        );
        assert_eq!(ModelMeta::read(dir.path()).unwrap(), Some(meta));
    }

    #[test]
    fn a_missing_file_is_no_metadata_and_a_broken_one_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(ModelMeta::read(dir.path()).unwrap(), None);
        std::fs::write(dir.path().join("hone.json"), "{\"hone\": 3}").unwrap();
        let err = ModelMeta::read(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("hone.json") && err.contains("not hone's metadata"),
            "{err}"
        );
    }
}
