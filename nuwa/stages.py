"""The stage table: the pipeline defined once.

Per stage: the grid axes it runs over, its input and output files, the params keys it reads
(its dependencies: a change reruns it), the keys it reads that never change its bytes
(``settings``), its resources and its command. Snakemake's rules are made from this table
(``workflow/rules/stages.smk``), ``dvc.yaml`` is generated from it (``nuwa dvc-yaml``; a test
regenerates it and compares bytes), and a stage's code receives only the keys declared here
(:func:`declared_params`): reading any other key is an error, so what reruns a stage cannot
drift from what the stage reads.

Command templates name axes (``{dataset}``) and files (``{data}``, an input or output name, or
a ``paths`` entry); each tool fills them with its own placeholders: Snakemake's
``{wildcards.dataset}``, DVC's ``${item.dataset}``. Both tools therefore run the same commands.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Callable

from nuwa import grid
from nuwa.config import ParamsError


@dataclass(frozen=True)
class Input:
    """An input file. ``over``: axes it is expanded across (every value in the grid);
    ``fixed``: axes whose value a function of params chooses; ``when``: a function of
    (params, wildcards) that says whether the stage needs it (Snakemake asks; DVC, which
    cannot vary deps within a matrix, always lists it)."""

    path: str | None
    over: tuple[str, ...] = ()
    fixed: dict[str, Callable[[dict], list]] = field(default_factory=dict)
    when: Callable[[dict, dict], bool] | None = None
    files: Callable[[dict, dict], list[str]] | None = None  # files a function of (params, wildcards) lists
    # (path None): Snakemake only; DVC cannot list them, so under DVC they are no dependency, unless
    dvc_path: str | None = None  # a file or folder that holds them all, DVC's dependency instead


@dataclass(frozen=True)
class Output:
    path: str
    kind: str = "out"  # out (DVC-cached) | metrics | plots | report (DVC: cache false)
    plot: tuple[str, str] | None = None  # (x, y) of a plots output
    template: str = ""  # a plots output's DVC template (.dvc/plots/<template>.json; default DVC's linear)
    # a folder of files (path: the folder, DVC's output): the files a function of params lists, which
    # Snakemake is given instead (its directory() outputs would add a timestamp file to the folder)
    files: Callable[[dict], list[str]] | None = None
    # in the Snakemake report (`snakemake --report`): its caption (workflow/report/<caption>.rst,
    # how to read it) and where it is filed (category, subcategory; may name wildcards)
    caption: str = ""
    category: str = ""
    subcategory: str = ""


@dataclass(frozen=True)
class Stage:
    name: str
    axes: tuple[str, ...]
    inputs: dict[str, Input]
    outputs: dict[str, Output]
    params: tuple[str, ...]  # dotted keys, may name axes: "datasets.{dataset}"
    command: str
    settings: tuple[str, ...] = ()  # keys read that never change the outputs (no rerun)
    paths: dict[str, str] = field(default_factory=dict)  # other path templates the command names
    threads: bool = True  # the command takes --threads
    mem_mb: int = 4000
    gpu: bool = False  # asks for the backbone's GPUs (Slurm's --gpus)
    comment: str = ""
    # variants whose method stores no bank (grid.BANKLESS_METHODS) read none of the bank's knobs
    params_without_bank: tuple[str, ...] | None = None


def _method(params, wildcards) -> str:
    return params["variants"][wildcards["variant"]]["method"]


def _ablation_saliency(params, wildcards) -> list[str]:
    if _method(params, wildcards) not in IMPORTANCE_METHODS or "upstream" not in params["variants"][wildcards["variant"]]:
        return []
    return [grid.bank_saliency(params, wildcards["dataset"], wildcards["variant"])]


def dataset_source(params, wildcards) -> list[str]:
    """A file-based dataset's source (folder, file or glob matches): under Snakemake a missing one
    stops the DAG before any job runs, and new or changed files rerun the ingest."""
    from nuwa.globbing import find_paths, has_magic

    source = params["datasets"][wildcards["dataset"]].get("source")
    if source is None:
        return []
    if has_magic(source):  # bounded: a link loop under ** does not hang the DAG build (nuwa.globbing)
        return find_paths(source, kind="any") or [source]
    return [source]


def figure_bank_variants(params) -> list[str]:
    """The variant whose bank's masks the saliency figure outlines: the first saliency variant (if any)."""
    return [v for v in params["grid"]["variants"] if params["variants"][v]["method"] == "saliency"][:1]


