#!/usr/bin/env bash
# Runs the PPO-against-DPO experiment (pipelines/experiments/ppo_dpo.yaml) and copies its tables and plots
# into docs/ppo_dpo/. Re-running with nothing changed re-runs nothing and copies the same files.
#
#   bash pipelines/experiments/ppo.sh [extra `hone run` arguments, e.g. -j 2]
set -euo pipefail
cd "$(dirname "$0")/../.."
spec=pipelines/experiments/ppo_dpo.yaml
cargo build --release --quiet
hone=target/release/hone
"$hone" run "$spec" "$@"
mkdir -p docs/ppo_dpo
for stage in oracle kl; do
  report=$("$hone" show "$spec" "$stage.report" --json |
    sed -n 's/.*"path": *"\([^"]*\)".*/\1/p' | head -n 1)
  for file in plot.svg table.md; do
    cp "$report/$file" "docs/ppo_dpo/$stage-$file"
    chmod u+w "docs/ppo_dpo/$stage-$file"
  done
done
echo "results in docs/ppo_dpo/"
