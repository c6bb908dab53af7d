#!/usr/bin/env bash
# Runs the MetaRM experiment (pipelines/experiments/metarm.yaml) and copies its tables and plots
# into docs/metarm/. Re-running with nothing changed re-runs nothing and copies the same files.
#
#   bash pipelines/experiments/metarm.sh [extra `hone run` arguments, e.g. -j 2]
set -euo pipefail
cd "$(dirname "$0")/../.."
spec=pipelines/experiments/metarm.yaml
cargo build --release --quiet
hone=target/release/hone
"$hone" run "$spec" "$@"
mkdir -p docs/metarm
for stage in accuracy accuracy_before held_out spread oracle sft_oracle kl; do
  report=$("$hone" show "$spec" "$stage.report" --json |
    sed -n 's/.*"path": *"\([^"]*\)".*/\1/p' | head -n 1)
  for file in plot.svg table.md; do
    cp "$report/$file" "docs/metarm/$stage-$file"
    chmod u+w "docs/metarm/$stage-$file"
  done
done
echo "results in docs/metarm/"
