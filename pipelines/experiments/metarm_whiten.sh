#!/usr/bin/env bash
# The MetaRM experiment with whitened PPO rewards; tables and plots to docs/metarm_whiten/.
#   bash pipelines/experiments/metarm_whiten.sh [extra `hone run` arguments, e.g. -j 2]
exec bash "$(dirname "$0")/../../scripts/experiment.sh" pipelines/experiments/metarm_whiten.yaml docs/metarm_whiten "$@"
