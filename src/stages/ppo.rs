//! `ppo`: the policy learns from the reward model. Each iteration samples responses to a
//! batch of prompts with the KV cache, scores them with the reward model (offset removed,
//! clipped, a penalty without EOS), places the score on the tokens (`credit`), subtracts a
//! per-token KL penalty to the frozen reference, estimates advantages with GAE and whitens
//! them, then runs a few epochs of clipped policy and value updates over minibatches. The
//! value head sits on the policy's last hidden state, or in a separate critic initialised
//! from the reward model (`critic: reward-model`). With `baseline: leave-one-out` each
//! prompt is answered `samples_per_prompt` times and each score is measured against the
//! mean of the prompt's other scores instead (RLOO; no critic). The math is in `rl::ppo`;
//! this file is the loop, its checkpoints and its metrics.

use arrow::array::ArrayRef;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Init, VarBuilder};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::lm::{self, failed};
use super::{Kind, ParamError, Port, Signature, StageContext, StageError};
use crate::artifact::ArtifactType;
use crate::artifact::table::{Column, ColumnType::*, TableKind, TableRow, col};
use crate::model::reward::RewardModel;
use crate::model::train::{Schedule, Trainer, token_logprobs};
use crate::model::{CausalLm, Trainable, tokenizer};
use crate::policy::chat::PromptFormat;
use crate::policy::data::read_prompts;
use crate::policy::logprobs::{per_token, value_of};
use crate::policy::meta::ModelMeta;
use crate::policy::reward::RewardScorer;
use crate::policy::rollout::{RolloutParams, check_fits, rollout};
use crate::rl::ppo::{self, AdaptiveKl, Baseline, Credit, KlEstimator};
use crate::spec::derive_seed;
use crate::spec::node::PathSeg;

pub struct Ppo;

fn default_prompts() -> String {
    "data/hhh/prompts.jsonl".into()
}
fn default_iterations() -> usize {
    20
}
fn default_rollouts() -> usize {
    16
}
fn default_samples_per_prompt() -> usize {
    1
}
fn default_minibatch() -> usize {
    8
}
fn default_epochs() -> usize {
    2
}
fn default_max_new() -> usize {
    24
}
fn default_one() -> f64 {
    1.0
}
fn default_lr() -> f64 {
    1e-4
}
fn default_clip() -> f64 {
    0.2
}
fn default_vf_coef() -> f64 {
    0.1
}
fn default_lambda() -> f64 {
    0.95
}
fn default_kl_coef() -> f64 {
    0.05
}
fn default_horizon() -> f64 {
    10_000.0
}
fn default_reward_clip() -> f64 {
    5.0
}
fn default_abc_beta() -> f64 {
    0.8
}
fn default_checkpoint_every() -> usize {
    5
}

