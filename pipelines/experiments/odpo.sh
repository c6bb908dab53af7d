#!/usr/bin/env bash
# The ODPO experiment (label selection against reward-model accuracy); tables and plots to docs/odpo/.
#   bash pipelines/experiments/odpo.sh [extra `hone run` arguments, e.g. -j 2]
exec bash "$(dirname "$0")/../../scripts/experiment.sh" pipelines/experiments/odpo.yaml docs/odpo "$@"
