#!/usr/bin/env bash
# Runs the ODPO experiment (pipelines/experiments/odpo.yaml) and copies its table and plot
# into docs/odpo/. Re-running with nothing changed re-runs nothing and copies the same files.
#
#   bash pipelines/experiments/odpo.sh [extra `hone run` arguments, e.g. -j 2]
set -euo pipefail
cd "$(dirname "$0")/../.."
spec=pipelines/experiments/odpo.yaml
cargo build --release --quiet
hone=target/release/hone
"$hone" run "$spec" "$@"
report=$("$hone" show "$spec" curves.report --json |
  sed -n 's/.*"path": *"\([^"]*\)".*/\1/p' | head -n 1)
mkdir -p docs/odpo
for file in plot.svg table.md summary.json; do
  cp "$report/$file" "docs/odpo/$file"
  chmod u+w "docs/odpo/$file"
done
echo "results in docs/odpo/ (from $report)"
