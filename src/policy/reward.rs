//! What the reward-model stages share (reward-fit, metarm-adapt): the feature scorer of a
//! frozen backbone, the assessment of a fitted reward model (pair metrics, its offset, the
//! oracle's rank correlation), grouping and batching of pairs, the held-out split, and
//! saving a reward model with its `hone.json`.

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use serde_json::{Value, json};
use tokenizers::Tokenizer;

use super::chat::PromptFormat;
use super::feedback::Pair;
use super::meta::ModelMeta;
use super::{PolicyError, Progress, Result};
use crate::artifact::table;
use crate::model::reward::{RewardModel, last_hidden};
use crate::model::{CausalLm, tokenizer};
use crate::rl::metrics;

/// hone's template for what a reward model reads, where the model has no chat template.
pub const DEFAULT_REWARD_TEMPLATE: &str = "User: {prompt}\nAssistant: {response}";

/// The tokens a reward model reads for (prompt, response): the template filled in (or the
/// exchange rendered by the model's chat template), cut to
/// leave room in the context, then end-of-text, where the reward is read.
pub fn reward_input(
    tok: &Tokenizer,
    format: &PromptFormat,
    prompt: &str,
    response: &str,
    context: usize,
    eot: u32,
) -> Result<Vec<u32>> {
    let text = format.exchange_text(prompt, response)?;
    let mut ids = tokenizer::encode(tok, &text).map_err(PolicyError::Invalid)?;
    ids.truncate(context.saturating_sub(1));
    ids.push(eot);
    Ok(ids)
}

/// The indices of `pairs` grouped by prompt (in prompt-id order): a prompt's pairs are
/// trained on together.
pub fn pair_groups(pairs: &[Pair]) -> Vec<Vec<usize>> {
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, pair) in pairs.iter().enumerate() {
        groups.entry(pair.prompt_id.as_str()).or_default().push(i);
    }
    groups.into_values().collect()
}

