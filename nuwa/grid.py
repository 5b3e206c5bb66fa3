"""The grid of jobs and their files, derived from params.yaml in this one place.

Snakemake (workflow/rules/common.smk) and DVC (dvc.yaml's matrix over the same grid lists)
build the same jobs; the CLI and the rules both take each job's parameters from
:func:`stage_params`, so a value a job does not read never makes it rerun.
"""

from __future__ import annotations

from dataclasses import dataclass

# File contract (later stages and external checks rely on these paths).
PARAMS_OK = "results/params_ok.json"  # DVC's validate stage; every other stage depends on it
PROCESSED = "data/processed/{dataset}.nc"
UPSTREAM_MODEL = "results/upstream/{dataset}/model.pt"
UPSTREAM_HISTORY = "results/upstream/{dataset}/history.csv"
SALIENCY = "results/saliency/{dataset}.nc"
BANK = "results/bank/{dataset}/{variant}.nc"
RUN_DIR = "results/runs/{dataset}/{backbone}/{variant}"
REPLICATE_DIR = RUN_DIR + "/seed{seed}"
RUN_FILES = ("model.pt", "history.csv", "metrics.json", "examples.nc")
BASELINE = "results/baselines/{dataset}/persistence.json"
SUMMARY_CSV = "results/tables/summary.csv"
SUMMARY_MD = "results/tables/summary.md"
PREDICTION_FIGURE = "results/figures/{dataset}_predictions.png"
SALIENCY_FIGURE = "results/figures/{dataset}_saliency.png"


@dataclass(frozen=True)
class Cell:
    """One training run: a backbone trained on one dataset with one variant and seed."""

    dataset: str
    backbone: str
    variant: str
    seed: int
    primary: bool  # trained with params['seed']; replicates live in a seed{N}/ subfolder

    @property
    def run_dir(self) -> str:
        template = RUN_DIR if self.primary else REPLICATE_DIR
        return template.format(dataset=self.dataset, backbone=self.backbone, variant=self.variant, seed=self.seed)

    def file(self, name: str) -> str:
        return f"{self.run_dir}/{name}"


def train_cells(params: dict) -> list[Cell]:
    grid = params["grid"]
    seeds = [(params["seed"], True)] + [(s, False) for s in grid["replicate_seeds"]]
    return [Cell(d, b, v, s, primary)
            for d in grid["datasets"] for b in grid["backbones"] for v in grid["variants"]
            for s, primary in seeds]


def variant_settings(params: dict, variant: str) -> dict:
    """A variant's entry with the bank defaults filled in (a variant may override any knob)."""
    entry = params["variants"][variant]
    if entry["method"] == "none":
        return dict(entry)
    return {**params["bank"], "environment_ratio": params["saliency"]["environment_ratio"], **entry}


# The params keys each stage reads. DVC's dvc.yaml lists the same keys (a test checks it).
STAGE_PARAM_KEYS = {
    "ingest": ("datasets.{dataset}",),
    "pretrain": ("seed", "datasets.{dataset}", "pretrain"),
    "saliency": ("datasets.{dataset}", "saliency"),
    "bank": ("seed", "datasets.{dataset}", "saliency.environment_ratio", "bank", "variants.{variant}"),
    "train": ("seed", "datasets.{dataset}", "backbones.{backbone}", "variants.{variant}", "train"),
    "baseline": ("datasets.{dataset}",),
    "tables": ("seed", "grid", "variants"),
    "figures": ("seed", "grid.variants", "figures"),
}
# A variant with method 'none' has an empty bank that reads none of the bank knobs.
EMPTY_BANK_PARAM_KEYS = ("variants.{variant}",)


def stage_param_keys(stage: str, params: dict | None = None, **wildcards) -> list[str]:
    keys = STAGE_PARAM_KEYS[stage]
    if stage == "bank" and params is not None and params["variants"][wildcards["variant"]]["method"] == "none":
        keys = EMPTY_BANK_PARAM_KEYS
    return [key.format(**wildcards) for key in keys]


def lookup(params: dict, dotted: str):
    value = params
    for part in dotted.split("."):
        value = value[part]
    return value


def stage_params(params: dict, stage: str, **wildcards) -> dict:
    """The slice of params a stage reads, keyed by dotted path (stable JSON for Snakemake)."""
    return {key: lookup(params, key) for key in stage_param_keys(stage, params, **wildcards)}
