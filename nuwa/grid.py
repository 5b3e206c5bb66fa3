"""The grid of jobs and their files, derived from params.yaml in this one place.

The grid's axes are :data:`AXES`: each names the params list it runs over, the type of its
values and its folder in a run's path. Training cells are the product of all of them; the
stage table (:mod:`nuwa.stages`) says which axes each stage runs over, and both Snakemake
(wildcards) and DVC (``matrix:``) take them from there. **Adding a grid axis is one entry in
AXES** (plus its list in the schema and params.yaml, and the code that uses its value): the run
folder, the Snakemake wildcards, the DVC matrix, :class:`Cell` and the `nuwa train --<axis>`
options all follow from it.
"""

from __future__ import annotations

from dataclasses import dataclass, make_dataclass
from itertools import product

from nuwa.config import ParamsError


@dataclass(frozen=True)
class Axis:
    """One axis of the grid: ``values`` is the dotted params key of its list."""

    values: str
    type: type
    folder: str  # this axis' part of a run's folder, a format string of the axis name
    pattern: str  # the Snakemake wildcard constraint (values are validated names or integers)
    option: str = ""  # its command-line option (default: --<axis name>, underscores as hyphens)
    default: object = None  # the option's value when not given (None: the option is required)


NAME_PATTERN = "[a-z][a-z0-9_]*"
AXES = {
    "dataset": Axis("grid.datasets", str, "{dataset}", NAME_PATTERN),
    # forecast, or the paper's long-range super-resolution (Table 2): an entry of `tasks`
    "task": Axis("grid.tasks", str, "{task}", NAME_PATTERN, default="forecast"),
    # data scarcity: the share of the training windows a cell (and its bank) may use
    "train_percent": Axis("grid.train_percents", int, "{train_percent}pct", r"\d+", default=100),
    "backbone": Axis("grid.backbones", str, "{backbone}", NAME_PATTERN),
    "variant": Axis("grid.variants", str, "{variant}", NAME_PATTERN),
    "seed": Axis("grid.seeds", int, "seed{seed}", r"\d+"),
}


def option(axis: str) -> str:
    """The command-line option of a grid axis (``--train-percent``)."""
    return STAGE_AXES[axis].option or "--" + axis.replace("_", "-")


# Axes of stages that are not training axes: a baseline is scored on the test windows, not trained;
# a trained cell is evaluated on another dataset's test windows (eval_on, without retraining).
STAGE_AXES = {**AXES, "baseline": Axis("grid.baselines", str, "{baseline}", NAME_PATTERN),
              "eval_on": Axis("grid.eval_on", str, "{eval_on}", NAME_PATTERN),
              # other upstream ViTs (objective, seed, saliency layers) whose masks a variant may use
              "upstream": Axis("grid.upstreams", str, "{upstream}", NAME_PATTERN)}
# An axis whose params list holds pairs: each grid.eval_on entry {train: A, test: B} gives the
# `dataset` wildcard (the trained cells' dataset) and its own (the dataset evaluated on) together.
PAIRED_AXES = {"eval_on": {"dataset": "train", "eval_on": "test"}}

