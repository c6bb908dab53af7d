//! LoRA adapters (Hu et al., 2021) in PEFT's layout: a linear layer `W` that an adapter
//! targets computes `x W^T + scale · dropout(x) A^T B^T`, with `A` [r, in] (PEFT's
//! `lora_A`, drawn as PEFT draws it: uniform in ±1/sqrt(in)) and `B` [out, r] (`lora_B`,
//! zeros, so a fresh adapter changes nothing), `scale = alpha / r` (`alpha / sqrt(r)` with
//! rsLoRA). The adapter's variables sit in the model's `VarMap` beside the base weights
//! under PEFT's module names (`model.layers.0.self_attn.q_proj.lora_A.weight`), and are
//! saved as PEFT saves them (`adapter_config.json`, `adapter_model.safetensors` with the
//! `base_model.model.` prefix), so `PeftModel.from_pretrained` loads what hone trained.
//!
//! Dropout on the adapter's input is deterministic: its masks are drawn from the stage's
//! seed, the optimiser step and the order of the adapted layers in the forward pass, so a
//! resumed stage draws the masks an uninterrupted one would. It is on only inside a
//! training step ([`Dropout::train_step`]); inference never drops.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

/// What an adapter adapts and how much: PEFT's `LoraConfig` fields hone implements.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Module names (`q_proj`: every module whose name is that or ends in `.q_proj`), or
    /// `all-linear` (every linear layer but the LM head).
    pub target_modules: Vec<String>,
    /// rsLoRA's scale, alpha / sqrt(r).
    pub rslora: bool,
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// Whether the linear layer `module` (its full name) is adapted.
    pub fn targets(&self, module: &str) -> bool {
        self.target_modules
            .iter()
            .any(|t| t == "all-linear" || module == t || module.ends_with(&format!(".{t}")))
    }
}

/// PEFT's default target modules of a `model_type` (its
/// `TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`): the attention's query and value
/// projections, or the fused projection that holds them.
pub fn default_targets(model_type: &str) -> Vec<String> {
    let names: &[&str] = match model_type {
        "gpt2" => &["c_attn"],
        "gpt_neox" => &["query_key_value"],
        "phi3" => &["qkv_proj"],
        _ => &["q_proj", "v_proj"],
    };
    names.iter().map(|s| s.to_string()).collect()
}

/// The adapter's input dropout, shared by every adapted layer of one model.
#[derive(Debug)]
pub struct Dropout {
    p: f64,
    seed: u64,
    /// `Some((step, calls so far))` inside a training step.
    state: Mutex<Option<(u64, u64)>>,
}

impl Dropout {
    pub fn new(p: f64, seed: u64) -> Self {
        Dropout {
            p,
            seed,
            state: Mutex::new(None),
        }
    }

    /// Drops from here on, with the masks of optimiser step `step`.
    pub fn train_step(&self, step: u64) {
        *self.state.lock().expect("dropout lock") = Some((step, 0));
    }

    /// Drops nothing from here on.
    pub fn eval(&self) {
        *self.state.lock().expect("dropout lock") = None;
    }

    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if self.p <= 0.0 {
            return Ok(x.clone());
        }
        let (step, call) = {
            let mut state = self.state.lock().expect("dropout lock");
            match state.as_mut() {
                None => return Ok(x.clone()),
                Some((step, calls)) => {
                    *calls += 1;
                    (*step, *calls - 1)
                }
            }
        };
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
            self.seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ call.rotate_left(32),
        );
        let keep = 1.0 - self.p;
        let scale = (1.0 / keep) as f32;
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| {
                if rng.random::<f64>() < keep {
                    scale
                } else {
                    0.0
                }
            })
            .collect();
        x.mul(&Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?)
    }
}

/// The adapter of a model being built: its settings and its dropout.
#[derive(Clone)]
pub struct AdapterCtx {
    pub config: LoraConfig,
    pub dropout: Arc<Dropout>,
}

/// One adapted layer's low-rank update.
#[derive(Clone)]
pub struct Lora {
    a: Tensor,
    b: Tensor,
    scale: f64,
    dropout: Arc<Dropout>,
}

impl Lora {
    /// The adapter of the linear layer built from `vb` (its prefix is the module's name),
    /// `n_in` -> `n_out`, when `adapter` targets it.
    pub fn build(
        adapter: Option<&AdapterCtx>,
        vb: &VarBuilder,
        n_in: usize,
        n_out: usize,
    ) -> Result<Option<Lora>> {
        let Some(adapter) = adapter else {
            return Ok(None);
        };
        if !adapter.config.targets(&vb.prefix()) {
            return Ok(None);
        }
        let r = adapter.config.r;
        // Placeholder initialisers: `Trainable::attach_adapter` draws the values from the
        // seed; a loaded adapter overwrites them.
        let a = vb
            .pp("lora_A")
            .get_with_hints((r, n_in), "weight", Init::Const(0.0))?;
        let b = vb
            .pp("lora_B")
            .get_with_hints((n_out, r), "weight", Init::Const(0.0))?;
        Ok(Some(Lora {
            a,
            b,
            scale: adapter.config.scale(),
            dropout: adapter.dropout.clone(),
        }))
    }

