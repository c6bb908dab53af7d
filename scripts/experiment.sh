#!/usr/bin/env bash
# Runs an experiment spec, then copies the report of each of its `aggregate` stages into a
# docs folder as STAGE-plot.svg, STAGE-table.md and STAGE-summary.json. Re-running with
# nothing changed re-runs nothing and copies the same files.
#
#   bash scripts/experiment.sh SPEC DOCS_DIR [extra `hone run` arguments, e.g. -j 2]
#
# HONE=PATH runs that binary instead of building target/release/hone (to keep running
# experiments with one build while the tree changes).
set -euo pipefail
cd "$(dirname "$0")/.."
spec=$1
docs=$2
shift 2
if [ -n "${HONE:-}" ]; then
  hone=$HONE
else
  cargo build --release --quiet
  hone=target/release/hone
fi
"$hone" run "$spec" "$@"
mkdir -p "$docs"
stages=$("$hone" plan "$spec" | sed -n 's/^ *[0-9]*\. \([^ ]*\) (aggregate).*/\1/p')
for stage in $stages; do
  report=$("$hone" show "$spec" "$stage.report" --json |
    sed -n 's/.*"path": *"\([^"]*\)".*/\1/p' | head -n 1)
  for file in plot.svg table.md summary.json; do
    cp "$report/$file" "$docs/$stage-$file"
    chmod u+w "$docs/$stage-$file"
  done
done
echo "results in $docs/"
