//! The normalised feedback tables (`artifact::feedback`) read back as typed training
//! items: comparisons and rankings as pairs, 1-5 scores as ordinal classes, flags.

use std::path::Path;

use serde_json::Value;

use super::{PolicyError, Result};
use crate::artifact::table;
use crate::rl::reward;

#[derive(Debug, Clone)]
pub struct Pair {
    pub prompt_id: String,
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    pub margin: f64,
}

pub struct ScoreItem {
    pub prompt_id: String,
    pub prompt: String,
    pub response: String,
    pub class: u32,
}

pub struct FlagItem {
    pub prompt_id: String,
    pub prompt: String,
    pub response: String,
    pub flagged: f32,
}

/// The labels of a feedback directory, as training items.
pub struct Feedback {
    pub pairs: Vec<Pair>,
    pub scores: Vec<ScoreItem>,
    pub flags: Vec<FlagItem>,
    /// Scores left out because they are not whole 1-5 ratings (the ordinal model has
    /// five classes); the stage reports how many.
    pub dropped_scores: usize,
}

impl Feedback {
    /// Several feedback directories, in order, as one.
    pub fn read_all<P: AsRef<Path>>(dirs: &[P], use_margin: bool) -> Result<Feedback> {
        let mut all = Feedback {
            pairs: Vec::new(),
            scores: Vec::new(),
            flags: Vec::new(),
            dropped_scores: 0,
        };
        for dir in dirs {
            let one = Feedback::read(dir.as_ref(), use_margin)?;
            all.pairs.extend(one.pairs);
            all.scores.extend(one.scores);
            all.flags.extend(one.flags);
            all.dropped_scores += one.dropped_scores;
        }
        Ok(all)
    }

    /// One feedback directory (its `comparisons`, `rankings`, `scores` and `flags` tables).
    pub fn read(dir: &Path, use_margin: bool) -> Result<Feedback> {
        let rows = |name: &str| {
            let path = dir.join(format!("{name}.parquet"));
            table::read_rows(&path).map_err(|e| PolicyError::input(&path, e))
        };
        let text = |r: &serde_json::Map<String, Value>, k: &str| {
            r.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let mut pairs = Vec::new();
        for r in rows("comparisons")? {
            let margin = if use_margin {
                r.get("margin").and_then(Value::as_f64).unwrap_or(0.0)
            } else {
                0.0
            };
            pairs.push(Pair {
                prompt_id: text(&r, "prompt_id"),
                prompt: text(&r, "prompt"),
                chosen: text(&r, "chosen"),
                rejected: text(&r, "rejected"),
                margin,
            });
        }
        for r in rows("rankings")? {
            let responses: Vec<String> = r
                .get("responses")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            for (better, worse) in reward::ranking_pairs(responses.len()) {
                pairs.push(Pair {
                    prompt_id: text(&r, "prompt_id"),
                    prompt: text(&r, "prompt"),
                    chosen: responses[better].clone(),
                    rejected: responses[worse].clone(),
                    margin: 0.0,
                });
            }
        }
        let mut scores = Vec::new();
        let mut dropped_scores = 0;
        for r in rows("scores")? {
            let (lo, hi, s) = (
                r["scale_min"].as_f64().unwrap_or(1.0),
                r["scale_max"].as_f64().unwrap_or(5.0),
                r["score"].as_f64().unwrap_or(f64::NAN),
            );
            // The ordinal model has five classes: 1-5 ratings only.
            if lo == 1.0 && hi == 5.0 && s.fract() == 0.0 {
                scores.push(ScoreItem {
                    prompt_id: text(&r, "prompt_id"),
                    prompt: text(&r, "prompt"),
                    response: text(&r, "response"),
                    class: (s as u32).saturating_sub(1).min(4),
                });
            } else {
                dropped_scores += 1;
            }
        }
        let mut flags = Vec::new();
        for r in rows("flags")? {
            let flagged = if r.get("value").and_then(Value::as_bool).unwrap_or(false) {
                1.0
            } else {
                0.0
            };
            flags.push(FlagItem {
                prompt_id: text(&r, "prompt_id"),
                prompt: text(&r, "prompt"),
                response: text(&r, "response"),
                flagged,
            });
        }
        Ok(Feedback {
            pairs,
            scores,
            flags,
            dropped_scores,
        })
    }
}