/// Parameters of a `ppo` stage.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PpoParams {
    /// Prompts: a JSONL file with `text` (or `prompt`) and optional `id` per line.
    #[serde(default = "default_prompts")]
    pub prompts: String,
    /// Only the first this many prompts.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_prompts: Option<usize>,
    /// How a prompt is put to the policy; `{prompt}` is replaced by its text.
    #[serde(default = "lm::default_template")]
    pub template: String,
    /// A response ends at the first of these strings, like at EOS.
    #[serde(default = "lm::default_stop")]
    pub stop: Vec<String>,
    /// PPO iterations: each samples `rollouts` responses and updates on them.
    #[serde(default = "default_iterations")]
    #[schemars(range(min = 1))]
    pub iterations: usize,
    /// Responses sampled per iteration: `rollouts / samples_per_prompt` prompts, each
    /// answered `samples_per_prompt` times.
    #[serde(default = "default_rollouts")]
    #[schemars(range(min = 1))]
    pub rollouts: usize,
    /// Responses to each prompt of an iteration (default 1); `baseline: leave-one-out`
    /// needs at least 2. Must divide `rollouts`.
    #[serde(default = "default_samples_per_prompt")]
    #[schemars(range(min = 1))]
    pub samples_per_prompt: usize,
    /// What scores are measured against: `critic` (default; GAE with the values) or
    /// `leave-one-out` (RLOO: the mean score of the prompt's other responses; the critic is
    /// neither used nor trained).
    #[serde(default)]
    pub baseline: Baseline,
    /// Responses per optimiser step.
    #[serde(default = "default_minibatch")]
    #[schemars(range(min = 1))]
    pub minibatch_size: usize,
    /// Passes over each iteration's responses.
    #[serde(default = "default_epochs")]
    #[schemars(range(min = 1))]
    pub epochs: usize,
    #[serde(default = "default_max_new")]
    #[schemars(range(min = 1))]
    pub max_new_tokens: usize,
    /// Sampling temperature of the rollouts; log-probabilities (policy and reference) are
    /// taken under the same temperature.
    #[serde(default = "default_one")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub temperature: f64,
    #[serde(default = "default_lr")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub lr: f64,
    #[serde(default = "default_one")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub max_grad_norm: f64,
    /// ε of the clipped policy loss.
    #[serde(default = "default_clip")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub clip: f64,
    /// ε of the clipped value loss.
    #[serde(default = "default_clip")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub value_clip: f64,
    /// Weight of the value loss (with `critic: policy`, where one loss trains both).
    #[serde(default = "default_vf_coef")]
    #[schemars(range(min = 0))]
    pub vf_coef: f64,
    /// Where the values come from: `policy` (default), a head on the policy's last hidden
    /// state trained with it (TRL's layout), or `reward-model`, a separate critic
    /// initialised from the reward model (InstructGPT's): its backbone and head, the head's
    /// output at each prefix minus the reward model's offset, with its own optimiser. The
    /// reward model must share the policy's tokenizer.
    #[serde(default)]
    pub critic: CriticKind,
    /// The separate critic's learning rate (default: `lr`).
    #[serde(default)]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub critic_lr: Option<f64>,
    #[serde(default = "default_one")]
    #[schemars(range(min = 0, max = 1))]
    pub gamma: f64,
    #[serde(default = "default_lambda")]
    #[schemars(range(min = 0, max = 1))]
    pub lambda: f64,
    /// β of the per-token KL penalty (0 turns it off).
    #[serde(default = "default_kl_coef")]
    #[schemars(range(min = 0))]
    pub kl_coef: f64,
    #[serde(default)]
    pub kl_estimator: KlEstimator,
    /// A target KL (nats per response): the coefficient adapts to keep it (Ziegler et al.).
    #[serde(default)]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub kl_target: Option<f64>,
    #[serde(default = "default_horizon")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub kl_horizon: f64,
    /// Scores are clipped to ±this after the reward model's offset is removed.
    #[serde(default = "default_reward_clip")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub reward_clip: f64,
    /// Whiten the scores of each iteration (mean kept).
    #[serde(default)]
    pub whiten_rewards: bool,
    /// Subtracted from the score of a response that ends without EOS or a stop string.
    #[serde(default = "default_one")]
    pub missing_eos_penalty: f64,
    /// Where the score goes among the tokens: `sparse` (last token), `abc` (the reward
    /// model's attention) or `uniform`.
    #[serde(default)]
    pub credit: Credit,
    /// ABC's share of the score given by attention.
    #[serde(default = "default_abc_beta")]
    #[schemars(range(min = 0, max = 1))]
    pub abc_beta: f64,
    /// How the reward model reads a response (as in `reward-fit`; default: the one it was
    /// fitted with).
    #[serde(default)]
    pub reward_template: Option<String>,
    #[serde(default = "default_checkpoint_every")]
    #[schemars(range(min = 1))]
    pub checkpoint_every: usize,
    /// Train a LoRA adapter (and the value head) instead of every weight; the KL reference
    /// is then the policy's base without it, unless `reference` is bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<lm::AdapterParams>,
    #[serde(default = "lm::default_device")]
    pub device: String,
}

/// Where PPO's values come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CriticKind {
    /// A value head on the policy, trained with it.
    #[default]
    Policy,
    /// A separate critic initialised from the reward model.
    RewardModel,
}

pub static PPO_HISTORY: TableKind = TableKind {
    name: "ppo-history",
    version: 1,
    doc: "per-iteration statistics of a `ppo` stage",
    columns: &[
        Column::new("iteration", UInt64, false, "1-based iteration"),
        Column::new(
            "score",
            Float64,
            false,
            "mean reward-model score of the rollouts (offset removed, before penalties)",
        ),
        Column::new(
            "reward",
            Float64,
            false,
            "mean total reward: score with penalties - β·KL",
        ),
        Column::new(
            "kl",
            Float64,
            false,
            "mean KL to the reference per response (sum over tokens, nats)",
        ),
        Column::new("kl_coef", Float64, false, "β used in this iteration"),
        Column::new(
            "policy_loss",
            Float64,
            false,
            "mean clipped policy loss over the updates",
        ),
        Column::new(
            "value_loss",
            Float64,
            false,
            "mean clipped value loss over the updates (0 with `baseline: leave-one-out`)",
        ),
        Column::new(
            "clip_fraction",
            Float64,
            false,
            "share of tokens where the ratio was clipped",
        ),
        Column::new(
            "approx_kl",
            Float64,
            false,
            "mean approximate KL between successive policies",
        ),
        Column::new(
            "response_length",
            Float64,
            false,
            "mean response length (tokens)",
        ),
        Column::new(
            "eos_rate",
            Float64,
            false,
            "share of responses that ended by themselves",
        ),
        Column::new(
            "grad_norm",
            Float64,
            false,
            "mean gradient norm before clipping",
        ),
        Column::new("lr", Float64, false, "learning rate"),
    ],
};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IterationRow {
    pub iteration: u64,
    pub score: f64,
    pub reward: f64,
    pub kl: f64,
    pub kl_coef: f64,
    pub policy_loss: f64,
    pub value_loss: f64,
    pub clip_fraction: f64,
    pub approx_kl: f64,
    pub response_length: f64,
    pub eos_rate: f64,
    pub grad_norm: f64,
    pub lr: f64,
}

