#!/usr/bin/env bash
# PPO against DPO on the same pairs; tables and plots to docs/ppo_dpo/.
#   bash pipelines/experiments/ppo_dpo.sh [extra `hone run` arguments, e.g. -j 2]
exec bash "$(dirname "$0")/../../scripts/experiment.sh" pipelines/experiments/ppo_dpo.yaml docs/ppo_dpo "$@"