def metrics_files(params) -> list[str]:
    """The files of the tables stage's metrics folder: one per summary row (nuwa.tables.compact_metrics)."""
    rows = dict.fromkeys(grid.CELL_METRICS.format(**{axis: getattr(cell, axis) for axis in grid.AXES
                                                      if axis != "seed"}) for cell in grid.train_cells(params))
    rows.update(dict.fromkeys(grid.BASELINE_METRICS.format(dataset=d, task=t, baseline=name)
                              for d in params["grid"]["datasets"] for t in params["grid"]["tasks"]
                              for name in params["grid"]["baselines"]))
    return [f"{grid.METRICS_DIR}/{row}" for row in rows]


RUN = grid.RUN_DIR + "/{name}"
TRANSFER = grid.TRANSFER_DIR + "/{name}"
IMPORTANCE_METHODS = grid.IMPORTANCE_METHODS  # bank methods that read the saliency file
# what the tables stage reads of `evaluation` (fss_scales is the scoring stages')
EVALUATION_KEYS = ("comparisons", "confidence", "resamples", "block_windows", "extreme_quantile")
TRAIN_AXES = tuple(grid.AXES)


def shown_of(*axes: str) -> dict:
    """``fixed`` choices of an Input: the value of each axis whose runs the figures show (grid.shown_value)."""
    return {axis: (lambda params, axis=axis: [grid.shown_value(params, axis)]) for axis in axes}

STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("validate", (), {}, {"ok": Output(grid.PARAMS_OK, "report")}, ("",),
          "nuwa validate --out {ok}", threads=False, mem_mb=1000,
          comment="First, and with no grid name in its command: DVC puts the grid's names into the other "
                  "stages' commands (run by a shell), so they run only after `nuwa validate` has checked every "
                  "name. Its file holds the same bytes for any valid params, and every other DVC stage depends "
                  "on it."),
    Stage("ingest", ("dataset",), {"source": Input(None, files=dataset_source)}, {"data": Output(grid.PROCESSED)},
          ("datasets.{dataset}",),
          "nuwa ingest --dataset {dataset} --out {data}", settings=("ingest",),
          comment="ingest.* (dask chunks and scheduler) never changes the bytes: read, not a dependency."),
    Stage("baseline", ("dataset", "task", "baseline"), {"data": Input(grid.PROCESSED)},
          {"metrics": Output(grid.BASELINE, "report"), "losses": Output(grid.BASELINE_LOSSES)},
          ("datasets.{dataset}", "tasks.{task}", "evaluation.fss_scales"),
          "nuwa baseline --dataset {dataset} --task {task} --baseline {baseline} --data {data} --out {metrics}"
          " --losses-out {losses}"),
    Stage("pretrain", ("dataset",), {"data": Input(grid.PROCESSED)},
          {"model": Output(grid.UPSTREAM_MODEL), "history": Output(grid.UPSTREAM_HISTORY, "plots", ("step", "loss"))},
          ("datasets.{dataset}", "pretrain"),
          "nuwa pretrain --dataset {dataset} --data {data} --model-out {model} --history-out {history}", gpu=True),
    Stage("saliency", ("dataset",), {"data": Input(grid.PROCESSED), "model": Input(grid.UPSTREAM_MODEL)},
          {"saliency": Output(grid.SALIENCY)}, ("datasets.{dataset}", "saliency"),
          "nuwa saliency --dataset {dataset} --data {data} --model {model} --out {saliency}", gpu=True),
    Stage("pretrain_ablation", ("dataset", "upstream"), {"data": Input(grid.PROCESSED)},
          {"model": Output(grid.ABLATION_UPSTREAM_MODEL),
           "history": Output(grid.ABLATION_UPSTREAM_HISTORY, "plots", ("step", "loss"))},
          ("datasets.{dataset}", "pretrain", "upstreams.{upstream}"),
          "nuwa pretrain --dataset {dataset} --upstream {upstream} --data {data} --model-out {model}"
          " --history-out {history}", gpu=True,
          comment="Ablations of the upstream ViT (grid.upstreams): another objective, seed or saliency layers, "
                  "for the variants that name it."),
    Stage("saliency_ablation", ("dataset", "upstream"),
          {"data": Input(grid.PROCESSED), "model": Input(grid.ABLATION_UPSTREAM_MODEL)},
          {"saliency": Output(grid.ABLATION_SALIENCY)}, ("datasets.{dataset}", "saliency", "upstreams.{upstream}"),
          "nuwa saliency --dataset {dataset} --upstream {upstream} --data {data} --model {model} --out {saliency}",
          gpu=True),
    Stage("diagnostics", ("dataset",), {"data": Input(grid.PROCESSED), "saliency": Input(grid.SALIENCY)},
          {"table": Output(grid.DIAGNOSTICS, "report"), "per_seed": Output(grid.DIAGNOSTICS_PER_SEED, "report"),
           "figure": Output(grid.DIAGNOSTICS_FIGURE, "report", caption="diagnostics", category="4. Saliency",
                            subcategory="{dataset}")},
          ("datasets.{dataset}", "pretrain", "saliency", "bank.environment_ratio", "diagnostics"),
          "nuwa diagnostics --dataset {dataset} --data {data} --saliency {saliency} --out {table}"
          " --out-per-seed {per_seed}"
          " --out-figure {figure}", gpu=True,
          comment="What the saliency calls environmental: upstream ViTs pretrained in process per objective and "
                  "seed, their masks scored against the field's anomaly and change and compared across seeds; "
                  "and the masks the banks use, from the saliency file."),
    Stage("bank", ("dataset", "train_percent", "variant", "seed"),
          {"data": Input(grid.PROCESSED),
           "saliency": Input(grid.SALIENCY, when=lambda params, w: _method(params, w) in IMPORTANCE_METHODS
                             and "upstream" not in params["variants"][w["variant"]]),
           # a variant that names an ablation upstream reads its masks instead (DVC: the folder of them all)
           "ablation_saliency": Input(None, files=_ablation_saliency, dvc_path="results/saliency")},
          {"bank": Output(grid.BANK)},
          ("datasets.{dataset}", *(f"bank.{knob}" for knob in grid.BANK_KNOBS), "variants.{variant}", "train.subset"),
          "nuwa bank --dataset {dataset} --train-percent {train_percent} --variant {variant} --seed {seed}"
          " --data {data} --saliency {saliency} --out {bank}",
          settings=("bank.chunk_size",), threads=False, mem_mb=6000, params_without_bank=("variants.{variant}",),
          comment="DVC cannot vary deps by variant, so every bank stage lists the saliency file; a variant that "
                  "does not read it rewrites identical bytes, and DVC then leaves its training cells alone."),
    Stage("train", TRAIN_AXES,
          {"data": Input(grid.PROCESSED), "bank": Input(grid.BANK),
           "upstream_model": Input(grid.UPSTREAM_MODEL,
                             when=lambda params, w: bool(params["backbones"][w["backbone"]].get("init_from_upstream")))},
          {"model": Output(RUN.replace("{name}", "model.pt")), "examples": Output(RUN.replace("{name}", "examples.nc")),
           "losses": Output(RUN.replace("{name}", "test_losses.nc")),
           "metrics": Output(RUN.replace("{name}", "metrics.json"), "report"),
           "history": Output(RUN.replace("{name}", "history.csv"), "plots", ("step", "train_loss"),
                             template="nuwa_history")},
          ("datasets.{dataset}", "tasks.{task}", "backbones.{backbone}", "variants.{variant}", "bank.mix_fraction",
           "train", "evaluation.fss_scales"),
          "nuwa train " + " ".join(f"{grid.option(axis)} {{{axis}}}" for axis in TRAIN_AXES)
          + " --data {data} --bank {bank} --upstream {upstream_model} --out-dir {run_dir}",
          paths={"run_dir": grid.RUN_DIR}, mem_mb=6000, gpu=True,
          comment="The upstream model is read only by backbones with init_from_upstream, but DVC cannot vary deps "
                  "by backbone: under DVC every cell lists it (Snakemake asks only for those that read it)."),
    Stage("transfer", ("dataset", "eval_on", *TRAIN_AXES[1:]),
          {"data": Input(grid.PROCESSED.replace("{dataset}", "{eval_on}")), "train_data": Input(grid.PROCESSED),
           "model": Input(RUN.replace("{name}", "model.pt"))},
          {"metrics": Output(TRANSFER.replace("{name}", "metrics.json"), "report"),
           "losses": Output(TRANSFER.replace("{name}", "test_losses.nc"))},
          ("datasets.{dataset}", "datasets.{eval_on}", "tasks.{task}", "backbones.{backbone}", "evaluation.fss_scales"),
          "nuwa transfer " + " ".join(f"{grid.option(axis)} {{{axis}}}" for axis in TRAIN_AXES)
          + " --eval-on {eval_on} --data {data} --train-data {train_data} --model {model} --out {metrics}"
          " --losses-out {losses}", mem_mb=4000, gpu=True,
          comment="A trained cell evaluated on another dataset's test split without retraining (grid.eval_on: "
                  "{train, test} pairs), normalised with the training dataset's statistics."),
    Stage("tables", (),
          {"metrics": Input(RUN.replace("{name}", "metrics.json"), over=TRAIN_AXES),
           "losses": Input(RUN.replace("{name}", "test_losses.nc"), over=TRAIN_AXES),
           "histories": Input(RUN.replace("{name}", "history.csv"), over=TRAIN_AXES),
           "transfers": Input(TRANSFER.replace("{name}", "metrics.json"), over=("eval_on", *TRAIN_AXES[1:])),
           "transfer_losses": Input(TRANSFER.replace("{name}", "test_losses.nc"), over=("eval_on", *TRAIN_AXES[1:])),
           "baselines": Input(grid.BASELINE, over=("dataset", "task", "baseline")),
           "baseline_losses": Input(grid.BASELINE_LOSSES, over=("dataset", "task", "baseline"))},
          {"csv": Output(grid.SUMMARY_CSV, "report", caption="summary", category="2. Tables"),
           "md": Output(grid.SUMMARY_MD, "report"),
           "comparisons": Output(grid.COMPARISONS_CSV, "report", caption="comparisons", category="1. Comparisons"),
           "lead_time": Output(grid.LEAD_TIME_CSV, "report", caption="lead_time", category="2. Tables"),
           # written beside the summary CSV (the command names that folder through --out-csv)
           **{f"{name}_{extension}": Output(grid.PAPER_TABLE.format(name=name, extension=extension), "report",
                                            **({"caption": "paper_table", "category": "3. The paper's tables"}
                                               if extension == "md" else {}))
              for name in grid.PAPER_TABLES for extension in ("csv", "md")},
           "paper_vs_ours": Output(grid.PAPER_VS_OURS, "report", caption="paper_vs_ours",
                                   category="3. The paper's tables"),
           "scarcity_png": Output(grid.SCARCITY_FIGURE, "report", caption="scarcity", category="1. Comparisons"),
           # what `dvc metrics` / `dvc exp show` compare and the top-level plots (PLOTS) draw
           "metrics": Output(grid.METRICS_DIR, "metrics", files=metrics_files),
           "loss_plot": Output(grid.LOSS_PLOT, "report"), "lead_time_plot": Output(grid.LEAD_TIME_PLOT, "report")},
          ("grid", "variants", "datasets", "tasks", *(f"evaluation.{key}" for key in EVALUATION_KEYS)),
          "nuwa tables --out-csv {csv} --out-md {md} --out-comparisons {comparisons} --out-lead-time {lead_time}"
          " --out-scarcity {scarcity_png} --out-metrics {metrics} --out-loss-plot {loss_plot}"
          " --out-lead-time-plot {lead_time_plot}",
          threads=False, mem_mb=2000),
    Stage("figures", ("dataset",),
          {"data": Input(grid.PROCESSED), "saliency": Input(grid.SALIENCY),
           # every backbone and variant of the shown setting: the same test windows (nuwa.evaluate.example_positions)
           "examples": Input(RUN.replace("{name}", "examples.nc"), over=("backbone", "variant"),
                             fixed=shown_of("task", "train_percent", "seed")),
           "histories": Input(RUN.replace("{name}", "history.csv"), over=TRAIN_AXES[1:]),  # every run's curves
           "bank": Input(grid.BANK, fixed={"variant": figure_bank_variants, **shown_of("train_percent", "seed")}),
           "comparisons": Input(grid.COMPARISONS_CSV), "lead_time": Input(grid.LEAD_TIME_CSV)},
          {"predictions": Output(grid.PREDICTION_FIGURE, "report", caption="predictions", category="5. Predictions",
                                 subcategory="{dataset}"),
           "animation": Output(grid.PREDICTION_ANIMATION, "report", caption="predictions_animation",
                               category="5. Predictions", subcategory="{dataset}"),
           "learning_curves": Output(grid.LEARNING_CURVES_FIGURE, "report", caption="learning_curves",
                                     category="6. Training", subcategory="{dataset}"),
           "saliency_png": Output(grid.SALIENCY_FIGURE, "report", caption="saliency", category="4. Saliency",
                                  subcategory="{dataset}"),
           "comparisons_png": Output(grid.COMPARISON_FIGURE, "report", caption="comparisons_figure",
                                     category="1. Comparisons", subcategory="{dataset}"),
           "lead_time_png": Output(grid.LEAD_TIME_FIGURE, "report", caption="lead_time_figure",
                                   category="2. Tables", subcategory="{dataset}")},
          ("grid.backbones", "grid.variants", "grid.tasks", "grid.train_percents", "grid.seeds", "variants", "figures"),
          "nuwa figures --dataset {dataset} --out-predictions {predictions} --out-animation {animation}"
          " --out-learning-curves {learning_curves} --out-saliency {saliency_png}"
          " --out-comparisons {comparisons_png} --out-lead-time {lead_time_png}",
          threads=False, mem_mb=2000),
)}