impl TableRow for IterationRow {
    const KIND: &'static TableKind = &PPO_HISTORY;
    fn columns(rows: &[Self]) -> Vec<ArrayRef> {
        vec![
            col::u64(rows.iter().map(|r| r.iteration)),
            col::f64(rows.iter().map(|r| r.score)),
            col::f64(rows.iter().map(|r| r.reward)),
            col::f64(rows.iter().map(|r| r.kl)),
            col::f64(rows.iter().map(|r| r.kl_coef)),
            col::f64(rows.iter().map(|r| r.policy_loss)),
            col::f64(rows.iter().map(|r| r.value_loss)),
            col::f64(rows.iter().map(|r| r.clip_fraction)),
            col::f64(rows.iter().map(|r| r.approx_kl)),
            col::f64(rows.iter().map(|r| r.response_length)),
            col::f64(rows.iter().map(|r| r.eos_rate)),
            col::f64(rows.iter().map(|r| r.grad_norm)),
            col::f64(rows.iter().map(|r| r.lr)),
        ]
    }
}

/// One sampled response with everything the update needs, per response token.
struct Rollout {
    /// Prompt then response tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    old_logp: Vec<f64>,
    values: Vec<f64>,
    advantages: Vec<f64>,
    returns: Vec<f64>,
}

/// What `ppo` keeps across a resume besides model and optimiser.
#[derive(Debug, Serialize, Deserialize)]
struct PpoState {
    iteration: usize,
    kl_coef: f64,
    rows: Vec<IterationRow>,
}

impl Kind for Ppo {
    const NAME: &'static str = "ppo";

    // 2: the model computes through hone's fused CPU kernels (model::kernels), which
    // round differently from the composed ops.
    const VERSION: u32 = 2;

    const SUMMARY: &'static str = "optimise a policy against a reward model with PPO (KL penalty, GAE, clipping; sparse, ABC or uniform credit)";

    type Params = PpoParams;

    fn signature(&self, p: &PpoParams, _inputs: &[&str]) -> Result<Signature, Vec<ParamError>> {
        let key = |k: &str| vec![PathSeg::Key(k.into())];
        let mut errors = Vec::new();
        if p.kl_target.is_some() && p.kl_coef == 0.0 {
            errors.push(ParamError::new(
                key("kl_target"),
                "`kl_target` needs a `kl_coef` > 0 to adapt",
            ));
        }
        if !p.rollouts.is_multiple_of(p.samples_per_prompt) {
            errors.push(ParamError::new(
                key("samples_per_prompt"),
                format!(
                    "`samples_per_prompt` ({}) must divide `rollouts` ({})",
                    p.samples_per_prompt, p.rollouts
                ),
            ));
        }
        if p.baseline == Baseline::LeaveOneOut {
            if p.samples_per_prompt < 2 {
                errors.push(ParamError::new(
                    key("baseline"),
                    "`baseline: leave-one-out` compares a prompt's responses with each other: set `samples_per_prompt` to 2 or more",
                ));
            }
            if p.critic == CriticKind::RewardModel {
                errors.push(ParamError::new(
                    key("critic"),
                    "`critic: reward-model` trains a critic that `baseline: leave-one-out` never uses: drop one of them",
                ));
            }
        }
        if !p.template.contains("{prompt}") {
            errors.push(ParamError::new(
                key("template"),
                "`template` must contain `{prompt}`",
            ));
        }
        lm::check_device(&p.device, &mut errors);
        lm::check_adapter_without_dropout(p.adapter.as_ref(), "ppo", &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut reference = Port::new("reference", ArtifactType::CausalLm);
        reference.required = false;
        Ok(Signature {
            inputs: vec![
                Port::new("policy", ArtifactType::CausalLm),
                Port::new("reward_model", ArtifactType::RewardModel),
                reference,
            ],
            open_inputs: false,
            outputs: vec![
                Port::new("policy", ArtifactType::CausalLm),
                Port::new("metrics", ArtifactType::Metrics),
            ],
            deps: vec![p.prompts.clone()],
        })
    }

    fn run(&self, p: &PpoParams, ctx: &StageContext<'_>) -> Result<(), StageError> {
        let device = lm::device(&p.device)?;
        let (mut policy, tok) = lm::load_input(ctx, "policy", &device)?;
        lm::attach_adapter(&mut policy, p.adapter.as_ref(), ctx.seed)?;
        // With an adapter the reference is the policy's own base without it (TRL's way: one
        // copy of the weights), unless a `reference` input is bound.
        let reference = if policy.adapter.is_some() && !ctx.inputs.contains_key("reference") {
            policy.base_model().map_err(failed)?
        } else {
            lm::load_reference(ctx, "policy", &device)?
        };
        let scorer = RewardScorer::load(
            &ctx.workspace.join(&ctx.inputs["reward_model"][0]),
            p.reward_template.as_deref(),
            &device,
        )?;
        let eos = lm::end_of_text(&policy.config, &tok);
        let (prompts, encoded, stop_tokens) = prompts_and_stops(p, ctx, &policy, &tok)?;

        let steps_per_iteration = p.epochs * p.rollouts.div_ceil(p.minibatch_size);
        let schedule = |lr: f64| Schedule {
            peak_lr: lr,
            warmup_steps: 0,
            total_steps: p.iterations * steps_per_iteration,
            final_fraction: 1.0,
        };
        let (value_head, value_bias, mut critic) = value_model(
            p,
            ctx,
            &policy,
            &tok,
            schedule(p.critic_lr.unwrap_or(p.lr)),
            &device,
        )?;
        let vars: Vec<(String, Var)> = crate::policy::train::lm_vars(&policy);
        let mut trainer =
            Trainer::new(vars, schedule(p.lr), 0.0, Some(p.max_grad_norm)).map_err(failed)?;
        let resume = lm::ResumeState::new(ctx.resume_dir);
        let mut state: PpoState = match resume.restore_with(&policy, &mut trainer)? {
            Some((_, extra)) => serde_json::from_value(extra).map_err(failed)?,
            None => PpoState {
                iteration: 0,
                kl_coef: p.kl_coef,
                rows: Vec::new(),
            },
        };
        if let Some(critic) = &mut critic {
            critic.restore(ctx.resume_dir, state.iteration)?;
        }
        let mut adaptive = p.kl_target.map(|target| AdaptiveKl {
            coef: state.kl_coef,
            target,
            horizon: p.kl_horizon,
        });
        let models = Models {
            policy: &policy,
            reference: &reference,
            scorer: &scorer,
            tok: &tok,
            value_head: &value_head,
            value_bias: &value_bias,
            eos,
            stop_tokens: &stop_tokens,
            device: &device,
        };
        let started = std::time::Instant::now();
        while state.iteration < p.iterations {
            if ctx.cancelled() {
                return Err(StageError::Cancelled);
            }
            let iteration = state.iteration;
            let kl_coef = adaptive.map_or(state.kl_coef, |a| a.coef);
            let batch = iteration_prompts(
                prompts.len(),
                p.rollouts / p.samples_per_prompt,
                p.samples_per_prompt,
                ctx.seed,
                iteration,
            );
            let collected = collect(
                p,
                ctx.seed,
                iteration,
                &models,
                critic.as_ref(),
                &batch,
                &prompts,
                &encoded,
                kl_coef,
            )?;
            let lr = trainer.lr();
            let sums = update(
                p,
                ctx.seed,
                iteration,
                &models,
                critic.as_mut(),
                &mut trainer,
                &collected.rollouts,
            )?;
            let row = collected.row(iteration, kl_coef, &sums, lr);
            tracing::info!(
                iteration = row.iteration,
                of = p.iterations,
                score = row.score,
                kl = row.kl,
                secs = started.elapsed().as_secs(),
                "ppo"
            );
            let (mean_kl, row_score) = (row.kl, row.score);
            state.rows.push(row);
            if let Some(a) = &mut adaptive {
                a.update(mean_kl, collected.rollouts.len());
            }
            state.iteration += 1;
            state.kl_coef = adaptive.map_or(state.kl_coef, |a| a.coef);
            ctx.headline("score", row_score);
            ctx.headline("kl", mean_kl);
            ctx.report(state.iteration as u64, p.iterations as u64);
            if state.iteration.is_multiple_of(p.checkpoint_every) && state.iteration < p.iterations
            {
                checkpoint(ctx, &resume, &policy, &trainer, critic.as_ref(), &state)?;
            }
        }
        write_outputs(p, ctx, &policy, &tok, &state)
    }
}

/// The models one PPO iteration reads (the policy is updated in place between them).
struct Models<'a> {
    policy: &'a Trainable,
    reference: &'a CausalLm,
    scorer: &'a RewardScorer,
    tok: &'a tokenizers::Tokenizer,
    value_head: &'a Tensor,
    value_bias: &'a Tensor,
    /// End-of-text: what sequences are padded with.
    eos: u32,
    /// What ends a sampled response (end-of-text, and a chat model's end of turn).
    stop_tokens: &'a [u32],
    device: &'a Device,
}

