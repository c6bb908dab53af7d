#!/usr/bin/env bash
# A random-weight model of Qwen2.5-0.5B's shape (its config, written by transformers in
# bf16) fine-tuned by hone's sft for STEPS steps, with a LoRA adapter (r 16, alpha 32,
# dropout 0.05, every linear layer) and with every weight, against transformers + PEFT
# doing the same on the same demonstrations. Each run is its own process, measured for
# target tokens per second of the training loop and peak resident memory.
#
#   benches/lora_05b/run.sh [STEPS] [BATCH]      (defaults 20 and 2)
#
# HONE_BENCH_MODES="lora" (or "full") runs one of the two pairs.
#
# Needs a release build of hone and a Python with torch, transformers and peft
# ($HONE_TRANSFORMERS_PYTHON, as .ci/run installs). Writes to $HONE_BENCH_DIR (default
# target/bench-lora-05b): the model (1 GB), a workspace whose store holds the base (2 GB in
# f32) and the fully fine-tuned model (2 GB), and results.jsonl. About 30 minutes on 2
# cores. The two trainers alternate (hone lora, torch lora, hone full, torch full) so
# that a slow spell of a shared machine does not fall on one side only.
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS="${1:-20}"
BATCH="${2:-2}"
PY="${HONE_TRANSFORMERS_PYTHON:-python3}"
OUT="${HONE_BENCH_DIR:-$PWD/target/bench-lora-05b}"
HONE="$PWD/target/release/hone"
[ -x "$HONE" ] || { echo "build hone first: cargo build --release" >&2; exit 2; }
mkdir -p "$OUT/ws"
"$PY" benches/lora_05b/make_model.py "$OUT"
cp "$OUT/demos.jsonl" "$OUT/ws/demos.jsonl"
sft() { # NAME ADAPTER
    echo "  $1: { kind: sft, inputs: { model: base.model }, with: { demos: demos.jsonl, max_steps: $STEPS, batch_size: $BATCH, lr: 2.0e-4, warmup_steps: 0, checkpoint_every: 100000, device: cpu$2 } }"
}
cat > "$OUT/ws/bench.yaml" <<EOF
name: lora-05b
seed: 1
stages:
  base: { kind: pretrain-load, with: { source: hf, path: $OUT/qwen2.5-0.5b-shape, device: cpu } }
$(sft sft_lora ", adapter: { r: 16, alpha: 32, dropout: 0.05, target_modules: [all-linear] }")
$(sft sft_full "")
EOF
RESULTS="$OUT/results.jsonl"
: >> "$RESULTS"
"$HONE" run -C "$OUT/ws" bench.yaml base -q
hone_sft() { # STAGE MODE
    local log="$OUT/$1.log"
    /usr/bin/time -v "$HONE" run -C "$OUT/ws" bench.yaml "$1" --force "$1" -v 2> "$log" >/dev/null
    local rate rss seconds
    # The training loop's rate, as sft logs it at the last step (target tokens per second).
    rate=$(grep "step=$STEPS " "$log" | sed -E 's/.*items_per_s=([0-9.]+).*/\1/' | tail -1)
    rss=$(sed -nE 's/.*Maximum resident set size \(kbytes\): ([0-9]+)/\1/p' "$log")
    seconds=$(sed -nE 's/.*Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (.*)/\1/p' "$log")
    printf '{"trainer": "hone", "mode": "%s", "target_tokens_per_s": %s, "peak_rss_mib": %d, "stage_wall": "%s"}\n' \
        "$2" "$rate" "$((rss / 1024))" "$seconds" | tee -a "$RESULTS"
}
torch_sft() { # MODE
    /usr/bin/time -v "$PY" benches/lora_05b/torch_sft.py "$OUT" "$1" "$BATCH" "$STEPS" \
        2> "$OUT/torch_$1.log" | tee -a "$RESULTS"
}
for mode in ${HONE_BENCH_MODES:-lora full}; do
    hone_sft "sft_$mode" "$mode"
    torch_sft "$mode"
done
echo "results in $RESULTS ($(nproc) cores, $(lscpu | sed -nE 's/^Model name: +//p'))"
