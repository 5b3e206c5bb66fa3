"""Stage 6, tables: every cell's test metrics beside the baselines, and the paired comparisons.

A *setting* is a (dataset, task, train percent): the grid's axes other than backbone, variant and
seed; runs are compared within a setting only.
The summary has one row per (setting, backbone, variant): means over seeds (± the sample std),
how strongly the variant perturbs, and skill against persistence. The comparisons
(:func:`comparison_table`) pair each ``evaluation.comparisons`` entry A − B on the same seeds and
the same test windows, with an interval that resamples seeds and blocks of windows
(:mod:`nuwa.compare`) and a verdict, on all test windows and on the extreme ones; under each
dataset a line counts the verdicts across backbones with a sign test (Holm-corrected across the
comparisons).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from nuwa.errors import DataFileError

REPORTED = ("mse", "mae", "mse_frame", "mae_frame", "ssim", "psnr")
# How hard each variant intervenes, beside every result (means over seeds): the share of a batch
# taken from the bank, the share of (step, patch) cells of the bank whose bytes changed, and the
# mean absolute change in training-std units. Comparing variants means comparing these too.
PERTURBATION = ("mix_fraction", "bank_changed_cell_fraction", "bank_mean_abs_change")
SETTING = ("dataset", "task", "train_percent")  # what runs must share to be compared
GROUP = (*SETTING, "backbone")  # the cell of a paired comparison: the variants and seeds within it
KEYS = (*SETTING, "backbone", "variant", "method", "seeds")
# the columns of comparisons.csv, also when no comparison's variants are in the grid (a header only)
COMPARISON_COLUMNS = (*GROUP, "comparison", "a", "b", "metric", "windows", "lead", "n_seeds",
                      "unpaired_seeds", "n_windows", "block", "confidence", "resamples", "mean_a", "mean_b",
                      "mean_difference", "low", "high", "relative_difference", "units", "verdict")
REFERENCE = "persistence"  # skill is 1 - MSE / MSE of this baseline


# What the tables read from a metrics JSON (a run's metrics.json, a baseline's <name>.json): every
# metric must be a finite number, except the ones undefined by design, NaN in the file and "n/a" in
# summary.md (blank in summary.csv): FSS at a threshold where neither forecast nor truth has an event
# (pysteps' convention, nuwa.metrics). CSI and its family have Earthformer's epsilon: never NaN.
METRIC_PREFIXES = ("csi_", "pod_", "far_", "bias_", "fss_")
MAY_BE_UNDEFINED = ("fss_",)
REQUIRED = ("mse",)  # skill and the comparisons need it
NOT_AVAILABLE = "n/a"
NOT_AVAILABLE_NOTE = (f"`{NOT_AVAILABLE}`: no value: an FSS with no event at its threshold in forecast or truth "
                      "(undefined, NaN in the metrics files, as in pysteps), or a metric a baseline's file does "
                      "not hold.")


def is_metric(key: str) -> bool:
    """Whether a metrics JSON's ``key`` is a number the tables use (a score or a perturbation strength)."""
    return key in REPORTED or key in PERTURBATION or key.startswith(METRIC_PREFIXES)


