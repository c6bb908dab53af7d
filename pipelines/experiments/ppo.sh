#!/usr/bin/env bash
# Runs the PPO experiment (pipelines/experiments/ppo.yaml) and copies its tables and plots
# into docs/ppo/. Re-running with nothing changed re-runs nothing and copies the same files.
#
#   bash pipelines/experiments/ppo.sh [extra `hone run` arguments, e.g. -j 2]
set -euo pipefail
cd "$(dirname "$0")/../.."
spec=pipelines/experiments/ppo.yaml
cargo build --release --quiet
hone=target/release/hone
"$hone" run "$spec" "$@"
mkdir -p docs/ppo
for stage in oracle_curves rm_curves kl_curves; do
  report=$("$hone" show "$spec" "$stage.report" --json |
    sed -n 's/.*"path": *"\([^"]*\)".*/\1/p' | head -n 1)
  for file in plot.svg table.md; do
    cp "$report/$file" "docs/ppo/${stage%_curves}-$file"
    chmod u+w "docs/ppo/${stage%_curves}-$file"
  done
done
echo "results in docs/ppo/"