/// The prompts (at most `max_prompts`), each encoded through the template (or the
/// policy's chat template), and the tokens that end a response.
#[allow(clippy::type_complexity)]
fn prompts_and_stops(
    p: &PpoParams,
    ctx: &StageContext<'_>,
    policy: &Trainable,
    tok: &tokenizers::Tokenizer,
) -> Result<(Vec<(String, String)>, Vec<Vec<u32>>, Vec<u32>), StageError> {
    let mut prompts = read_prompts(&ctx.workspace.join(&p.prompts))?;
    if let Some(n) = p.max_prompts {
        prompts.truncate(n);
    }
    if prompts.is_empty() {
        return Err(failed(format!("`{}` has no prompts", p.prompts)));
    }
    let (format, stop_tokens) = lm::sampling_format(ctx, "policy", &p.template, policy, tok)?;
    let encoded = encode_prompts(p, &format, tok, &prompts, policy.config.context_len())?;
    Ok((prompts, encoded, stop_tokens))
}

/// Each prompt through the template (or the model's chat template), checked against the
/// context.
fn encode_prompts(
    p: &PpoParams,
    format: &PromptFormat,
    tok: &tokenizers::Tokenizer,
    prompts: &[(String, String)],
    context: usize,
) -> Result<Vec<Vec<u32>>, StageError> {
    prompts
        .iter()
        .map(|(id, text)| {
            let ids = format.encode_prompt(tok, text)?;
            check_fits(id, ids.len(), p.max_new_tokens, context, "the model")?;
            Ok(ids)
        })
        .collect()
}