    /// The adapter of rows `at..at + n` of the layer's output (Phi-3's fused projections:
    /// one adapter on `qkv_proj`, its `B` split as the weight is).
    pub fn rows(&self, at: usize, n: usize) -> Result<Lora> {
        Ok(Lora {
            b: self.b.narrow(0, at, n)?,
            ..self.clone()
        })
    }

    /// scale · dropout(x) A^T B^T, [.., out].
    pub fn delta(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.dropout.apply(x)?;
        let low = super::ops::linear(&x, &self.a.t()?, None)?;
        super::ops::linear(&low, &self.b.t()?, None)? * self.scale
    }
}

/// `y + lora.delta(x)` when the layer is adapted.
pub fn adapted(y: Tensor, x: &Tensor, lora: Option<&Lora>) -> Result<Tensor> {
    match lora {
        Some(l) => y + l.delta(x)?,
        None => Ok(y),
    }
}

pub const A_SUFFIX: &str = ".lora_A.weight";
pub const B_SUFFIX: &str = ".lora_B.weight";
/// The prefix PEFT gives every tensor of `adapter_model.safetensors`.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// Whether a variable is an adapter's.
pub fn is_adapter_var(name: &str) -> bool {
    name.ends_with(A_SUFFIX) || name.ends_with(B_SUFFIX)
}

/// Draws a fresh adapter's variables from `seed`, in the order of their sorted names:
/// `lora_A` uniform in ±1/sqrt(in) (PEFT's kaiming-uniform with a = sqrt 5), `lora_B` zero.
pub fn init_vars(vars: &BTreeMap<String, candle_core::Var>, seed: u64) -> Result<()> {
    use rand::SeedableRng;
    use rand_distr::{Distribution, Uniform};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for (name, var) in vars {
        if name.ends_with(A_SUFFIX) {
            let fan_in = var.dim(1)?;
            let bound = 1.0 / (fan_in as f32).sqrt();
            let uniform = Uniform::new(-bound, bound).expect("a valid range");
            let values: Vec<f32> = (0..var.elem_count())
                .map(|_| uniform.sample(&mut rng))
                .collect();
            var.set(&Tensor::from_vec(values, var.shape(), var.device())?)?;
        } else if name.ends_with(B_SUFFIX) {
            var.set(&var.zeros_like()?)?;
        }
    }
    Ok(())
}

/// `adapter_config.json` as PEFT writes and reads it (the fields hone sets; PEFT fills in
/// the rest with its defaults).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeftConfig {
    pub peft_type: String,
    #[serde(default)]
    pub task_type: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    pub target_modules: serde_json::Value,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub revision: Option<String>,
    #[serde(default = "none")]
    pub bias: String,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub inference_mode: bool,
    #[serde(default)]
    pub layers_to_transform: Option<serde_json::Value>,
    #[serde(default)]
    pub rank_pattern: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub alpha_pattern: serde_json::Map<String, serde_json::Value>,
}

fn none() -> String {
    "none".into()
}

impl PeftConfig {
    /// The adapter hone can apply, or why not (PEFT features hone does not implement are
    /// refused by name).
    pub fn lora(&self) -> std::result::Result<LoraConfig, String> {
        if self.peft_type != "LORA" {
            return Err(format!(
                "`peft_type` is `{}`: hone applies LoRA adapters only",
                self.peft_type
            ));
        }
        if self.use_dora {
            return Err("`use_dora` is true: hone does not implement DoRA".into());
        }
        if self.bias != "none" {
            return Err(format!(
                "`bias` is `{}`: hone's adapters train no biases",
                self.bias
            ));
        }
        if self
            .layers_to_transform
            .as_ref()
            .is_some_and(|v| !v.is_null())
        {
            return Err("`layers_to_transform` is set: hone adapts every layer".into());
        }
        if !self.rank_pattern.is_empty() || !self.alpha_pattern.is_empty() {
            return Err("`rank_pattern` or `alpha_pattern` is set: hone uses one rank".into());
        }
        if self.r == 0 {
            return Err("`r` is 0".into());
        }
        let target_modules = match &self.target_modules {
            serde_json::Value::String(s) if s == "all-linear" => vec![s.clone()],
            serde_json::Value::Array(names) => names
                .iter()
                .map(|n| {
                    n.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| format!("`target_modules` holds {n}, not a name"))
                })
                .collect::<std::result::Result<_, _>>()?,
            other => {
                return Err(format!(
                    "`target_modules` is {other}: hone reads a list of module names or `all-linear` (not a regular expression)"
                ));
            }
        };
        Ok(LoraConfig {
            r: self.r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            target_modules,
            rslora: self.use_rslora,
        })
    }
}

