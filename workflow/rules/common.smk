# Validation of params.yaml and the grid: both come from the nuwa package, so Snakemake,
# DVC and `nuwa` accept and reject exactly the same parameter files.
import json

from nuwa import grid
from nuwa.config import load_params, validate_params

PARAMS_FILE = workflow.overwrite_configfiles[-1] if workflow.overwrite_configfiles else "params.yaml"
# The file first, read with yaml.safe_load exactly as `nuwa` and DVC's stages read it, and only
# then Snakemake's own config loader, which would evaluate a YTE template (`__use_yte__: true`
# runs the Python expressions in the file). A file named with --configfile is read by Snakemake
# before any workflow code runs: pass only files you trust there.
load_params(PARAMS_FILE)


configfile: PARAMS_FILE


validate_params(config, source=str(PARAMS_FILE))  # with any --config overrides

ENV = "../envs/nuwa.yaml"
NAME = "[a-z][a-z0-9_]*"


wildcard_constraints:
    dataset=NAME,
    backbone=NAME,
    variant=NAME,
    seed=r"\d+",


def stage_params(stage):
    """A rule's `params:` entry: the JSON of the keys the stage reads (a change reruns it)."""
    return lambda wildcards: json.dumps(
        grid.stage_params(config, stage, **dict(wildcards)), sort_keys=True
    )


def run_files(dataset, backbone, variant, seed, primary):
    """Output files of a training run (seed may be the wildcard "{seed}")."""
    folder = (grid.RUN_DIR if primary else grid.REPLICATE_DIR).format(
        dataset=dataset, backbone=backbone, variant=variant, seed=seed
    )
    return {name.split(".")[0]: f"{folder}/{name}" for name in grid.RUN_FILES}


def dataset_source(wildcards):
    """A file-based dataset's source (folder, file or glob matches): a missing one stops the
    DAG before any job runs, and new or changed files rerun the ingest."""
    import glob

    source = config["datasets"][wildcards.dataset].get("source")
    if source is None:
        return []
    if glob.has_magic(source):
        return sorted(glob.glob(source, recursive=True)) or [source]
    return [source]


def saliency_input(wildcards):
    method = config["variants"][wildcards.variant]["method"]
    return grid.SALIENCY.format(dataset=wildcards.dataset) if method == "saliency" else []


def upstream_input(wildcards):
    """The upstream ViT, for backbones that start from its weights (init_from_upstream)."""
    entry = config["backbones"][wildcards.backbone]
    return grid.UPSTREAM_MODEL.format(dataset=wildcards.dataset) if entry.get("init_from_upstream") else []


def cell_gpus(wildcards):
    """GPUs a training cell asks for (backbones.<name>.gpus, default 1)."""
    return int(config["backbones"][wildcards.backbone].get("gpus", 1))


def threads_per_process(wildcards, threads):
    """`nuwa train --threads` is per process; a multi-GPU cell runs one process per GPU."""
    return max(1, threads // cell_gpus(wildcards))


def all_targets():
    targets = [grid.PARAMS_OK, grid.SUMMARY_CSV, grid.SUMMARY_MD]
    for dataset in config["grid"]["datasets"]:
        targets += [
            grid.PREDICTION_FIGURE.format(dataset=dataset),
            grid.SALIENCY_FIGURE.format(dataset=dataset),
            grid.UPSTREAM_HISTORY.format(dataset=dataset),
        ]
    return targets

