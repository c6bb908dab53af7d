//! Reward models: a causal-LM backbone with a scalar head on the last token's hidden state,
//! saved as Hugging Face's `*ForSequenceClassification` (`score.weight`, `num_labels: 1`)
//! so transformers loads it as a reward model.

use std::path::Path;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{Init, VarBuilder};
use serde_json::Value;

use super::{CausalLm, CheckpointError, ModelConfig, Trainable};

/// A reward model: backbone variables and the head live in one `VarMap`.
pub struct RewardModel {
    pub base: Trainable,
    /// [1, hidden]: reward = score · h_last.
    pub head: Var,
}

impl RewardModel {
    /// Adds a fresh scalar head (normal with std 1/sqrt(hidden), drawn from `seed`) to a
    /// causal LM.
    pub fn from_causal(base: Trainable, seed: u64, device: &Device) -> Result<Self> {
        use rand::SeedableRng;
        use rand_distr::{Distribution, Normal};
        let hidden = base.config.hidden_size();
        let vb = VarBuilder::from_varmap(&base.varmap, DType::F32, device);
        let head_tensor = vb.get_with_hints((1, hidden), "score.weight", Init::Const(0.0))?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let normal = Normal::new(0.0f32, 1.0 / (hidden as f32).sqrt()).expect("valid normal");
        let values: Vec<f32> = (0..hidden).map(|_| normal.sample(&mut rng)).collect();
        let head = base
            .varmap
            .data()
            .lock()
            .expect("varmap lock")
            .get("score.weight")
            .cloned()
            .expect("just created");
        head.set(&Tensor::from_vec(values, (1, hidden), device)?)?;
        let _ = head_tensor;
        Ok(RewardModel { base, head })
    }

    /// Loads a reward-model directory written by [`RewardModel::save`] (or a causal-LM
    /// checkpoint, which gets a fresh head).
    pub fn load(
        dir: &Path,
        seed: u64,
        device: &Device,
    ) -> std::result::Result<Self, CheckpointError> {
        // A reward model does not use the LM head; transformers does not save it in a
        // `*ForSequenceClassification` checkpoint.
        let base = Trainable::load_with(dir, device, true)?;
        let model = RewardModel::from_causal(base, seed, device)?;
        // The head: in the checkpoint, or an adapter's `modules_to_save`.
        let stored = if dir.join("model.safetensors").exists() {
            candle_core::safetensors::load(dir.join("model.safetensors"), device)?
        } else {
            super::lora::read_adapter_tensors(&dir.join(super::ADAPTER_WEIGHTS), device)
                .map_err(|reason| CheckpointError::Invalid {
                    path: dir.join(super::ADAPTER_WEIGHTS).display().to_string(),
                    reason,
                })?
                .into_iter()
                .collect()
        };
        if let Some(score) = stored.get("score.weight") {
            model.head.set(&score.to_dtype(DType::F32)?)?;
        }
        Ok(model)
    }

