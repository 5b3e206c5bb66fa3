#!/usr/bin/env bash
# Run (or resume) one experiment file in this checkout, in the background of a session:
#   nohup docs/results/run_experiment.sh experiments/table1_cpu.yaml > /dev/null 2>&1 &
# Further arguments go to Snakemake, e.g. `--prioritize FILE...` to finish some cells first
# (whole datasets, so that a sitting cut short leaves complete paired cells, not scattered runs).
# Snakemake resumes the partial DAG and training resumes from its checkpoints, so a sitting cut
# short loses at most a checkpoint interval per running cell. Each sitting appends its start
# and commit to experiment.log, which docs/results/publish.py reads for each run's provenance.
#
# The shared data directory is copied afresh, with new times, at each sitting of this machine:
# docs/results/carry_times.py checks its contents are unchanged and gives the finished outputs
# times in pipeline order, so Snakemake does not rerun everything from ingest on.
set -u
cd "$(dirname "$0")/../.."
experiment=${1:?usage: run_experiment.sh EXPERIMENT_FILE [SNAKEMAKE_ARGUMENT...]}
shift
make install >> install.log 2>&1 || { echo "make install failed: see install.log" >&2; exit 1; }
export PATH=$PWD/.venv/bin:$PATH
python docs/results/carry_times.py >> experiment.log 2>&1 || { echo "see experiment.log" >&2; exit 2; }
# a sitting killed at the end of a session leaves Snakemake's lock behind: remove it only when no
# Snakemake of this checkout still runs (two at once would write the same files)
running=""
for pid in $(pgrep -f "bin/snakemake" || true); do
  [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$PWD" ] && running=$pid
done
[ -n "$running" ] && { echo "Snakemake $running already runs in $PWD" >&2; exit 3; }
snakemake --unlock --configfile "$experiment" >> snakemake.log 2>&1
start=$(date +%s)
echo "start $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD) $experiment${1:+ (with $# Snakemake arguments)}" >> experiment.log
nice -n 5 snakemake --cores 2 --configfile "$experiment" --keep-going --rerun-incomplete "$@" >> snakemake.log 2>&1
rc=$?
echo "end $(date -u +%FT%TZ) rc=$rc seconds=$(( $(date +%s) - start ))" >> experiment.log
exit $rc