@dataclass(frozen=True)
class Plot:
    """A top-level DVC plot (dvc.yaml ``plots:``): ``y`` of ``file`` (a stage's output) against ``x``,
    drawn by a template of .dvc/plots/ that overlays the variants in one panel per (setting, backbone)."""

    name: str
    file: str
    x: str
    y: str
    title: str
    x_label: str
    y_label: str
    template: str = "nuwa_variants"


PLOTS = (
    Plot("loss", grid.LOSS_PLOT, "step", "loss", "Training and validation loss, mean over seeds", "step",
         "loss (normalised units)"),
    Plot("lead_time_mse", grid.LEAD_TIME_PLOT, "lead", "mse", "Test MSE per lead time, mean over seeds",
         "lead time (frames)", "MSE (physical units)"),
    Plot("lead_time_mae", grid.LEAD_TIME_PLOT, "lead", "mae", "Test MAE per lead time, mean over seeds",
         "lead time (frames)", "MAE (physical units)"),
)


def stage_param_keys(stage: str, params: dict | None = None, **wildcards) -> list[str]:
    """The dotted params keys ``stage`` depends on, for one job (its wildcards)."""
    spec = STAGES[stage]
    keys = spec.params
    if (spec.params_without_bank is not None and params is not None
            and _method(params, wildcards) in grid.BANKLESS_METHODS):
        keys = spec.params_without_bank
    return [key.format(**wildcards) for key in keys]