    /// Writes the checkpoint with a sequence-classification `config.json`.
    pub fn save(&self, dir: &Path, pad_token_id: u32) -> std::result::Result<(), CheckpointError> {
        // Training-only variables (`hone_aux.*`: ordinal thresholds, the flag bias) stay out;
        // an adapter is merged in.
        if self.base.adapter.is_some() {
            self.base.save_merged(dir, |name| name == "score.weight")?;
        } else {
            self.base
                .save_filtered(dir, |name| !name.starts_with("hone_aux."))?;
        }
        let path = dir.join("config.json");
        let mut config: Value =
            serde_json::from_str(&self.base.config.to_hf_json()).map_err(|e| {
                CheckpointError::Invalid {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                }
            })?;
        let architecture = match &self.base.config {
            ModelConfig::Gpt2(_) => "GPT2ForSequenceClassification",
            ModelConfig::Llama(c) => c.family.names().2,
            ModelConfig::Neox(_) => "GPTNeoXForSequenceClassification",
        };
        config["architectures"] = Value::from(vec![architecture]);
        config["num_labels"] = Value::from(1);
        config["pad_token_id"] = Value::from(pad_token_id);
        let mut text = serde_json::to_string_pretty(&config).expect("serialises");
        text.push('\n');
        std::fs::write(&path, text).map_err(|source| CheckpointError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// The variables to train: everything but an untied LM head (Llama's `lm_head`,
    /// GPT-NeoX's `embed_out`), which a reward model does not use.
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        super::train::Trainer::named_vars(&self.base.varmap)
            .into_iter()
            .filter(|(name, _)| !super::is_lm_head(name))
            .collect()
    }

    /// Rewards [n] of right-padded sequences: the head applied to each sequence's last
    /// real token (causal attention: padding after it cannot change it).
    pub fn rewards(
        &self,
        model: &CausalLm,
        head: &Tensor,
        sequences: &[Vec<u32>],
        pad: u32,
        device: &Device,
    ) -> Result<Tensor> {
        let features = last_hidden(model, sequences, pad, device)?;
        features.matmul(&head.t()?)?.squeeze(1)
    }
}

/// Hidden states [n, hidden] of each sequence's last token (the reward model's features,
/// ψ(x, a) in optimal design).
pub fn last_hidden(
    model: &CausalLm,
    sequences: &[Vec<u32>],
    pad: u32,
    device: &Device,
) -> Result<Tensor> {
    let len = sequences.iter().map(Vec::len).max().unwrap_or(1);
    let mut ids = Vec::with_capacity(sequences.len() * len);
    for s in sequences {
        ids.extend(s.iter().copied());
        ids.extend(std::iter::repeat_n(pad, len - s.len()));
    }
    let ids = Tensor::from_vec(ids, (sequences.len(), len), device)?;
    let hidden = model.hidden(&ids, None, 0)?; // [n, len, h]
    let h = hidden.dim(2)?;
    let last: Vec<u32> = sequences
        .iter()
        .map(|s| (s.len().max(1) - 1) as u32)
        .collect();
    let index = Tensor::from_vec(last, (sequences.len(), 1, 1), device)?
        .broadcast_as((sequences.len(), 1, h))?
        .contiguous()?;
    hidden.gather(&index, 1)?.squeeze(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Gpt2Config;

    fn tiny() -> Trainable {
        let config = ModelConfig::Gpt2(Gpt2Config {
            vocab_size: 30,
            n_positions: 16,
            n_embd: 8,
            n_layer: 1,
            n_head: 2,
            n_inner: None,
            activation_function: "gelu_new".into(),
            layer_norm_epsilon: 1e-5,
            bos_token_id: None,
            eos_token_id: Some(0),
        });
        Trainable::seeded(&config, 0, &Device::Cpu).unwrap()
    }

    #[test]
    fn padding_does_not_change_a_reward_and_every_parameter_learns() {
        let rm = RewardModel::from_causal(tiny(), 1, &Device::Cpu).unwrap();
        let alone = rm
            .rewards(
                &rm.base.model,
                rm.head.as_tensor(),
                &[vec![3, 4, 5]],
                0,
                &Device::Cpu,
            )
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let batched = rm
            .rewards(
                &rm.base.model,
                rm.head.as_tensor(),
                &[vec![3, 4, 5], vec![7, 8, 9, 10, 11]],
                0,
                &Device::Cpu,
            )
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(
            (alone[0] - batched[0]).abs() < 1e-5,
            "{alone:?} vs {batched:?}"
        );
        let r = rm
            .rewards(
                &rm.base.model,
                rm.head.as_tensor(),
                &[vec![3, 4, 5], vec![7, 8]],
                0,
                &Device::Cpu,
            )
            .unwrap();
        // Bradley-Terry alone is blind to a shift of every reward (ln_f's bias moves all of
        // them alike), so the test adds a term that is not: the ordinal and flag losses do.
        let bt = crate::rl::reward::bradley_terry_loss(
            &r.narrow(0, 0, 1).unwrap(),
            &r.narrow(0, 1, 1).unwrap(),
            None,
        )
        .unwrap();
        let loss = (bt + r.sqr().unwrap().mean_all().unwrap()).unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in rm.trainable_vars() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient"));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm.is_finite() && norm > 0.0, "{name}");
        }
    }

    #[test]
    fn a_saved_reward_model_loads_with_the_same_rewards() {
        let dir = tempfile::tempdir().unwrap();
        let rm = RewardModel::from_causal(tiny(), 2, &Device::Cpu).unwrap();
        rm.save(dir.path(), 0).unwrap();
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["architectures"][0], "GPT2ForSequenceClassification");
        let loaded = RewardModel::load(dir.path(), 99, &Device::Cpu).unwrap();
        let seqs = [vec![1, 2, 3], vec![4]];
        let a = rm
            .rewards(&rm.base.model, rm.head.as_tensor(), &seqs, 0, &Device::Cpu)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = loaded
            .rewards(
                &loaded.base.model,
                loaded.head.as_tensor(),
                &seqs,
                0,
                &Device::Cpu,
            )
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(a, b);
    }
}