/// An adapter's tensors under hone's variable names, from `adapter_model.safetensors`
/// (PEFT's names, with or without the adapter name `default` PEFT sometimes keeps).
pub fn read_adapter_tensors(
    path: &std::path::Path,
    device: &Device,
) -> std::result::Result<BTreeMap<String, Tensor>, String> {
    let stored = candle_core::safetensors::load(path, device).map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    for (name, tensor) in stored {
        let bare = name.strip_prefix(PEFT_PREFIX).unwrap_or(&name);
        let bare = bare
            .replace(".lora_A.default.weight", A_SUFFIX)
            .replace(".lora_B.default.weight", B_SUFFIX);
        out.insert(
            bare,
            tensor.to_dtype(DType::F32).map_err(|e| e.to_string())?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(targets: &[&str]) -> LoraConfig {
        LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: targets.iter().map(|s| s.to_string()).collect(),
            rslora: false,
        }
    }

    #[test]
    fn targets_match_whole_name_components_as_peft_does() {
        let c = config(&["q_proj", "c_proj"]);
        assert!(c.targets("model.layers.0.self_attn.q_proj"));
        assert!(c.targets("q_proj"));
        assert!(c.targets("transformer.h.1.mlp.c_proj"));
        assert!(!c.targets("model.layers.0.self_attn.qq_proj"));
        assert!(!c.targets("model.layers.0.self_attn.k_proj"));
        assert!(config(&["all-linear"]).targets("anything.dense"));
    }

    #[test]
    fn the_scale_is_alpha_over_r_or_its_root() {
        let mut c = config(&["q_proj"]);
        assert_eq!(c.scale(), 2.0);
        c.rslora = true;
        assert_eq!(c.scale(), 4.0);
    }

    #[test]
    fn the_delta_is_scale_b_a_x() {
        let dev = Device::Cpu;
        // A = [[1, 2]], B = [[3], [4]], scale 0.5: x = [1, 1] -> A x = 3 -> B (3) * 0.5.
        let lora = Lora {
            a: Tensor::new(&[[1f32, 2.]], &dev).unwrap(),
            b: Tensor::new(&[[3f32], [4.]], &dev).unwrap(),
            scale: 0.5,
            dropout: Arc::new(Dropout::new(0.0, 0)),
        };
        let x = Tensor::new(&[[1f32, 1.]], &dev).unwrap();
        assert_eq!(
            lora.delta(&x).unwrap().to_vec2::<f32>().unwrap(),
            vec![vec![4.5, 6.0]]
        );
        assert_eq!(
            lora.rows(1, 1)
                .unwrap()
                .delta(&x)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap(),
            vec![vec![6.0]]
        );
    }

    #[test]
    fn dropout_is_off_outside_a_step_and_repeats_within_the_same_step() {
        let d = Dropout::new(0.5, 7);
        let x = Tensor::ones((4, 64), DType::F32, &Device::Cpu).unwrap();
        let sum = |t: Tensor| t.sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(sum(d.apply(&x).unwrap()), 256.0);
        d.train_step(3);
        let first = d.apply(&x).unwrap().to_vec2::<f32>().unwrap();
        let second = d.apply(&x).unwrap().to_vec2::<f32>().unwrap();
        assert_ne!(first, second, "each layer draws its own mask");
        // Kept values are scaled by 1 / (1 - p); about half are kept.
        let flat: Vec<f32> = first.concat();
        assert!(flat.iter().all(|&v| v == 0.0 || v == 2.0));
        let kept = flat.iter().filter(|&&v| v == 2.0).count();
        assert!((96..160).contains(&kept), "{kept}");
        d.train_step(3);
        assert_eq!(d.apply(&x).unwrap().to_vec2::<f32>().unwrap(), first);
        d.train_step(4);
        assert_ne!(d.apply(&x).unwrap().to_vec2::<f32>().unwrap(), first);
        d.eval();
        assert_eq!(sum(d.apply(&x).unwrap()), 256.0);
    }

    #[test]
    fn peft_features_hone_lacks_are_refused_by_name() {
        let base = serde_json::json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
            "target_modules": ["q_proj"]});
        let parse = |extra: serde_json::Value| {
            let mut v = base.clone();
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            serde_json::from_value::<PeftConfig>(v).unwrap().lora()
        };
        assert_eq!(parse(serde_json::json!({})).unwrap().scale(), 2.0);
        for (extra, word) in [
            (serde_json::json!({"use_dora": true}), "DoRA"),
            (serde_json::json!({"bias": "all"}), "bias"),
            (serde_json::json!({"peft_type": "IA3"}), "IA3"),
            (
                serde_json::json!({"target_modules": ".*proj"}),
                "regular expression",
            ),
            (
                serde_json::json!({"layers_to_transform": [0]}),
                "layers_to_transform",
            ),
        ] {
            let e = parse(extra).unwrap_err();
            assert!(e.contains(word), "{e}");
        }
    }
}