def stage_params(params: dict, stage: str, **wildcards) -> dict:
    """The slice of params a stage's job depends on, keyed by dotted path (stable JSON for Snakemake)."""
    return {key: grid.lookup(params, key) if key else params
            for key in stage_param_keys(stage, params, **wildcards)}


# ---------------------------------------------------------------------------------------------
# What a stage's code may read


class UndeclaredParamsKey(ParamsError):
    """A stage read a params key that the stage table does not declare for it."""


class DeclaredParams(dict):
    """The params a stage declared, and nothing else: reading another key raises.

    A plain dict of the declared slices, so code reads it as it read params; ``path`` is where
    this mapping sits in params.yaml, ``declared`` the stage's dotted keys.
    """

    def __init__(self, values: dict, stage: str, declared: tuple[str, ...], path: str = ""):
        super().__init__()
        self.stage, self.declared, self.path = stage, declared, path
        for key, value in values.items():
            dotted = f"{path}.{key}" if path else str(key)
            if not self._allowed(dotted):
                continue
            if isinstance(value, dict) and not self._whole(dotted):
                value = DeclaredParams(value, stage, declared, dotted)
            super().__setitem__(key, value)

    def _whole(self, dotted: str) -> bool:
        return any(key == "" or dotted == key or dotted.startswith(key + ".") for key in self.declared)

    def _allowed(self, dotted: str) -> bool:
        return self._whole(dotted) or any(key.startswith(dotted + ".") for key in self.declared)

    def _refuse(self, key):
        dotted = f"{self.path}.{key}" if self.path else str(key)
        raise UndeclaredParamsKey(f"stage {self.stage!r} read params key {dotted!r}, which nuwa/stages.py does not "
                                  f"declare for it (declared: {', '.join(self.declared) or 'none'}); declare it "
                                  "there (params: reruns the stage; settings: never changes its bytes)")

    def __missing__(self, key):
        dotted = f"{self.path}.{key}" if self.path else str(key)
        if not self._allowed(dotted):
            self._refuse(key)
        raise KeyError(key)

    def get(self, key, default=None):
        dotted = f"{self.path}.{key}" if self.path else str(key)
        if not self._allowed(dotted):
            self._refuse(key)
        return super().get(key, default)

    def __contains__(self, key) -> bool:
        dotted = f"{self.path}.{key}" if self.path else str(key)
        if not self._allowed(dotted):
            self._refuse(key)
        return super().__contains__(key)


