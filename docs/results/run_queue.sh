#!/usr/bin/env bash
# Run (or resume) every CPU experiment file of issue 21 in this checkout, one after another, each
# to its end before the next starts, so that no core idles between grids across sittings:
#   nohup docs/results/run_queue.sh > /dev/null 2>&1 &
# A grid that has finished costs only Snakemake's check that nothing is left. The queue stops at
# the first grid whose Snakemake fails (a job failed, or a sitting was cut short): the next grids
# wait, because generalisation_cpu trains table1_cpu's shared cells under its own params
# otherwise (docs/results/README.md, "One exception"), and because a failure wants reading first.
set -u
cd "$(dirname "$0")/../.."
generalisation_triggers=(--rerun-triggers mtime input software-env code)
for name in table1_cpu generalisation_cpu ablations_cpu scarcity_cpu table2_cpu; do
  arguments=()
  [ "$name" = generalisation_cpu ] && arguments=("${generalisation_triggers[@]}")
  docs/results/run_experiment.sh "experiments/$name.yaml" "${arguments[@]}" || {
    rc=$?
    echo "queue stopped at $name (rc=$rc)" >> experiment.log
    exit "$rc"
  }
done
echo "queue finished $(date -u +%FT%TZ)" >> experiment.log
