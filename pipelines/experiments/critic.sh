#!/usr/bin/env bash
# PPO with a value head on the policy against a critic from the reward model; tables and plots to docs/critic/.
#   bash pipelines/experiments/critic.sh [extra `hone run` arguments, e.g. -j 2]
exec bash "$(dirname "$0")/../../scripts/experiment.sh" pipelines/experiments/critic.yaml docs/critic "$@"
