#!/usr/bin/env bash
# PPO with a critic (GAE) against a leave-one-out baseline (RLOO); tables and plots to docs/baseline/.
#   bash pipelines/experiments/baseline.sh [extra `hone run` arguments, e.g. -j 2]
exec bash "$(dirname "$0")/../../scripts/experiment.sh" pipelines/experiments/baseline.yaml docs/baseline "$@"
