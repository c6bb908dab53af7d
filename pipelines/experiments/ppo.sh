#!/usr/bin/env bash
# The PPO credit and KL experiment; tables and plots to docs/ppo/.
#   bash pipelines/experiments/ppo.sh [extra `hone run` arguments, e.g. -j 2]
exec bash "$(dirname "$0")/../../scripts/experiment.sh" pipelines/experiments/ppo.yaml docs/ppo "$@"