def metric_problem(key: str, value) -> str | None:
    """Why ``value`` cannot be metric ``key`` in the tables (one phrase starting with the key), or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{key}: {value!r} has type {type(value).__name__}, expected a finite number"
    if math.isfinite(value):
        return None
    if math.isnan(value) and key.startswith(MAY_BE_UNDEFINED):
        return None
    allowed = ("a finite number, or NaN where FSS is undefined (no event at that threshold)"
               if key.startswith(MAY_BE_UNDEFINED) else "a finite number")
    return f"{key}: {value!r} is not allowed (allowed: {allowed})"


def check_metrics(metrics, source: str | Path, required: tuple[str, ...] = REQUIRED) -> dict:
    """``metrics`` (a metrics JSON's content) when every metric the tables use is a finite number
    (or NaN where undefined by design, :data:`MAY_BE_UNDEFINED`) and ``required`` are there; else
    :class:`DataFileError`, one line naming ``source``, the key and the value. Other keys (the
    run's names, per-lead lists, conventions) are not looked at."""
    if not isinstance(metrics, dict):
        raise DataFileError(f"{source}: {type(metrics).__name__} at the top level, expected a JSON object of metrics")
    missing = [key for key in required if key not in metrics]
    if missing:
        raise DataFileError(f"{source}: no {', '.join(missing)} (expected in every metrics file: "
                            "the stage that wrote it did not finish, or another program did)")
    for key, value in metrics.items():
        problem = metric_problem(key, value) if is_metric(key) else None
        if problem:
            raise DataFileError(f"{source}: {problem}")
    return metrics


def read_metrics(path: str | Path, required: tuple[str, ...] = REQUIRED) -> dict:
    """A metrics JSON (a run's metrics.json, a baseline's), checked by :func:`check_metrics`."""
    from nuwa.io import read_json

    return check_metrics(read_json(path), path, required)


def _record_source(record: dict) -> str:
    """The metrics.json a run's record comes from (the grid's path of its cell)."""
    from nuwa import grid

    try:
        return grid.Cell(*(record[axis] for axis in grid.AXES)).file("metrics.json")
    except (KeyError, TypeError):
        return "run " + "/".join(str(record.get(axis, "?")) for axis in grid.AXES)


def _metric_names(frame: pd.DataFrame) -> list[str]:
    return ([m for m in REPORTED if m in frame] + sorted(c for c in frame if c.startswith("csi_"))
            + sorted(c for c in frame if c.startswith("fss_")))


def summarise(records: list[dict], baselines: dict[tuple, dict[str, dict]], variant_methods: dict[str, str]) -> pd.DataFrame:
    """``records``: one dict per run (the grid's axes, metrics...); ``baselines``: (dataset, task)
    -> baseline name -> its metrics.

    Returns one row per (setting, backbone, variant) with ``<metric>`` = mean and
    ``<metric>_std`` = sample std over seeds (NaN for one seed), then one row per baseline
    (train_percent empty: a baseline is not trained); every row has ``skill`` = 1 - mse /
    persistence's mse on the same (dataset, task), and ``beats_persistence``.

    Every metric of ``records`` and ``baselines`` must be a finite number (:func:`check_metrics`;
    NaN only where undefined by design): else one :class:`DataFileError` line naming the grid's
    path of its file, the key and the value.
    """
    from nuwa import grid

    for record in records:
        check_metrics(record, _record_source(record), required=())
    for (dataset, task), by_name in baselines.items():
        for name, metrics in by_name.items():
            check_metrics(metrics, grid.BASELINE.format(dataset=dataset, task=task, baseline=name), required=())
    frame = pd.DataFrame(records)
    metric_names = _metric_names(frame)
    rows = []
    for key, group in frame.groupby([*SETTING, "backbone", "variant"], sort=False):
        row = dict(zip((*SETTING, "backbone", "variant"), key))
        row.update(method=variant_methods.get(row["variant"], ""), seeds=len(group))
        for column in PERTURBATION:
            row[column] = float(group[column].mean()) if column in group else float("nan")
        for metric in metric_names:
            values = group[metric].to_numpy(dtype=float)
            row[metric] = float(np.mean(values))
            row[f"{metric}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
        rows.append(row)
    for (dataset, task), by_name in baselines.items():
        for name, metrics in by_name.items():
            row = {"dataset": dataset, "task": task, "train_percent": None, "backbone": name, "variant": "-",
                   "method": "baseline", "seeds": 0, **{column: float("nan") for column in PERTURBATION}}
            for metric in metric_names:
                row[metric] = float(metrics.get(metric, float("nan")))
                row[f"{metric}_std"] = float("nan")
            rows.append(row)
    summary = pd.DataFrame(rows)
    summary["train_percent"] = summary["train_percent"].astype("Int64")  # empty for the baselines
    reference = {key: float(by_name[REFERENCE]["mse"]) for key, by_name in baselines.items() if REFERENCE in by_name}
    persistence_mse = pd.Series([reference.get((d, t), np.nan) for d, t in zip(summary["dataset"], summary["task"])],
                                index=summary.index, dtype=float)
    summary["skill"] = 1.0 - summary["mse"] / persistence_mse
    summary["beats_persistence"] = summary["mse"] < persistence_mse
    ordered = [*KEYS, *PERTURBATION, "skill", "beats_persistence"]
    for metric in metric_names:
        ordered += [metric, f"{metric}_std"]
    return summary[ordered]


def comparison_table(losses: dict[tuple, object], comparisons: list[list[str]], blocks: dict[str, int], *,
                     metric: str = "mse", confidence: float, resamples: int, extreme_quantile: float) -> pd.DataFrame:
    """Paired differences A - B per (setting, backbone, comparison) and window set.

    ``losses``: (dataset, task, train_percent, backbone, variant, seed) -> a run's per-window test
    losses (:func:`nuwa.evaluate.evaluate_forecaster`); ``blocks``: dataset -> bootstrap block
    length in windows. Comparisons whose variants are not both in ``losses`` with a seed in common
    are left out. Window
    sets: ``all`` and ``extreme`` (the top 1 - ``extreme_quantile`` of the targets' mean intensity).
    """
    from nuwa.compare import compare_runs, extreme_windows

    cells: dict[tuple, dict] = {}  # (setting, backbone) -> variant -> seed -> losses, in the grid's order
    for key, value in losses.items():
        *group, variant, seed = key
        cells.setdefault(tuple(group), {}).setdefault(variant, {})[seed] = value
    rows = []
    for group, runs in cells.items():
        any_run = next(iter(next(iter(runs.values())).values()))
        extreme = extreme_windows(any_run, extreme_quantile)
        for a, b in comparisons:
            if a not in runs or b not in runs or not set(runs[a]) & set(runs[b]):
                continue  # a pair with no seed in common (a grid still running) has nothing to pair
            for windows, select in (("all", None), ("extreme", extreme)):
                result = compare_runs(runs[a], runs[b], metric=metric, block=blocks[group[0]], select=select,
                                      confidence=confidence, resamples=resamples)
                rows.append({**dict(zip(GROUP, group)), "comparison": f"{a} - {b}", "a": a, "b": b,
                             "metric": metric, "windows": windows, **result})
    if not rows:
        return pd.DataFrame(columns=list(COMPARISON_COLUMNS))
    return pd.DataFrame(rows)


def verdict_lines(comparisons: pd.DataFrame) -> pd.DataFrame:
    """Per (setting, comparison, window set): counts of better / worse / no detectable difference
    across backbones, a two-sided sign test and its Holm correction across the comparisons of
    that setting and window set."""
    from nuwa.compare import TOO_FEW, holm, sign_test

    rows = []
    for key, group in comparisons.groupby([*SETTING, "windows"], sort=False):
        setting = dict(zip((*SETTING, "windows"), key))
        tests = {}
        for comparison, part in group.groupby("comparison", sort=False):
            counts = part["verdict"].value_counts()
            better, worse = int(counts.get("better", 0)), int(counts.get("worse", 0))
            tests[comparison] = {**setting, "comparison": comparison, "better": better,
                                 "worse": worse, "no_difference": int(counts.get("no detectable difference", 0)),
                                 "too_few": int(counts.get(TOO_FEW, 0)),
                                 "sign_p": sign_test(better, worse)}
        adjusted = holm({name: row["sign_p"] for name, row in tests.items()})
        rows += [{**row, "sign_p_holm": adjusted[name]} for name, row in tests.items()]
    return pd.DataFrame(rows)


def _number(value, digits: int = 4) -> str:
    return "" if pd.isna(value) else f"{value:.{digits}g}"


def to_markdown(summary: pd.DataFrame, conventions: dict[str, str], comparisons: pd.DataFrame | None = None) -> str:
    metric_names = [c for c in summary.columns if c not in (*KEYS, *PERTURBATION, "skill", "beats_persistence")
                    and not c.endswith("_std")]
    verdicts = verdict_lines(comparisons) if comparisons is not None and len(comparisons) else pd.DataFrame()
    lines = []
    undefined = False
    runs = summary[summary["method"] != "baseline"]
    baselines = summary[summary["method"] == "baseline"]
    for (dataset, task, percent), trained in runs.groupby(list(SETTING), sort=False):
        group = pd.concat([trained, baselines[(baselines["dataset"] == dataset) & (baselines["task"] == task)]])
        in_setting = ((comparisons["dataset"] == dataset) & (comparisons["task"] == task)
                      & (comparisons["train_percent"] == percent)) if comparisons is not None and len(comparisons) \
            else None
        lines += [f"## {dataset}: {task}, {percent} % of the training windows", "",
                  "| backbone | variant | seeds | mix | changed | abs change | skill | "
                  + " | ".join(metric_names) + " |", "|---|---|---|---|---|---|---|" + "---|" * len(metric_names)]
        ori = group[group["method"] == "none"].set_index("backbone")["beats_persistence"].to_dict()
        for _, row in group.iterrows():
            cells = [_number(row[column], 3) for column in PERTURBATION]
            mark = " †" if row["method"] == "none" and not ori.get(row["backbone"], True) else ""
            cells.append(_number(row["skill"], 3) + mark)
            for metric in metric_names:
                mean, std = row[metric], row[f"{metric}_std"]
                if pd.isna(mean):  # never blank: an undefined FSS or a metric the file lacks (the note says)
                    cells.append(NOT_AVAILABLE)
                    undefined = True
                else:
                    cells.append(f"{mean:.4g}" if pd.isna(std) else f"{mean:.4g} ± {std:.2g}")
            lines.append(f"| {row['backbone']} | {row['variant']} | {row['seeds']} | " + " | ".join(cells) + " |")
        if not all(ori.values()):
            lines += ["", "† this backbone's Ori does not beat persistence here: a difference between its variants "
                          "says little about forecasting skill (README, 'Reading the comparisons')."]
        lines.append("")
        if in_setting is not None:
            part = comparisons[in_setting]
            if len(part):
                lines += ["| backbone | comparison (A - B, mse) | windows | seeds | mean difference | relative | "
                          "interval | verdict |", "|---|---|---|---|---|---|---|---|"]
                for _, row in part.iterrows():
                    lines.append(f"| {row['backbone']} | {row['comparison']} | {row['windows']} ({row['n_windows']}) | "
                                 f"{row['n_seeds']} | {_number(row['mean_difference'], 3)} | "
                                 f"{_number(100 * row['relative_difference'], 3)} % | "
                                 f"[{_number(row['low'], 3)}, {_number(row['high'], 3)}] | {row['verdict']} |")
                lines.append("")
                mine = ((verdicts["dataset"] == dataset) & (verdicts["task"] == task)
                        & (verdicts["train_percent"] == percent))
                for _, row in verdicts[mine].iterrows():
                    lines.append(f"- {row['comparison']}, {row['windows']} windows: better {row['better']}, worse "
                                 f"{row['worse']}, no detectable difference {row['no_difference']}, too few to tell "
                                 f"{row['too_few']} (across backbones; "
                                 f"sign test p = {row['sign_p']:.3g}, Holm {row['sign_p_holm']:.3g})")
                lines.append("")
    lines += ["## Conventions", ""] + [f"- `{name}`: {text}" for name, text in conventions.items()]
    lines.append("- `mix`: share of each training batch taken from the bank; `changed`: share of the bank's (step, "
                 "patch) cells whose bytes the augmentation changed; `abs change`: mean |augmented - original| over "
                 "the bank's pixels, in units of the training std.")
    lines.append("- `skill`: 1 - MSE / MSE of persistence on the same test windows (above 0: better than "
                 "persistence).")
    lines.append("- comparisons: A - B of the per-window test MSE, paired on seeds and test windows; the interval "
                 "resamples seeds and contiguous blocks of test windows (nuwa/compare.py); `better`: the whole "
                 "interval below 0 (A has the lower error), `worse`: above 0; no verdict with fewer than "
                 "five independent units (seeds x whole blocks of windows).")
    lines.append("- lower is better for mse/mae; higher is better for ssim, psnr, csi, fss. "
                 "Values are means over seeds, ± the sample standard deviation when there are several.")
    if undefined:
        lines.append(f"- {NOT_AVAILABLE_NOTE}")
    return "# NuwaDynamics results (test split)\n\n" + "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# What DVC compares (`dvc metrics show`, `dvc exp show`, `dvc metrics diff`, `dvc plots`)

#: The few metrics per row that DVC compares (means over seeds); the rest are in summary.csv.
HEADLINE = ("mse", "mae", "csi_m")
#: At most this many points per training-loss curve in the loss plot (means over equal step bins).
LOSS_POINTS = 100


def _rounded(value) -> float | None:
    return None if value is None or pd.isna(value) else float(f"{float(value):.6g}")


def compact_metrics(summary: pd.DataFrame, comparisons: pd.DataFrame) -> tuple[dict[tuple, dict], dict[tuple, dict]]:
    """The rows DVC compares, one small dict per (setting, backbone, variant) and per baseline.

    One file per row (the caller writes them) because `dvc metrics show` prints one row per file
    with a column per key: a few keys per file keep that table as narrow as the summary, where one
    nested file would be a single row of hundreds of columns. A trained row holds :data:`HEADLINE`
    (means over seeds) and, per comparison it is the A of, ``vs_<B>``: its MSE change against B
    on all test windows in % of B's mean MSE, with the interval in the same units.

    Returns (trained, baselines): (dataset, task, train_percent, backbone, variant) and
    (dataset, task, baseline) -> {key: value}; NaN values are left out.
    """
    trained, baselines = {}, {}
    for _, row in summary.iterrows():
        values = {metric: _rounded(row.get(metric)) for metric in HEADLINE}
        values = {key: value for key, value in values.items() if value is not None}
        if row["method"] == "baseline":
            baselines[(row["dataset"], row["task"], row["backbone"])] = values
        else:
            trained[(row["dataset"], row["task"], int(row["train_percent"]), row["backbone"], row["variant"])] = values
    if len(comparisons):
        for _, row in comparisons[(comparisons["windows"] == "all") & (comparisons["metric"] == "mse")].iterrows():
            key = (row["dataset"], row["task"], int(row["train_percent"]), row["backbone"], row["a"])
            if key not in trained:
                continue
            scale = 100.0 / row["mean_b"] if row["mean_b"] else float("nan")
            change = {"mse_pct": _rounded(100.0 * row["relative_difference"]),
                      "mse_pct_low": _rounded(row["low"] * scale), "mse_pct_high": _rounded(row["high"] * scale)}
            trained[key][f"vs_{row['b']}"] = {k: v for k, v in change.items() if v is not None}
    return trained, baselines


def loss_curves(histories: dict[tuple, pd.DataFrame], points: int = LOSS_POINTS) -> pd.DataFrame:
    """Training and validation loss against step, means over seeds, in long form for DVC's
    overlay of the variants: columns dataset, task, train_percent, backbone, variant, curve
    (train | validation), step, loss.

    ``histories``: a run's grid axes (dataset, task, train_percent, backbone, variant, seed) -> its
    history.csv. The training loss is also averaged within at most ``points`` equal bins of steps
    (each point at its bin's last step): a long run's per-step loss is noise at page scale and a
    file that git versions; validation losses are kept at every evaluation step.
    """
    columns = [*GROUP, "variant", "curve", "step", "loss"]
    if not histories:
        return pd.DataFrame(columns=columns)
    frame = pd.concat([history[["step", "train_loss", "val_loss"]].assign(**dict(zip((*GROUP, "variant", "seed"), key)))
                       for key, history in histories.items()], ignore_index=True)
    mean = frame.groupby([*GROUP, "variant", "step"], sort=False)[["train_loss", "val_loss"]].mean().reset_index()
    parts = []
    for _, curve in mean.groupby([*GROUP, "variant"], sort=False):
        curve = curve.sort_values("step")
        bins = np.arange(len(curve)) * min(points, len(curve)) // len(curve)
        train = curve.groupby(bins).agg({**{c: "first" for c in (*GROUP, "variant")}, "step": "last",
                                         "train_loss": "mean"}).rename(columns={"train_loss": "loss"})
        validation = curve[curve["val_loss"].notna()].drop(columns="train_loss").rename(columns={"val_loss": "loss"})
        parts += [train.assign(curve="train"), validation.assign(curve="validation")]
    return pd.concat(parts, ignore_index=True)[columns]


def lead_time_curves(lead_time: pd.DataFrame, metrics: tuple[str, ...] = ("mse", "mae")) -> pd.DataFrame:
    """Test metrics per lead time, means over seeds, in long form for DVC's overlay of the
    variants: columns dataset, task, train_percent, backbone, variant, curve (trained | baseline),
    lead and ``metrics``. ``lead_time``: the tables stage's lead_time.csv, where a baseline's row
    has its name as the backbone and '-' for train_percent, variant and seed; a baseline is drawn
    in every (train percent, backbone) panel of its (dataset, task)."""
    columns = [*GROUP, "variant", "curve", "lead", *metrics]
    baseline = lead_time["variant"] == "-"
    trained = (lead_time[~baseline].astype({"train_percent": int})
               .groupby([*GROUP, "variant", "lead"], sort=False)[list(metrics)].mean().reset_index()
               .assign(curve="trained"))
    panels = trained[list(GROUP)].drop_duplicates()
    references = (lead_time[baseline].drop(columns=["train_percent", "variant", "seed"])
                  .rename(columns={"backbone": "variant"})[["dataset", "task", "variant", "lead", *metrics]]
                  .merge(panels, on=["dataset", "task"]).assign(curve="baseline"))
    return pd.concat([trained, references], ignore_index=True)[columns]