def declared_params(params: dict, stage: str, **wildcards) -> DeclaredParams:
    """What ``stage``'s job may read of (validated) ``params``: its params and settings keys."""
    keys = tuple(key.format(**wildcards) for key in (*STAGES[stage].params, *STAGES[stage].settings))
    return DeclaredParams(params, stage, keys)


# ---------------------------------------------------------------------------------------------
# Snakemake: what workflow/rules/stages.smk reads


def input_files(stage: str, params: dict, wildcards: dict) -> dict[str, list[str] | str]:
    """A job's input files by name (Snakemake's input function)."""
    files = {}
    for name, spec in STAGES[stage].inputs.items():
        if spec.when is not None and not spec.when(params, wildcards):
            files[name] = []
            continue
        if spec.files is not None:
            files[name] = spec.files(params, wildcards)
            continue
        choices = [{}]
        for axis in spec.over:
            choices = [{**c, **choice} for c in choices for choice in grid.axis_choices(params, axis)]
        for axis, choose in spec.fixed.items():
            choices = [{**c, axis: value} for c in choices for value in choose(params)]
        paths = [spec.path.format(**{**wildcards, **choice}) for choice in choices]
        files[name] = paths if (spec.over or spec.fixed) else paths[0]
    return files


def _render(stage: Stage, placeholder: Callable[[str], str]) -> str:
    """The command with axes as ``placeholder(axis)`` and files as their path templates so filled."""
    values = {axis: placeholder(axis) for axis in grid.STAGE_AXES}
    files = {**{n: s.path for n, s in stage.inputs.items() if s.path}, **{n: s.path for n, s in stage.outputs.items()},
             **stage.paths}
    rendered = {name: path.format(**values) for name, path in files.items()}
    return stage.command.format(**values, **rendered)


def snakemake_command(stage_name: str, wildcards) -> str:
    """A job's stage command (axes and files filled in): the rule's ``params.command``, which its
    shell runs with Snakemake's options appended (stages.smk)."""
    values = {axis: getattr(wildcards, axis) for axis in STAGES[stage_name].axes}
    return _render(STAGES[stage_name], lambda axis: str(values.get(axis, "{" + axis + "}")))


def log_path(stage_name: str, suffix: str = ".log", root: str = "logs") -> str:
    axes = STAGES[stage_name].axes
    parts = [stage_name, *(grid.STAGE_AXES[axis].folder for axis in axes)]
    if not axes:
        return f"{root}/{stage_name}{suffix}"
    return f"{root}/" + "/".join(parts) + suffix


# ---------------------------------------------------------------------------------------------
# DVC: dvc.yaml, generated


def _dvc_item(axes: tuple[str, ...]) -> dict[str, str]:
    """DVC's placeholder of each wildcard of a stage running over ``axes``: ``${item.<axis>}``, or
    for the wildcards a paired axis sets (grid.PAIRED_AXES) ``${item.<axis>.<key>}``."""
    item = {axis: f"${{item.{axis}}}" for axis in axes}
    for paired, wildcards in grid.PAIRED_AXES.items():
        if paired in axes:
            item.update({wildcard: f"${{item.{paired}.{key}}}" for wildcard, key in wildcards.items()})
    return item