/// One pass over `groups` in an order shuffled by `rng`, packed into batches: whole groups
/// are added until a batch holds at least `batch_size` pairs; the last may hold fewer.
pub fn pack_batches(
    groups: &[Vec<usize>],
    batch_size: usize,
    rng: &mut impl rand::Rng,
) -> Vec<Vec<usize>> {
    let mut order = groups.to_vec();
    order.shuffle(rng);
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current = Vec::new();
    for group in order {
        current.extend(group);
        if current.len() >= batch_size {
            batches.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Whether a prompt is held out of training: a hash of its id below `fraction`, so every
/// stage that reads the same feedback holds out the same prompts.
pub fn is_held_out(prompt_id: &str, fraction: f64) -> bool {
    let h = blake3::hash(prompt_id.as_bytes());
    (u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes")) as f64 / u64::MAX as f64)
        < fraction
}

/// The head's weights.
pub fn head_weights(rm: &RewardModel) -> Result<Vec<f64>> {
    Ok(rm
        .head
        .as_tensor()
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())?
        .into_iter()
        .map(f64::from)
        .collect())
}

/// How a fitted reward model ranks: `train` and `held_out` pair metrics, `reward_offset`
/// (its mean over the training responses, removed when it scores) and, with an oracle
/// table, `oracle_spearman`, `oracle_rows`, `oracle_pairs`, `oracle_pair_accuracy`.
pub struct Assessment {
    pub metrics: serde_json::Map<String, Value>,
    pub offset: f64,
}

pub fn assess(
    progress: &dyn Progress,
    scorer: &mut Scorer,
    head: &[f64],
    train_pairs: &[Pair],
    test_pairs: &[Pair],
    oracle: Option<&std::path::Path>,
) -> Result<Assessment> {
    let mut score = |items: &[(&str, &str)]| -> Result<Vec<f64>> {
        Ok(scorer
            .features(progress, items)?
            .iter()
            .map(|f| f.iter().zip(head).map(|(a, b)| a * b).sum())
            .collect())
    };
    let mut pair_metrics = |pairs: &[Pair]| -> Result<Value> {
        if pairs.is_empty() {
            return Ok(json!(null));
        }
        let chosen = score(
            &pairs
                .iter()
                .map(|x| (x.prompt.as_str(), x.chosen.as_str()))
                .collect::<Vec<_>>(),
        )?;
        let rejected = score(
            &pairs
                .iter()
                .map(|x| (x.prompt.as_str(), x.rejected.as_str()))
                .collect::<Vec<_>>(),
        )?;
        let probabilities = metrics::pair_probabilities(&chosen, &rejected);
        Ok(json!({
            "pairs": pairs.len(),
            "accuracy": metrics::accuracy(&probabilities),
            "log_loss": metrics::log_loss(&probabilities),
            "ece": metrics::expected_calibration_error(&probabilities, 10),
        }))
    };
    let train_sample: Vec<Pair> = train_pairs.iter().take(2000).cloned().collect();
    let mut out = serde_json::Map::new();
    out.insert("train".into(), pair_metrics(&train_sample)?);
    out.insert("held_out".into(), pair_metrics(test_pairs)?);
    // Normalisation: mean reward 0 over the training responses.
    let mut responses: Vec<(&str, &str)> = train_pairs
        .iter()
        .flat_map(|x| {
            [
                (x.prompt.as_str(), x.chosen.as_str()),
                (x.prompt.as_str(), x.rejected.as_str()),
            ]
        })
        .collect();
    responses.sort();
    responses.dedup();
    let offset = {
        let r = score(&responses[..responses.len().min(2000)])?;
        r.iter().sum::<f64>() / r.len().max(1) as f64
    };
    out.insert("reward_offset".into(), json!(offset));
    if let Some(oracle) = oracle {
        let rows = table::read_rows(oracle).map_err(|e| PolicyError::input(oracle, e))?;
        let rows: Vec<_> = rows.into_iter().take(MAX_ORACLE_ROWS).collect();
        let text = |r: &serde_json::Map<String, Value>, k: &str| {
            r.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let owned: Vec<(String, String, String)> = rows
            .iter()
            .map(|r| (text(r, "prompt_id"), text(r, "prompt"), text(r, "response")))
            .collect();
        let items: Vec<(&str, &str)> = owned
            .iter()
            .map(|(_, p, r)| (p.as_str(), r.as_str()))
            .collect();
        let truth: Vec<f64> = rows
            .iter()
            .map(|r| r["reward"].as_f64().unwrap_or(f64::NAN))
            .collect();
        let predicted = score(&items)?;
        let prompt_ids: Vec<&str> = owned.iter().map(|(id, _, _)| id.as_str()).collect();
        let (correct, compared) = metrics::ordered_pair_agreement(&prompt_ids, &predicted, &truth);
        out.insert(
            "oracle_spearman".into(),
            json!(metrics::spearman(&predicted, &truth)),
        );
        out.insert("oracle_rows".into(), json!(rows.len()));
        out.insert("oracle_pairs".into(), json!(compared));
        out.insert(
            "oracle_pair_accuracy".into(),
            if compared > 0 {
                json!(correct / compared as f64)
            } else {
                json!(null)
            },
        );
    }
    Ok(Assessment {
        metrics: out,
        offset,
    })
}

/// Writes a reward model, its tokenizer and `hone.json` (`{"hone": meta}`: the template it
/// reads responses with, its offset) to `out`, with the tokenizer files (chat template,
/// special tokens) of the model in `base_dir` it was made from.
pub fn save_reward_model(
    rm: &RewardModel,
    tok: &tokenizers::Tokenizer,
    out: &std::path::Path,
    meta: &super::meta::ModelMeta,
    base_dir: &std::path::Path,
    merge: bool,
) -> Result<()> {
    let eot = super::end_of_text(&rm.base.config, tok);
    if rm.base.adapter.is_some() {
        // PEFT's sequence-classification adapter: the head as `modules_to_save`.
        let reference = crate::artifact::store_reference(base_dir, 0);
        rm.base
            .save_adapter(out, &reference, "SEQ_CLS", &["score"], |n| {
                n == "score.weight"
            })
            .map_err(|e| PolicyError::input(out, e))?;
        if merge {
            rm.save(out, eot).map_err(|e| PolicyError::input(out, e))?;
        }
    } else {
        rm.save(out, eot).map_err(|e| PolicyError::input(out, e))?;
    }
    tok.save(out.join("tokenizer.json"), true)
        .map_err(|e| PolicyError::input(out, e))?;
    super::chat::carry_tokenizer_files(base_dir, out)?;
    meta.write(out)
}

/// At most this many oracle rows are scored for the oracle metrics.
const MAX_ORACLE_ROWS: usize = 5000;

/// Last-layer features ψ(prompt, response) of a frozen copy of a reward model's backbone,
/// each text encoded and run once however often it is asked for.
pub struct Scorer {
    model: CausalLm,
    tok: tokenizers::Tokenizer,
    format: PromptFormat,
    eot: u32,
    context: usize,
    device: candle_core::Device,
    cache: std::collections::HashMap<(String, String), Vec<f64>>,
}

impl Scorer {
    pub fn new(
        rm: &RewardModel,
        tok: &tokenizers::Tokenizer,
        format: &PromptFormat,
        eot: u32,
        device: &candle_core::Device,
    ) -> Result<Self> {
        Ok(Scorer {
            model: rm.base.frozen()?,
            tok: tok.clone(),
            format: format.clone(),
            eot,
            context: rm.base.config.context_len(),
            device: device.clone(),
            cache: std::collections::HashMap::new(),
        })
    }

    pub fn features(
        &mut self,
        progress: &dyn Progress,
        items: &[(&str, &str)],
    ) -> Result<Vec<Vec<f64>>> {
        let mut missing: Vec<(&str, &str)> = items
            .iter()
            .copied()
            .filter(|&(p, r)| !self.cache.contains_key(&(p.to_string(), r.to_string())))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        for (n, chunk) in missing.chunks(32).enumerate() {
            if progress.cancelled() {
                return Err(PolicyError::Cancelled);
            }
            progress.report((n * 32 + chunk.len()) as u64, missing.len() as u64);
            let seqs = chunk
                .iter()
                .map(|(pr, re)| {
                    reward_input(&self.tok, &self.format, pr, re, self.context, self.eot)
                })
                .collect::<Result<Vec<_>>>()?;
            let h = last_hidden(&self.model, &seqs, self.eot, &self.device)
                .and_then(|t| t.to_vec2::<f32>())?;
            for (&(pr, re), row) in chunk.iter().zip(h) {
                self.cache.insert(
                    (pr.to_string(), re.to_string()),
                    row.into_iter().map(f64::from).collect(),
                );
            }
        }
        Ok(items
            .iter()
            .map(|&(p, r)| self.cache[&(p.to_string(), r.to_string())].clone())
            .collect())
    }
}

/// The template a reward model reads responses with: `template` if given, else the one it
/// was fitted with, else reward-fit's default. (Left at that default, a model with a chat
/// template reads through it instead: [`reward_format`].)
pub fn reward_template(
    meta: Option<&ModelMeta>,
    template: Option<&str>,
    dir: &std::path::Path,
) -> Result<String> {
    let template = template
        .map(str::to_string)
        .or_else(|| meta.and_then(|m| m.template.clone()))
        .unwrap_or_else(|| DEFAULT_REWARD_TEMPLATE.into());
    if !template.contains("{prompt}") || !template.contains("{response}") {
        return Err(PolicyError::Invalid(format!(
            "`{}`: the reward template `{template}` lacks `{{prompt}}` or `{{response}}`",
            dir.display()
        )));
    }
    Ok(template)
}

/// How the reward model in `dir` reads (prompt, response): its chat template when it has
/// one and `template` is hone's default, else `template`.
pub fn reward_format(dir: &std::path::Path, template: &str) -> Result<PromptFormat> {
    PromptFormat::for_model(dir, template, DEFAULT_REWARD_TEMPLATE)
}

/// A reward model's score of one response, and with ABC the attention of its final token
/// over the response's tokens (the reward model's tokenization).
pub struct Scored {
    pub score: f64,
    pub attention: Option<Vec<f64>>,
}

/// A fitted reward model ready to score responses: a detached copy, its tokenizer, the
/// template it was fitted with and its mean-zero offset (from `hone.json`).
pub struct RewardScorer {
    model: CausalLm,
    head: candle_core::Tensor,
    tok: Tokenizer,
    format: PromptFormat,
    offset: f64,
    eot: u32,
    context: usize,
    device: candle_core::Device,
}

impl RewardScorer {
    /// Loads the reward model in `dir`; `template` overrides the one it was fitted with.
    pub fn load(
        dir: &std::path::Path,
        template: Option<&str>,
        device: &candle_core::Device,
    ) -> Result<Self> {
        let rm =
            RewardModel::load(dir, 0, device).map_err(|e| PolicyError::Invalid(e.to_string()))?;
        let tok = tokenizer::load(&dir.join("tokenizer.json")).map_err(PolicyError::Invalid)?;
        let meta = ModelMeta::read(dir)?;
        let template = reward_template(meta.as_ref(), template, dir)?;
        let format = reward_format(dir, &template)?;
        let eot = super::end_of_text(&rm.base.config, &tok);
        Ok(RewardScorer {
            model: rm.base.frozen().map_err(PolicyError::from)?,
            head: rm.head.as_tensor().detach(),
            offset: meta.and_then(|m| m.reward_offset).unwrap_or(0.0),
            context: rm.base.config.context_len(),
            tok,
            format,
            eot,
            device: device.clone(),
        })
    }

    /// Scores (offset removed) of (prompt, response) pairs; with `attention`, also the
    /// last layer's attention of the final token over the response, averaged over heads.
    pub fn score(&self, items: &[(&str, &str)], attention: bool) -> Result<Vec<Scored>> {
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(32) {
            let seqs = chunk
                .iter()
                .map(|(p, r)| reward_input(&self.tok, &self.format, p, r, self.context, self.eot))
                .collect::<Result<Vec<_>>>()?;
            let rewards = last_hidden(&self.model, &seqs, self.eot, &self.device)
                .and_then(|h| h.matmul(&self.head.t()?))
                .and_then(|r| r.squeeze(1))
                .and_then(|r| r.to_vec1::<f32>())
                .map_err(PolicyError::from)?;
            for ((prompt, response), (seq, r)) in chunk.iter().zip(seqs.iter().zip(rewards)) {
                let weights = if attention {
                    Some(self.response_attention(prompt, response, seq)?)
                } else {
                    None
                };
                out.push(Scored {
                    score: f64::from(r) - self.offset,
                    attention: weights,
                });
            }
        }
        Ok(out)
    }

    fn response_attention(&self, prompt: &str, response: &str, seq: &[u32]) -> Result<Vec<f64>> {
        let (before, after) = self.format.around_response(prompt, response)?;
        let start = tokenizer::encode(&self.tok, &before)
            .map_err(PolicyError::Invalid)?
            .len();
        let tail = if after.is_empty() {
            0
        } else {
            tokenizer::encode(&self.tok, &after)
                .map_err(PolicyError::Invalid)?
                .len()
        };
        let last = seq.len() - 1; // the end-of-text token, where the reward is read
        let end = last.saturating_sub(tail).max(start.min(last));
        let ids = candle_core::Tensor::new(seq, &self.device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(PolicyError::from)?;
        let probs = self
            .model
            .last_attention(&ids)
            .and_then(|a| a.squeeze(0)) // [heads, t, t]
            .and_then(|a| a.narrow(1, last, 1)) // the final token's row
            .and_then(|a| a.squeeze(1))
            .and_then(|a| a.mean(0)) // [t]
            .and_then(|a| a.to_vec1::<f32>())
            .map_err(PolicyError::from)?;
        Ok(probs[start.min(end)..end]
            .iter()
            .map(|&p| f64::from(p))
            .collect())
    }
}