/// The values: with `critic: policy` one linear map of the policy's last hidden state,
/// trained with it and left out of the saved policy; with `critic: reward-model` the
/// reward model's backbone and head with a bias, trained apart (`critic_schedule`).
fn value_model(
    p: &PpoParams,
    ctx: &StageContext<'_>,
    policy: &Trainable,
    tok: &tokenizers::Tokenizer,
    critic_schedule: Schedule,
    device: &Device,
) -> Result<(Tensor, Tensor, Option<Critic>), StageError> {
    Ok(match p.critic {
        CriticKind::Policy => {
            let hidden = policy.config.hidden_size();
            let vb = VarBuilder::from_varmap(&policy.varmap, DType::F32, device);
            let head = vb
                .get_with_hints((1, hidden), "hone_value.weight", Init::Const(0.0))
                .map_err(failed)?;
            let bias = vb
                .get_with_hints(1, "hone_value.bias", Init::Const(0.0))
                .map_err(failed)?;
            (head, bias, None)
        }
        CriticKind::RewardModel => {
            let critic = Critic::load(ctx, tok, critic_schedule, p.max_grad_norm, device)?;
            let head = critic.model.head.as_tensor().clone();
            let bias = critic.bias.clone();
            (head, bias, Some(critic))
        }
    })
}

/// The prompts (indices) of an iteration: a seeded permutation per pass over the prompts,
/// each prompt answered `group` times in a row.
fn iteration_prompts(
    n_prompts: usize,
    per_iteration: usize,
    group: usize,
    seed: u64,
    iteration: usize,
) -> Vec<usize> {
    (0..per_iteration)
        .flat_map(|k| {
            let global = iteration * per_iteration + k;
            let pass = global / n_prompts;
            let mut order: Vec<usize> = (0..n_prompts).collect();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(
                seed ^ (pass as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ));
            std::iter::repeat_n(order[global % n_prompts], group)
        })
        .collect()
}

/// An iteration's experience: its rollouts with advantages and returns, and what the
/// history records of them.
struct Collected {
    rollouts: Vec<Rollout>,
    raw_scores: Vec<f64>,
    ended: Vec<bool>,
    kl_sum: f64,
    reward_sum: f64,
}

/// Loss and gradient sums over an iteration's updates.
#[derive(Default)]
struct UpdateSums {
    policy_loss: f64,
    value_loss: f64,
    clip_fraction: f64,
    approx_kl: f64,
    grad_norm: f64,
    updates: usize,
}

impl Collected {
    fn row(&self, iteration: usize, kl_coef: f64, sums: &UpdateSums, lr: f64) -> IterationRow {
        let n = self.rollouts.len() as f64;
        let per_update = |x: f64| x / sums.updates as f64;
        IterationRow {
            iteration: iteration as u64 + 1,
            score: self.raw_scores.iter().sum::<f64>() / n,
            reward: self.reward_sum / n,
            kl: self.kl_sum / n,
            kl_coef,
            policy_loss: per_update(sums.policy_loss),
            value_loss: per_update(sums.value_loss),
            clip_fraction: per_update(sums.clip_fraction),
            approx_kl: per_update(sums.approx_kl),
            response_length: self
                .rollouts
                .iter()
                .map(|r| r.old_logp.len() as f64)
                .sum::<f64>()
                / n,
            eos_rate: self.ended.iter().filter(|&&e| e).count() as f64 / n,
            grad_norm: per_update(sums.grad_norm),
            lr,
        }
    }
}

/// The scores PPO optimises: the reward model's, less `missing_eos_penalty` for a
/// response that never ended, clipped to ±`reward_clip`, then whitened (`whiten_rewards`)
/// and, with `baseline: leave-one-out`, each measured against its prompt's other answers.
fn final_scores(p: &PpoParams, raw: &[f64], ended: &[bool]) -> Vec<f64> {
    let mut scores: Vec<f64> = raw
        .iter()
        .zip(ended)
        .map(|(s, ended)| {
            let penalised = if *ended {
                *s
            } else {
                s - p.missing_eos_penalty
            };
            penalised.clamp(-p.reward_clip, p.reward_clip)
        })
        .collect();
    if p.whiten_rewards {
        scores = ppo::whiten(&scores, false);
    }
    if p.baseline == Baseline::LeaveOneOut {
        scores = ppo::leave_one_out(&scores, p.samples_per_prompt);
    }
    scores
}

/// The rollouts' per-token log-probabilities under the policy they were sampled from, and
/// the values of the states before them (from the policy's head or the separate critic).
fn old_logp_values(
    p: &PpoParams,
    m: &Models<'_>,
    critic: Option<&Critic>,
    frozen: &CausalLm,
    sequences: &[(Vec<u32>, usize)],
) -> Result<Vec<crate::policy::logprobs::TokenValues>, StageError> {
    let head = Some((m.value_head, m.value_bias));
    Ok(match critic {
        None => per_token(frozen, head, sequences, m.eos, p.temperature, m.device)?,
        Some(critic) => {
            let logp = per_token(frozen, None, sequences, m.eos, p.temperature, m.device)?;
            let critic_frozen = critic.model.base.frozen().map_err(failed)?;
            let values = per_token(
                &critic_frozen,
                head,
                sequences,
                m.eos,
                p.temperature,
                m.device,
            )?;
            logp.into_iter()
                .zip(values)
                .map(|((lp, _), (_, v))| (lp, v))
                .collect()
        }
    })
}

