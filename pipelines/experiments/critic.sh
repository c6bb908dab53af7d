#!/usr/bin/env bash
# Runs the critic experiment (pipelines/experiments/critic.yaml) and copies its tables and plots
# into docs/critic/. Re-running with nothing changed re-runs nothing and copies the same files.
#
#   bash pipelines/experiments/critic.sh [extra `hone run` arguments, e.g. -j 2]
set -euo pipefail
cd "$(dirname "$0")/../.."
spec=pipelines/experiments/critic.yaml
cargo build --release --quiet
hone=target/release/hone
"$hone" run "$spec" "$@"
mkdir -p docs/critic
for stage in oracle rm kl sft_oracle; do
  report=$("$hone" show "$spec" "$stage.report" --json |
    sed -n 's/.*"path": *"\([^"]*\)".*/\1/p' | head -n 1)
  for file in plot.svg table.md; do
    cp "$report/$file" "docs/critic/$stage-$file"
    chmod u+w "docs/critic/$stage-$file"
  done
done
echo "results in docs/critic/"