def _dvc_matrix_axes(axes: tuple[str, ...]) -> list[str]:
    """The matrix keys of a stage: its axes less the wildcards a paired axis sets."""
    set_by_pairs = {w for paired, wildcards in grid.PAIRED_AXES.items() if paired in axes
                    for w in wildcards if w != paired}
    return [axis for axis in axes if axis not in set_by_pairs]


def _dvc_dep(spec: Input, axes: tuple[str, ...]) -> str:
    """DVC's dep for an input: the file, or for a set of files (over/fixed axes) the folder that holds them."""
    item = _dvc_item(axes)
    path = spec.path.format(**{axis: item.get(axis, f"{{{axis}}}") for axis in grid.STAGE_AXES})
    if not (spec.over or spec.fixed):
        return path
    return re.split(r"/[^/]*(?<!\$)\{", path, maxsplit=1)[0]


def dvc_yaml() -> str:
    """The text of dvc.yaml (deterministic; `nuwa dvc-yaml` writes it, a test compares it)."""
    lines = ["# GENERATED from nuwa/stages.py by `nuwa dvc-yaml`: do not edit; edit the stage table and run",
             "# `nuwa dvc-yaml --out dvc.yaml` (a test checks that the two agree). The same stages as the",
             "# Snakefile: each calls `nuwa <stage>` and lists exactly the params keys it depends on; the grid",
             "# comes from params.yaml's lists through `matrix:`, never typed out.",
             "stages:"]
    for stage in STAGES.values():
        if stage.comment:
            lines += ["  # " + line for line in _wrap(stage.comment, 94)]
        lines.append(f"  {stage.name}:")
        item = _dvc_item(stage.axes)
        every = {axis: item.get(axis, "${item." + axis + "}") for axis in grid.STAGE_AXES}
        if stage.axes:
            lines.append("    matrix:")
            lines += [f"      {axis}: ${{{grid.STAGE_AXES[axis].values}}}" for axis in _dvc_matrix_axes(stage.axes)]
        lines.append(f"    cmd: {_render(stage, lambda axis: every[axis])}")
        deps = [] if stage.name == "validate" else [grid.PARAMS_OK]
        deps += [_dvc_dep(spec, stage.axes) for spec in stage.inputs.values() if spec.path]
        deps += [spec.dvc_path for spec in stage.inputs.values() if not spec.path and spec.dvc_path]
        if deps:
            lines.append("    deps:")
            lines += [f"      - {dep}" for dep in dict.fromkeys(deps)]
        lines.append("    params:")
        for key in stage.params:
            lines.append("      - params.yaml:" if key == "" else f"      - {key.format(**every)}")
        for section, kinds in (("outs", ("out", "report")), ("metrics", ("metrics",)), ("plots", ("plots",))):
            outputs = [spec for spec in stage.outputs.values() if spec.kind in kinds]
            if outputs:
                lines.append(f"    {section}:")
            for spec in outputs:
                path = spec.path.format(**every)
                if spec.kind == "out":  # cached by DVC; the others are small files kept in the workspace
                    lines.append(f"      - {path}")
                    continue
                lines += [f"      - {path}:", "          cache: false"]
                if spec.template:
                    lines.append(f"          template: {spec.template}")
                if spec.plot:
                    lines += [f"          x: {spec.plot[0]}", f"          y: {spec.plot[1]}"]
        lines.append("")
    lines += ["# The variants overlaid, one panel per (setting, backbone), from files the tables stage writes",
              "# (nuwa/stages.py PLOTS; templates in .dvc/plots/). `dvc plots show` writes them to an offline",
              "# page (.dvc/config: plots.html_template, Vega inlined).",
              "plots:"]
    for plot in PLOTS:
        lines += [f"  - {plot.name}:", f"      template: {plot.template}", f"      title: {json.dumps(plot.title)}",
                  f"      x: {plot.x}", "      y:", f"        {plot.file}: {plot.y}",
                  f"      x_label: {json.dumps(plot.x_label)}", f"      y_label: {json.dumps(plot.y_label)}"]
    lines.append("")
    return "\n".join(lines)


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return lines + [line] if line else lines