/// Saves what a killed stage resumes from: the critic first, under this iteration's name,
/// so that the policy's checkpoint (which holds the iteration) points at a critic that
/// exists.
fn checkpoint(
    ctx: &StageContext<'_>,
    resume: &lm::ResumeState<'_>,
    policy: &Trainable,
    trainer: &Trainer,
    critic: Option<&Critic>,
    state: &PpoState,
) -> Result<(), StageError> {
    if let Some(critic) = critic {
        critic.save(ctx.resume_dir, state.iteration)?;
    }
    resume.save_with(
        policy,
        trainer,
        &[],
        serde_json::to_value(state).map_err(failed)?,
    )?;
    if let Some(critic) = critic {
        critic.forget_before(ctx.resume_dir, state.iteration);
    }
    Ok(())
}

/// An iteration's experience: rollouts of the batch's prompts from a detached copy of the
/// policy, then their scores (penalised, clipped, whitened or leave-one-out), per-token
/// log-probabilities, values and KL to the reference, rewards placed by `credit`, and
/// advantages by GAE, whitened over the iteration's tokens.
#[allow(clippy::too_many_arguments)]
fn collect(
    p: &PpoParams,
    seed: u64,
    iteration: usize,
    m: &Models<'_>,
    critic: Option<&Critic>,
    batch: &[usize],
    prompts: &[(String, String)],
    encoded: &[Vec<u32>],
    kl_coef: f64,
) -> Result<Collected, StageError> {
    let (eos, device) = (m.eos, m.device);
    let frozen = m.policy.frozen().map_err(failed)?;
    let requests: Vec<(&[u32], u64)> = batch
        .iter()
        .enumerate()
        .map(|(k, &i)| {
            let seed = derive_seed(seed, &format!("rollout-{iteration}-{k}"));
            (encoded[i].as_slice(), seed)
        })
        .collect();
    let rollout_params =
        RolloutParams::sampling(p.temperature, p.max_new_tokens, m.stop_tokens, &p.stop);
    let responses: Vec<(Vec<u32>, bool, String)> =
        rollout(&frozen, m.tok, &requests, &rollout_params, device)?
            .into_iter()
            .map(|c| {
                let ended = c.ended();
                (c.tokens, ended, c.text)
            })
            .collect();

    let items: Vec<(&str, &str)> = batch
        .iter()
        .zip(&responses)
        .map(|(&i, (_, _, text))| (prompts[i].1.as_str(), text.as_str()))
        .collect();
    let need_attention = p.credit == Credit::Abc;
    let scored = m.scorer.score(&items, need_attention)?;
    let raw_scores: Vec<f64> = scored.iter().map(|s| s.score).collect();
    let ended: Vec<bool> = responses.iter().map(|r| r.1).collect();
    let scores = final_scores(p, &raw_scores, &ended);
    let leave_one_out = p.baseline == Baseline::LeaveOneOut;
    let sequences: Vec<(Vec<u32>, usize)> = batch
        .iter()
        .zip(&responses)
        .map(|(&i, (tokens, _, _))| {
            let mut all = encoded[i].clone();
            all.extend(tokens);
            (all, encoded[i].len())
        })
        .collect();
    let old = old_logp_values(p, m, critic, &frozen, &sequences)?;
    let reference_logp = per_token(m.reference, None, &sequences, eos, p.temperature, device)?;
    let mut rollouts = Vec::with_capacity(batch.len());
    let (mut kl_sum, mut reward_sum) = (0.0, 0.0);
    for (k, ((tokens, prompt_len), score)) in sequences.iter().zip(&scores).enumerate() {
        let logp = &old[k].0;
        // Without a critic the values are 0 and GAE with lambda 1 gives the returns of the
        // centred rewards.
        let no_values = vec![0.0; logp.len()];
        let (values, lambda) = if leave_one_out {
            (&no_values, 1.0)
        } else {
            (&old[k].1, p.lambda)
        };
        let kl = ppo::kl_per_token(logp, &reference_logp[k].0, p.kl_estimator);
        let n = logp.len();
        // ABC: the reward model's attention over its own tokens of the response, spread
        // onto the policy's tokens in proportion to position.
        let attention = scored[k]
            .attention
            .as_deref()
            .map(|a| ppo::resample_weights(a, n));
        let shaped = ppo::shape_score(*score, n, p.credit, attention.as_deref(), p.abc_beta);
        let rewards: Vec<f64> = shaped
            .iter()
            .zip(&kl)
            .map(|(r, k)| r - kl_coef * k)
            .collect();
        kl_sum += kl.iter().sum::<f64>();
        reward_sum += rewards.iter().sum::<f64>();
        let (advantages, returns) = ppo::gae(&rewards, values, p.gamma, lambda);
        rollouts.push(Rollout {
            tokens: tokens.clone(),
            prompt_len: *prompt_len,
            old_logp: logp.clone(),
            values: values.clone(),
            advantages,
            returns,
        });
    }
    // Advantages whitened over every token of the iteration.
    let flat: Vec<f64> = rollouts.iter().flat_map(|r| r.advantages.clone()).collect();
    let whitened = ppo::whiten(&flat, true);
    let mut offset = 0;
    for r in &mut rollouts {
        let n = r.advantages.len();
        r.advantages.copy_from_slice(&whitened[offset..offset + n]);
        offset += n;
    }
    Ok(Collected {
        rollouts,
        raw_scores,
        ended,
        kl_sum,
        reward_sum,
    })
}