# File contract (later stages and external checks rely on these paths).
PARAMS_OK = "results/params_ok.json"  # DVC's validate stage; every other stage depends on it
PROCESSED = "data/processed/{dataset}.nc"
UPSTREAM_MODEL = "results/upstream/{dataset}/model.pt"
UPSTREAM_HISTORY = "results/upstream/{dataset}/history.csv"
SALIENCY = "results/saliency/{dataset}.nc"
# an upstream of the ablations (grid.upstreams): its own model and masks, for the variants that name it
ABLATION_UPSTREAM_MODEL = "results/upstream/{dataset}/ablations/{upstream}/model.pt"
ABLATION_UPSTREAM_HISTORY = "results/upstream/{dataset}/ablations/{upstream}/history.csv"
ABLATION_SALIENCY = "results/saliency/ablations/{dataset}/{upstream}.nc"
# what an `upstreams` entry may change: keys of `pretrain` and of `saliency`
UPSTREAM_KEYS = {"objective": "pretrain", "mask_ratio": "pretrain", "seed": "pretrain", "layers": "saliency"}
# one bank per training seed (its draws are the seed's) and share of the training windows (it is
# built from those windows alone)
BANK = "results/bank/{dataset}/{variant}/{train_percent}pct/seed{seed}.nc"
RUN_DIR = "results/runs/" + "/".join(axis.folder for axis in AXES.values())
RUN_FILES = ("model.pt", "history.csv", "metrics.json", "examples.nc", "test_losses.nc")
# a trained cell evaluated on another dataset's test split, beside the cell's own files
TRANSFER_DIR = RUN_DIR + "/eval_on/{eval_on}"
BASELINE = "results/baselines/{dataset}/{task}/{baseline}.json"
BASELINE_LOSSES = "results/baselines/{dataset}/{task}/{baseline}_losses.nc"  # per test window and lead, as a run's
SUMMARY_CSV = "results/tables/summary.csv"
SUMMARY_MD = "results/tables/summary.md"
COMPARISONS_CSV = "results/tables/comparisons.csv"  # paired differences, intervals and verdicts
LEAD_TIME_CSV = "results/tables/lead_time.csv"
# What DVC compares (git-versioned): a few metrics per summary row, one JSON each (`dvc metrics
# show` prints a row per file), named inside METRICS_DIR; and the overlays of the variants (dvc.yaml plots)
METRICS_DIR = "results/metrics"
CELL_METRICS = "{dataset}/{task}/{train_percent}pct/{backbone}/{variant}.json"
BASELINE_METRICS = "{dataset}/{task}/{baseline}.json"
LOSS_PLOT = "results/plots/loss.csv"
LEAD_TIME_PLOT = "results/plots/lead_time.csv"
# the paper's tables in its layout, beside summary.csv (nuwa.paper.TABLES; a test keeps the two equal)
PAPER_TABLES = ("table1", "table2", "scarcity", "ablations", "generalisation")
PAPER_TABLE = "results/tables/{name}.{extension}"
PAPER_VS_OURS = "results/tables/paper_vs_ours.md"
SCARCITY_FIGURE = "results/figures/scarcity.png"  # the comparisons against the train percent
DIAGNOSTICS = "results/diagnostics/{dataset}.csv"  # saliency diagnostics, one row per (objective, layers)
DIAGNOSTICS_PER_SEED = "results/diagnostics/{dataset}_per_seed.csv"
DIAGNOSTICS_FIGURE = "results/figures/{dataset}_diagnostics.png"
PREDICTION_FIGURE = "results/figures/{dataset}_predictions.png"  # one test window: every backbone x variant, errors
PREDICTION_ANIMATION = "results/figures/{dataset}_predictions.gif"  # the same window, frame by frame over the leads
LEARNING_CURVES_FIGURE = "results/figures/{dataset}_learning_curves.png"  # every run's train and validation loss
COMPARISON_FIGURE = "results/figures/{dataset}_comparisons.png"  # paired differences with their intervals
LEAD_TIME_FIGURE = "results/figures/{dataset}_lead_time.png"
SALIENCY_FIGURE = "results/figures/{dataset}_saliency.png"


def _run_dir(cell) -> str:
    return RUN_DIR.format(**{axis: getattr(cell, axis) for axis in AXES})


def _file(cell, name: str) -> str:
    return f"{cell.run_dir}/{name}"


# One training run: a backbone trained on one dataset with one variant and seed (one field per axis).
Cell = make_dataclass("Cell", [(axis, spec.type) for axis, spec in AXES.items()], frozen=True,
                      namespace={"run_dir": property(_run_dir), "file": _file,
                                 "__doc__": "One training run: one value of every grid axis (nuwa.grid.AXES)."})


def lookup(params: dict, dotted: str):
    value = params
    for part in dotted.split("."):
        value = value[part]
    return value


def axis_values(params: dict, axis: str) -> list:
    return list(lookup(params, STAGE_AXES[axis].values))


def axis_choices(params: dict, axis: str) -> list[dict]:
    """The wildcard values one value of ``axis`` sets: ``{axis: value}``, or for a paired axis
    (:data:`PAIRED_AXES`) both of its wildcards."""
    if axis in PAIRED_AXES:
        return [{wildcard: entry[key] for wildcard, key in PAIRED_AXES[axis].items()}
                for entry in axis_values(params, axis)]
    return [{axis: value} for value in axis_values(params, axis)]


