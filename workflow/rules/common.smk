# Validation of params.yaml and the grid: both come from the nuwa package, so Snakemake,
# DVC and `nuwa` accept and reject exactly the same parameter files.
import json
import os

from nuwa import grid, stages
from nuwa.config import (JOB_PARAMS_ENV, JOB_PARAMS_FILE, job_params_env, load_params, with_overrides,
                         write_params)

PARAMS_FILE = workflow.overwrite_configfiles[-1] if workflow.overwrite_configfiles else "params.yaml"
# The file first, read with yaml.safe_load exactly as `nuwa` and DVC's stages read it, and only
# then Snakemake's own config loader, which would evaluate a YTE template (`__use_yte__: true`
# runs the Python expressions in the file). A file named with --configfile is read by Snakemake
# before any workflow code runs: pass only files you trust there.
# An experiment file (`extends: ../params.yaml`, experiments/) overlays the file it extends:
# `nuwa` merges the two, and so does the config here.
PARAMS = load_params(PARAMS_FILE)


configfile: PARAMS_FILE


OVERRIDES = dict(workflow.config_settings.config)  # `--config key=value` on the command line
SOURCE = str(PARAMS_FILE)
if OVERRIDES:
    # typed and validated like the file, an error naming the command line as it was typed
    # (config_args; the parsed values would show train={'steps': '-1'} for train={"steps": -1})
    TYPED = workflow.config_settings.config_args
    if not TYPED:
        TYPED = [f"{key}={value}" for key, value in OVERRIDES.items()]
    TYPED = TYPED if isinstance(TYPED, str) else " ".join(TYPED)
    # on one line: it heads every error, and a comment line of the jobs' params file
    SOURCE = f"--config {' '.join(TYPED.split())} (over {PARAMS_FILE})"
    PARAMS = with_overrides(PARAMS, OVERRIDES, source=SOURCE)
config.clear()
config.update(PARAMS)
# every job reads the merged parameters (experiment overlay, overrides) from one file whose name
# never changes, so jobs run with what the DAG was planned with and rerun by their own keys only.
# Written once this run holds Snakemake's lock (onstart: never on a dry run, which would rewrite
# it under a workflow running in this checkout); each job checks it is still this run's file
# (NUWA_JOB_PARAMS, inherited from this process: nuwa.config.check_job_params).
os.environ[JOB_PARAMS_ENV] = job_params_env(PARAMS, JOB_PARAMS_FILE, source=SOURCE)


onstart:
    write_params(PARAMS, JOB_PARAMS_FILE, source=SOURCE)

ENV = "../envs/nuwa.yaml"


wildcard_constraints:
    **{axis: spec.pattern for axis, spec in grid.STAGE_AXES.items()},


def stage_params(stage):
    """A rule's `params:` entry: the JSON of the keys the stage depends on (a change reruns it)."""
    return lambda wildcards: json.dumps(
        stages.stage_params(config, stage, **dict(wildcards)), sort_keys=True
    )


def cell_gpus(wildcards):
    """GPUs a training cell asks for (backbones.<name>.gpus, default 1)."""
    return int(config["backbones"][wildcards.backbone].get("gpus", 1))


def threads_per_process(wildcards, threads):
    """`nuwa <stage> --threads` is per process; a multi-GPU cell runs one process per GPU."""
    if "backbone" not in wildcards.keys():
        return threads
    return max(1, threads // cell_gpus(wildcards))


def all_targets():
    targets = [grid.PARAMS_OK, grid.SUMMARY_CSV, grid.SUMMARY_MD]
    for dataset in config["grid"]["datasets"]:
        targets += [
            grid.PREDICTION_FIGURE.format(dataset=dataset),
            grid.SALIENCY_FIGURE.format(dataset=dataset),
            grid.UPSTREAM_HISTORY.format(dataset=dataset),
            grid.DIAGNOSTICS.format(dataset=dataset),
        ]
    return targets