/// The updates: epochs of shuffled minibatches of clipped policy (and value) losses.
fn update(
    p: &PpoParams,
    seed: u64,
    iteration: usize,
    m: &Models<'_>,
    mut critic: Option<&mut Critic>,
    trainer: &mut Trainer,
    rollouts: &[Rollout],
) -> Result<UpdateSums, StageError> {
    let leave_one_out = p.baseline == Baseline::LeaveOneOut;
    let mut sums = UpdateSums::default();
    for epoch in 0..p.epochs {
        let mut order: Vec<usize> = (0..rollouts.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(derive_seed(
            seed,
            &format!("minibatch-{iteration}-{epoch}"),
        )));
        for chunk in order.chunks(p.minibatch_size) {
            let picked: Vec<&Rollout> = chunk.iter().map(|&i| &rollouts[i]).collect();
            let mb = Minibatch::new(&picked, m.eos, m.device)?;
            let (logp, hidden) =
                token_logprobs(&m.policy.model, &mb.ids, p.temperature).map_err(failed)?;
            let hidden = match &critic {
                None => hidden,
                Some(critic) => {
                    token_logprobs(&critic.model.base.model, &mb.ids, p.temperature)
                        .map_err(failed)?
                        .1
                }
            };
            let (pg, clip_fraction, approx_kl) =
                ppo::policy_loss(&logp, &mb.old_logp, &mb.advantages, &mb.mask, p.clip)
                    .map_err(failed)?;
            sums.policy_loss += f64::from(pg.to_scalar::<f32>().map_err(failed)?);
            let norm = if leave_one_out {
                trainer.step(&pg).map_err(failed)?
            } else {
                let values = value_of(
                    &hidden,
                    m.value_head,
                    m.value_bias,
                    mb.ids.dim(1).map_err(failed)? - 1,
                )?;
                let vf =
                    ppo::value_loss(&values, &mb.old_values, &mb.returns, &mb.mask, p.value_clip)
                        .map_err(failed)?;
                sums.value_loss += f64::from(vf.to_scalar::<f32>().map_err(failed)?);
                match critic.as_deref_mut() {
                    None => {
                        let loss = (&pg + (&vf * p.vf_coef).map_err(failed)?).map_err(failed)?;
                        trainer.step(&loss).map_err(failed)?
                    }
                    Some(critic) => {
                        critic.trainer.step(&vf).map_err(failed)?;
                        trainer.step(&pg).map_err(failed)?
                    }
                }
            };
            sums.clip_fraction += clip_fraction;
            sums.approx_kl += approx_kl;
            sums.grad_norm += norm;
            sums.updates += 1;
        }
    }
    Ok(sums)
}

/// The policy without the value head, and the metrics: a summary and the history.
fn write_outputs(
    p: &PpoParams,
    ctx: &StageContext<'_>,
    policy: &Trainable,
    tok: &tokenizers::Tokenizer,
    state: &PpoState,
) -> Result<(), StageError> {
    // The policy, without the value head.
    let out = ctx.workspace.join(&ctx.outputs["policy"]);
    if policy.adapter.is_some() {
        let reference = crate::artifact::store_reference(&lm::input_dir(ctx, "policy")?, 0);
        policy
            .save_adapter(&out, &reference, "CAUSAL_LM", &[], |_| false)
            .map_err(failed)?;
        if p.adapter.as_ref().is_some_and(|a| a.merge) {
            policy.save_merged(&out, |_| false).map_err(failed)?;
        }
    } else {
        policy
            .save_filtered(&out, |name| !name.starts_with("hone_value."))
            .map_err(failed)?;
    }
    tok.save(out.join("tokenizer.json"), true).map_err(failed)?;
    crate::policy::chat::carry_tokenizer_files(&lm::input_dir(ctx, "policy")?, &out)?;
    ModelMeta {
        template: Some(p.template.clone()),
        ..ModelMeta::of_stage("ppo")
    }
    .write(&out)?;
    let metrics_dir = ctx.workspace.join(&ctx.outputs["metrics"]);
    std::fs::create_dir_all(&metrics_dir).map_err(failed)?;
    let last = |k: usize| -> Vec<&IterationRow> { state.rows.iter().rev().take(k).collect() };
    let mean = |rows: &[&IterationRow], f: fn(&IterationRow) -> f64| {
        rows.iter().map(|r| f(r)).sum::<f64>() / rows.len().max(1) as f64
    };
    let tail = last(3);
    let head: Vec<&IterationRow> = state.rows.iter().take(3).collect();
    let summary = json!({
        "iterations": p.iterations,
        "rollouts": p.iterations * p.rollouts,
        "credit": p.credit,
        "kl_estimator": p.kl_estimator,
        "first_score": mean(&head, |r| r.score),
        "final_score": mean(&tail, |r| r.score),
        "final_kl": mean(&tail, |r| r.kl),
        "final_kl_coef": state.kl_coef,
        "final_response_length": mean(&tail, |r| r.response_length),
        "final_eos_rate": mean(&tail, |r| r.eos_rate),
    });
    let provenance = ctx.provenance();
    lm::write_summary_and_table(
        &metrics_dir,
        &summary,
        "history.parquet",
        &state.rows,
        &provenance,
    )
}

/// `critic: reward-model`: a separate value model initialised from the reward model.
struct Critic {
    model: RewardModel,
    bias: Tensor,
    trainer: Trainer,
}