def train_cells(params: dict) -> list:
    """Every training run, in the order of the axes and of their lists."""
    return [Cell(*values) for values in product(*(axis_values(params, axis) for axis in AXES))]


# Methods with no stored bank: Ori ('none') trains on the original windows; 'mixup' (the reference
# augmentation) mixes two original windows per position at batch time (nuwa.loader). Their bank
# file is empty, which keeps the DAG uniform (every variant's training reads its bank).
BANKLESS_METHODS = ("none", "mixup")
# Bank methods that read the saliency file (nuwa.bank.IMPORTANCE_METHODS; a test keeps the two
# equal: importing nuwa.bank here would load numba wherever params are validated)
IMPORTANCE_METHODS = ("saliency", "random_matched", "saliency_inverted")

# A variant's knobs, each with its default in `bank`: the variant owns them (one owner per value).
BANK_KNOBS = ("environment_ratio", "copies", "sigma", "history", "history_decay", "exclude_causal_neighbours")
TRAIN_KNOBS = ("mix_fraction",)


def variant_settings(params: dict, variant: str, knobs=BANK_KNOBS) -> dict:
    """A variant's method and ``knobs``, each the variant's own value or else ``bank``'s default."""
    entry = params["variants"][variant]
    if entry["method"] == "mixup":  # no bank: only the batch knobs (mix_fraction) and its own alpha
        return {"method": "mixup", **{knob: entry.get(knob, params["bank"].get(knob)) for knob in knobs
                                      if knob in TRAIN_KNOBS}, "mixup_alpha": entry["mixup_alpha"]}
    if entry["method"] == "none":  # Ori: no bank to build; every batch position is an original window
        return {"method": "none", **{knob: 0.0 for knob in knobs if knob == "mix_fraction"}}
    return {"method": entry["method"], **{knob: entry[knob] if knob in entry else params["bank"][knob]
                                          for knob in knobs}}


def shown_value(params: dict, axis: str):
    """The value of an axis whose runs the figures show: the first task and seed, and the largest
    train percent (the one whose bank holds the most windows, every window at 100)."""
    values = axis_values(params, axis)
    return max(values) if axis == "train_percent" else values[0]


def upstream_settings(params: dict, section: str, upstream: str | None) -> dict:
    """``params[section]`` (pretrain or saliency) with an ablation upstream's own values, if any."""
    entry = params["upstreams"][upstream] if upstream is not None else {}
    return {**params[section], **{k: v for k, v in entry.items() if UPSTREAM_KEYS.get(k) == section}}


def upstream_files(dataset: str, upstream: str | None = None) -> dict[str, str]:
    """The model, history and saliency files of the pipeline's upstream ViT (``upstream`` None) or
    of an ablation's (an entry of ``upstreams``)."""
    if upstream is None:
        return {"model": UPSTREAM_MODEL.format(dataset=dataset), "history": UPSTREAM_HISTORY.format(dataset=dataset),
                "saliency": SALIENCY.format(dataset=dataset)}
    return {name: path.format(dataset=dataset, upstream=upstream) for name, path in
            (("model", ABLATION_UPSTREAM_MODEL), ("history", ABLATION_UPSTREAM_HISTORY), ("saliency", ABLATION_SALIENCY))}


def bank_saliency(params: dict, dataset: str, variant: str) -> str:
    """The saliency file a variant's bank reads: its `upstream`'s, or the pipeline's."""
    return upstream_files(dataset, params["variants"][variant].get("upstream"))["saliency"]


def train_steps(params: dict, dataset: str) -> int:
    """A training cell's budget: the dataset's own (train.steps_by_dataset, chosen from Ori's
    learning curves: some datasets overfit in a few hundred steps, others still improve at
    thousands), else train.steps. The same for every variant, backbone and seed of the dataset."""
    return int(params["train"].get("steps_by_dataset", {}).get(dataset, params["train"]["steps"]))


def task_factor(params: dict, task: str) -> int:
    """The input coarsening factor of a task: 1 for a forecast, ``factor`` for super-resolution."""
    entry = params["tasks"][task]
    return int(entry["factor"]) if entry["kind"] == "super_resolution" else 1


def check_name(params: dict, section: str, name: str) -> None:
    if name not in params[section]:
        raise ParamsError(f"--{section[:-1]} {name!r} is not defined under {section} "
                          f"(defined: {', '.join(sorted(params[section]))})")
