#!/usr/bin/env bash
# CUDA smoke test for a hone binary built with `--features cuda` (scripts/build_cuda.sh),
# run from the repository root on a GPU machine: every model stage kind on `cuda:0`
# (pretraining, SFT, sampling, reward-fit full and head-only, odpo-select, PPO with ABC
# credit, DPO, evaluate), then the same pretraining on the CPU to compare the final loss
# and the time.
#
#   bash scripts/cuda_check.sh path/to/hone
set -u
B=$(realpath "${1:?usage: cuda_check.sh path/to/hone}")
if [ -z "${LD_LIBRARY_PATH:-}" ]; then
  for name in 'libcudart.so.13*' 'libcublas.so.13*' 'libcurand.so.10*'; do
    f=$(find /usr/local /opt /usr/lib -name "$name" 2>/dev/null | head -n 1)
    [ -n "$f" ] && LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$(dirname "$f")"
  done
  export LD_LIBRARY_PATH
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
ldd "$B" | grep -i -E "cuda|cublas|curand|not found" || true
W=$(mktemp -d); cp -r data "$W/"; cd "$W"
cat > hone.yaml <<'YAML'
name: cuda-check
seed: 1
params: { dev: "cuda:0" }
stages:
  base: { kind: pretrain-load, with: { source: builtin, vocab_size: 512, d_model: 96, n_layers: 2, n_heads: 4, context: 96, steps: 100, batch_size: 16, device: "${params.dev}" } }
  sft: { kind: sft, inputs: { model: base.model }, with: { demos: data/hhh/demos.jsonl, max_steps: 40, batch_size: 16, device: "${params.dev}" } }
  generate: { kind: generate, inputs: { model: sft.model }, with: { max_prompts: 24, n_samples: 4, max_new_tokens: 16, device: "${params.dev}" } }
  label: { kind: annotate, inputs: { candidates: generate.candidates }, with: { pairs_per_prompt: 3 } }
  reward: { kind: reward-fit, inputs: { model: sft.model, feedback: label.feedback, oracle: label.oracle }, with: { max_steps: 20, batch_size: 16, device: "${params.dev}" } }
  head: { kind: reward-fit, inputs: { init: reward.reward_model, feedback: label.feedback }, with: { train: head, ensemble: 2, device: "${params.dev}" } }
  select: { kind: odpo-select, inputs: { candidates: generate.candidates, reward_model: head.reward_model }, with: { method: d-optimal, budget: 10, device: "${params.dev}" } }
  ppo: { kind: ppo, inputs: { policy: sft.model, reward_model: reward.reward_model }, with: { iterations: 3, rollouts: 8, minibatch_size: 4, credit: abc, device: "${params.dev}" } }
  dpo: { kind: dpo, inputs: { policy: sft.model, feedback: label.feedback }, with: { max_steps: 10, device: "${params.dev}" } }
  evaluate: { kind: evaluate, inputs: { sft: sft.model, ppo: ppo.policy, dpo: dpo.policy, reward_model: reward.reward_model }, with: { policies: [sft, ppo, dpo], max_prompts: 16, device: "${params.dev}" } }
YAML
loss() { (cd "$1" && "$B" show base.metrics --json | python3 -c 'import json,sys; p=json.load(sys.stdin)["outputs"][0]["path"]; print(json.load(open(p+"/summary.json"))["final_loss"])'); }
echo "--- every stage on cuda:0 (the first run JIT-compiles the kernels)"
( time "$B" run -j 1 ) 2>&1 | tail -16
echo "--- pretraining again on cuda:0"
( time "$B" run --force base -q ) 2>&1 | grep real
mkdir cpu && cp -r data hone.yaml cpu/
echo "--- the same pretraining on the CPU"
( cd cpu && time "$B" run base -q -S params.dev=cpu ) 2>&1 | grep real
echo "final loss: cuda $(loss .), cpu $(loss cpu)"