impl Critic {
    fn load(
        ctx: &StageContext<'_>,
        policy_tok: &tokenizers::Tokenizer,
        schedule: Schedule,
        max_grad_norm: f64,
        device: &Device,
    ) -> Result<Self, StageError> {
        let dir = ctx.workspace.join(&ctx.inputs["reward_model"][0]);
        let model = RewardModel::load(&dir, ctx.seed, device).map_err(failed)?;
        let tok = tokenizer::load(&dir.join("tokenizer.json")).map_err(failed)?;
        if tok.get_vocab(true) != policy_tok.get_vocab(true) {
            return Err(failed(format!(
                "`critic: reward-model` reads the policy's tokens, but the reward model in `{}` has another tokenizer; use `critic: policy`",
                dir.display()
            )));
        }
        // Values start as the reward model's reading of each prefix, offset removed like
        // the scores PPO sees.
        let offset = ModelMeta::read(&dir)?
            .and_then(|m| m.reward_offset)
            .unwrap_or(0.0);
        let bias = VarBuilder::from_varmap(&model.base.varmap, DType::F32, device)
            .get_with_hints(1, "hone_value.bias", Init::Const(-offset))
            .map_err(failed)?;
        let trainer = Trainer::new(
            crate::policy::train::reward_model_vars(&model),
            schedule,
            0.0,
            Some(max_grad_norm),
        )
        .map_err(failed)?;
        Ok(Critic {
            model,
            bias,
            trainer,
        })
    }

    fn dir(resume_dir: &std::path::Path, iteration: usize) -> std::path::PathBuf {
        resume_dir.join(format!("critic-{iteration}"))
    }

    fn save(&self, resume_dir: &std::path::Path, iteration: usize) -> Result<(), StageError> {
        let dir = Self::dir(resume_dir, iteration);
        std::fs::create_dir_all(&dir).map_err(failed)?;
        Ok(lm::ResumeState::new(&dir).save(&self.model.base, &self.trainer, &[])?)
    }

    /// Restores the critic saved with the policy's checkpoint of `iteration` (nothing at 0).
    fn restore(
        &mut self,
        resume_dir: &std::path::Path,
        iteration: usize,
    ) -> Result<(), StageError> {
        if iteration == 0 {
            return Ok(());
        }
        let dir = Self::dir(resume_dir, iteration);
        match lm::ResumeState::new(&dir).restore(&self.model.base, &mut self.trainer)? {
            Some(_) => Ok(()),
            None => Err(failed(format!(
                "the checkpoint of iteration {iteration} has no critic in `{}`",
                dir.display()
            ))),
        }
    }

    /// Removes the critics of earlier checkpoints.
    fn forget_before(&self, resume_dir: &std::path::Path, iteration: usize) {
        let Ok(entries) = std::fs::read_dir(resume_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(k) = name
                .strip_prefix("critic-")
                .and_then(|k| k.parse::<usize>().ok())
                && k < iteration
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// A minibatch laid out as the policy's [b, t - 1] outputs: values at the response
/// positions, zeros (and mask 0) elsewhere.
struct Minibatch {
    ids: Tensor,
    mask: Tensor,
    old_logp: Tensor,
    old_values: Tensor,
    advantages: Tensor,
    returns: Tensor,
}

impl Minibatch {
    fn new(rollouts: &[&Rollout], pad: u32, device: &Device) -> Result<Self, StageError> {
        let len = rollouts
            .iter()
            .map(|r| r.tokens.len())
            .max()
            .unwrap_or(2)
            .max(2);
        let b = rollouts.len();
        let mut ids = Vec::with_capacity(b * len);
        let width = len - 1;
        let mut fields = vec![vec![0f32; b * width]; 5];
        for (k, r) in rollouts.iter().enumerate() {
            ids.extend(r.tokens.iter().copied());
            ids.extend(std::iter::repeat_n(pad, len - r.tokens.len()));
            for j in 0..r.old_logp.len() {
                let at = k * width + r.prompt_len - 1 + j;
                fields[0][at] = 1.0;
                fields[1][at] = r.old_logp[j] as f32;
                fields[2][at] = r.values[j] as f32;
                fields[3][at] = r.advantages[j] as f32;
                fields[4][at] = r.returns[j] as f32;
            }
        }
        let tensor = |v: Vec<f32>| Tensor::from_vec(v, (b, width), device).map_err(failed);
        let mut fields = fields.into_iter();
        let mut next = || tensor(fields.next().expect("five fields"));
        Ok(Minibatch {
            ids: Tensor::from_vec(ids, (b, len), device).map_err(failed)?,
            mask: next()?,
            old_logp: next()?,
            old_values: next()?,
            advantages: next()?,
            returns: next()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(with: serde_json::Value) -> PpoParams {
        serde_json::from_value(with).unwrap()
    }

    #[test]
    fn final_scores_penalise_clip_and_centre_by_hand() {
        // Defaults: a response without EOS loses 1, scores are clipped to ±5.
        let p = params(json!({}));
        assert_eq!(
            final_scores(&p, &[1.0, 3.0, 9.0], &[true, false, true]),
            [1.0, 2.0, 5.0]
        );
        // Leave-one-out in groups of 2: each score less the other one.
        let p = params(json!({"baseline": "leave-one-out", "samples_per_prompt": 2}));
        assert_eq!(
            final_scores(&p, &[1.0, 3.0, -7.0, 0.5], &[true, true, true, false]),
            [-2.0, 2.0, -4.5, 4.5]
        );
    }
}
