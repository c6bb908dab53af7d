#!/usr/bin/env bash
# The MetaRM experiment (3 rounds, vanilla against MetaRM); tables and plots to docs/metarm/.
#   bash pipelines/experiments/metarm.sh [extra `hone run` arguments, e.g. -j 2]
exec bash "$(dirname "$0")/../../scripts/experiment.sh" pipelines/experiments/metarm.yaml docs/metarm "$@"
