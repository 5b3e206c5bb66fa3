"""Saliency diagnostics: what the method calls environmental, and whether that is stable.

The saliency stage calls the ``⌊ρ·L⌋`` least important patches of each step *environmental*
(:func:`nuwa.saliency.causal_mask`). These diagnostics compare that choice with two plain,
model-free measures of where the signal is, per patch of each input step:

- **anomaly**: the mean, over the patch's pixels and channels, of ``|x − clim|``, where
  ``clim`` (C, H, W) is the training split's per-pixel temporal mean (:func:`training_climatology`);
- **change**: the mean over the patch of ``|x_t − x_{t−1}|``; step 0 has no previous frame in
  the window and takes ``|x_1 − x_0|`` (its value equals step 1's).

and report, for one set of windows and one importance:

- ``overlap_anomaly`` / ``overlap_change`` (:func:`overlap`): the share of the ``k`` highest-score
  patches of each step that are environmental, averaged over windows and steps, with
  ``k = ⌊ρ·L⌋`` (:func:`nuwa.saliency.environment_count`). A mask that knows nothing of the
  field scores ``chance = ⌊ρ·L⌋ / L`` (ρ when ρ·L is a whole number); 1 means the
  environmental patches *are* the largest anomalies (or changes);
- ``spearman_anomaly`` / ``spearman_change`` (:func:`step_spearman`): Spearman's rank correlation
  of importance with the score across the patches of one (window, step), averaged over
  (window, step); a step where the importance or the score is constant has no correlation and is
  skipped (``spearman_*_skipped`` of ``spearman_steps``);
- ``causal_empty_share`` (:func:`empty_share`): the share of causal patches that are *empty*,
  a patch being empty when its anomaly is at or below the median patch anomaly of its own
  (window, step) (so a flat background that fills most of a step is empty, all of it).
  ``empty_chance`` is the share of all patches that are empty by the same rule (about 0.5; more
  where many patches tie at the median), what a mask independent of the field scores;
- :func:`mask_iou` compares two masks: the intersection over union of their environmental sets
  per (window, step), averaged (two empty sets count 1); two unrelated random masks score
  ``iou_chance`` (:func:`iou_chance`, 0.14 for 16 of 64 patches).

The core (everything above :func:`diagnose`) needs numpy and scipy only. :func:`diagnose` pretrains
upstream ViTs in process (torch) for several objectives, seeds and layer choices and returns one
row per (objective, layers); nothing is written to disk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from nuwa.saliency import causal_mask, environment_count

if TYPE_CHECKING:
    import pandas as pd

    from nuwa.windows import SeriesData

DEFAULT_OBJECTIVES = ("reconstruct", "masked", "next_frame")


# ---------------------------------------------------------------------------------------------
# per-patch scores


def patch_mean(values: np.ndarray, patch_size: int) -> np.ndarray:
    """(..., C, H, W) -> (..., H/p, W/p): the mean over each p × p patch and the channels.

    The patch grid is row-major (patch_y, patch_x), as the upstream ViT and the saliency file order it.
    """
    values = np.asarray(values)
    *lead, channels, height, width = values.shape
    p = int(patch_size)
    if p <= 0 or height % p or width % p:
        raise ValueError(f"patch size {p} does not divide the field's {height} x {width}")
    blocks = values.reshape(*lead, channels, height // p, p, width // p, p)
    return blocks.mean(axis=(-5, -3, -1), dtype=np.float64)


def training_climatology(series: SeriesData) -> np.ndarray:
    """(C, H, W): the per-pixel temporal mean of the field over the training split's time steps."""
    from nuwa.ingest import SPLIT_CODES

    train = np.flatnonzero(series.split == SPLIT_CODES["train"])
    if train.size == 0:
        raise ValueError(f"dataset {series.name!r}: the training split is empty")
    return series.field[train].mean(axis=0, dtype=np.float64)


def patch_anomaly(windows: np.ndarray, climatology: np.ndarray, patch_size: int) -> np.ndarray:
    """(N, T, C, H, W) -> (N, T, Py, Px): the patch mean of ``|x − climatology|`` (C, H, W)."""
    windows = np.asarray(windows)
    climatology = np.asarray(climatology, dtype=np.float64)
    if windows.ndim != 5 or climatology.shape != windows.shape[2:]:
        raise ValueError(f"windows must be (N, T, C, H, W) and the climatology (C, H, W); got {windows.shape} "
                         f"and {climatology.shape}")
    return patch_mean(np.abs(windows - climatology), patch_size)


def patch_change(windows: np.ndarray, patch_size: int) -> np.ndarray:
    """(N, T, C, H, W) -> (N, T, Py, Px): the patch mean of ``|x_t − x_{t−1}|``; step 0 takes ``|x_1 − x_0|``."""
    windows = np.asarray(windows)
    if windows.ndim != 5 or windows.shape[1] < 2:
        raise ValueError(f"windows must be (N, T, C, H, W) with T >= 2 to have a temporal change; got {windows.shape}")
    change = patch_mean(np.abs(np.diff(windows, axis=1)), patch_size)  # steps 1..T-1
    return np.concatenate([change[:, :1], change], axis=1)


# ---------------------------------------------------------------------------------------------
# mask against score


def _flat(values: np.ndarray) -> np.ndarray:
    """(N, T, Py, Px) -> (N·T, L); a (..., L) array keeps its last axis."""
    values = np.asarray(values)
    if values.ndim == 4:
        return values.reshape(-1, values.shape[-2] * values.shape[-1])
    return values.reshape(-1, values.shape[-1])


def environmental(importance: np.ndarray, ratio: float) -> np.ndarray:
    """Boolean (same shape as ``importance`` (N, T, Py, Px)): the ⌊ρ·L⌋ least important patches of each step.

    Exactly the bank's choice: ``nuwa.saliency.causal_mask(...) == 0`` over the flattened patch grid.
    """
    importance = np.asarray(importance)
    flat = importance.reshape(*importance.shape[:-2], -1)
    return (causal_mask(flat, ratio) == 0).reshape(importance.shape)


def top_k(score: np.ndarray, k: int) -> np.ndarray:
    """Boolean (N·T, L): the ``k`` highest scores of each row (ties broken by patch order)."""
    score = _flat(score)
    order = np.argsort(-score, axis=-1, kind="stable")
    chosen = np.zeros(score.shape, dtype=bool)
    np.put_along_axis(chosen, order[:, :k], True, axis=-1)
    return chosen


def overlap(mask_env: np.ndarray, score: np.ndarray, k: int | None = None) -> float:
    """The share of the ``k`` highest-score patches of each step that are environmental, averaged.

    ``mask_env``: boolean (N, T, Py, Px) (or (..., L)), True = environmental; ``score``: the same
    shape. ``k`` defaults to the number of environmental patches per step (⌊ρ·L⌋ for a mask of
    :func:`environmental`), which must then be the same in every step. A mask independent of the
    score has expected overlap ``m / L`` for ``m`` environmental patches per step.
    """
    env = _flat(mask_env).astype(bool)
    score = _flat(score)
    if env.shape != score.shape:
        raise ValueError(f"mask {np.shape(mask_env)} and score {np.shape(score)} differ in shape")
    if k is None:
        counts = np.unique(env.sum(axis=-1))
        if counts.size != 1:
            raise ValueError(f"the mask has {counts.tolist()} environmental patches per step: pass k")
        k = int(counts[0])
    if not 0 < k <= env.shape[-1]:
        raise ValueError(f"k = {k} must be between 1 and the {env.shape[-1]} patches of a step")
    hits = (top_k(score, k) & env).sum(axis=-1)
    return float(np.mean(hits / k))


def step_spearman(importance: np.ndarray, score: np.ndarray) -> tuple[float, int, int]:
    """Spearman's ρ of importance with score across the patches of each (window, step), averaged.

    Returns ``(mean, skipped, steps)``: steps whose importance or score is constant (no rank
    correlation defined) are skipped and counted; the mean is NaN if every step was skipped.
    Per step this is ``scipy.stats.spearmanr`` (Pearson's r of average ranks), computed for all
    steps at once.
    """
    from scipy.stats import rankdata

    a, b = _flat(importance).astype(np.float64), _flat(score).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"importance {np.shape(importance)} and score {np.shape(score)} differ in shape")
    valid = (np.ptp(a, axis=-1) > 0) & (np.ptp(b, axis=-1) > 0)
    steps, skipped = len(a), int((~valid).sum())
    if not valid.any():
        return float("nan"), skipped, steps
    ra, rb = rankdata(a[valid], axis=-1), rankdata(b[valid], axis=-1)
    ra -= ra.mean(axis=-1, keepdims=True)
    rb -= rb.mean(axis=-1, keepdims=True)
    r = (ra * rb).sum(axis=-1) / np.sqrt((ra * ra).sum(axis=-1) * (rb * rb).sum(axis=-1))
    return float(np.mean(np.clip(r, -1.0, 1.0))), skipped, steps


def empty_share(mask_env: np.ndarray, anomaly: np.ndarray) -> tuple[float, float]:
    """``(causal_empty_share, empty_chance)``.

    A patch is *empty* when its anomaly is at or below the median patch anomaly of its own
    (window, step): ties at the median (a flat background filling most of the step) are empty.
    ``causal_empty_share``: the share of causal (not environmental) patches that are empty, over
    all windows and steps; ``empty_chance``: the share of all patches that are empty (what a mask
    independent of the field scores).
    """
    env = _flat(mask_env).astype(bool)
    anomaly = _flat(anomaly)
    empty = anomaly <= np.median(anomaly, axis=-1, keepdims=True)
    causal = ~env
    share = float(empty[causal].mean()) if causal.any() else float("nan")
    return share, float(empty.mean())


def mask_iou(env_a: np.ndarray, env_b: np.ndarray) -> float:
    """Intersection over union of the environmental sets of two masks per (window, step), averaged.

    Boolean masks of one shape (True = environmental); two empty sets count as identical (1).
    """
    a, b = _flat(env_a).astype(bool), _flat(env_b).astype(bool)
    if a.shape != b.shape:
        raise ValueError(f"masks {np.shape(env_a)} and {np.shape(env_b)} differ in shape")
    union = (a | b).sum(axis=-1)
    inter = (a & b).sum(axis=-1)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return float(iou.mean())


def iou_chance(patches: int, k: int) -> float:
    """The expected IoU of two independent uniformly random ``k``-sets of ``patches``: the seed-IoU a mask
    that carries nothing stable would score (``i`` shared of ``k``: ``i / (2k − i)``, ``i`` hypergeometric)."""
    from scipy.stats import hypergeom

    if k <= 0:
        return 1.0
    shared = np.arange(0, k + 1)
    probability = hypergeom.pmf(shared, patches, k, k)
    return float(np.sum(probability * shared / (2 * k - shared)))


def diagnose_importance(windows: np.ndarray, climatology: np.ndarray, importance: np.ndarray, patch_size: int,
                        ratio: float) -> dict:
    """The diagnostics of one importance (N, T, Py, Px) on its physical-unit windows (N, T, C, H, W).

    ``climatology``: (C, H, W), the training split's per-pixel temporal mean. Returns a dict:
    ``windows``, ``steps``, ``patches`` (L), ``ratio``, ``k`` (⌊ρ·L⌋), ``chance`` (k / L),
    ``iou_chance`` (:func:`iou_chance`: the mask IoU of two random masks),
    ``overlap_anomaly``, ``overlap_change``, ``spearman_anomaly``, ``spearman_change``,
    ``spearman_steps``, ``spearman_anomaly_skipped``, ``spearman_change_skipped``,
    ``causal_empty_share``, ``empty_chance`` (definitions: the module's docstring).
    """
    windows = np.asarray(windows)
    importance = np.asarray(importance)
    if windows.ndim != 5 or importance.ndim != 4 or importance.shape[:2] != windows.shape[:2]:
        raise ValueError(f"windows (N, T, C, H, W) {windows.shape} and importance (N, T, Py, Px) "
                         f"{importance.shape} do not match")
    anomaly = patch_anomaly(windows, climatology, patch_size)
    change = patch_change(windows, patch_size)
    if anomaly.shape != importance.shape:
        raise ValueError(f"importance has patch grid {importance.shape[2:]}, patch size {patch_size} on "
                         f"{windows.shape[3:]} gives {anomaly.shape[2:]}")
    patches = importance.shape[2] * importance.shape[3]
    k = environment_count(patches, ratio)
    if k == 0:
        raise ValueError(f"ratio {ratio} of {patches} patches leaves no environmental patch (⌊ρ·L⌋ = 0)")
    env = environmental(importance, ratio)
    rho_anomaly, skipped_anomaly, steps = step_spearman(importance, anomaly)
    rho_change, skipped_change, _ = step_spearman(importance, change)
    causal_empty, empty_chance = empty_share(env, anomaly)
    return {
        "windows": int(windows.shape[0]), "steps": int(windows.shape[1]), "patches": int(patches),
        "ratio": float(ratio), "k": int(k), "chance": k / patches, "iou_chance": iou_chance(patches, k),
        "overlap_anomaly": overlap(env, anomaly, k), "overlap_change": overlap(env, change, k),
        "spearman_anomaly": rho_anomaly, "spearman_change": rho_change, "spearman_steps": int(steps),
        "spearman_anomaly_skipped": int(skipped_anomaly), "spearman_change_skipped": int(skipped_change),
        "causal_empty_share": causal_empty, "empty_chance": empty_chance,
    }


# ---------------------------------------------------------------------------------------------
# driver: pretrain in process, for objectives x seeds x layer choices

AVERAGED = ("overlap_anomaly", "overlap_change", "spearman_anomaly", "spearman_change", "causal_empty_share",
            "empty_chance", "final_loss")
SUMMED = ("spearman_steps", "spearman_anomaly_skipped", "spearman_change_skipped")
COLUMNS = ("dataset", "objective", "layers", "seeds", "pretrain_steps", "windows", "steps", "patches", "ratio", "k",
           "chance", "overlap_anomaly", "overlap_anomaly_sd", "overlap_change", "overlap_change_sd",
           "spearman_anomaly", "spearman_change", "spearman_steps", "spearman_anomaly_skipped",
           "spearman_change_skipped", "causal_empty_share", "empty_chance", "seed_iou", "iou_chance", "final_loss",
           "seconds")
PER_SEED_COLUMNS = ("dataset", "objective", "layers", "seed", "pretrain_steps", "windows", "steps", "patches", "ratio",
                    "k", "chance", "overlap_anomaly", "overlap_change", "spearman_anomaly", "spearman_change",
                    "spearman_steps", "spearman_anomaly_skipped", "spearman_change_skipped", "causal_empty_share",
                    "empty_chance", "final_loss", "seconds")


def layers_label(layers: Iterable[int]) -> str:
    """``[-1]`` -> ``"-1"``, ``[0, 1]`` -> ``"0,1"``: the layer choice as the table writes it."""
    return ",".join(str(int(layer)) for layer in layers)


def diagnose(series: SeriesData, dataset_name: str, dataset_config: dict, pretrain_config: dict,
             objectives: Sequence[str] = DEFAULT_OBJECTIVES, seeds: Sequence[int] = (0, 1),
             layer_choices: Sequence[Sequence[int]] = ([-1],), ratio: float = 0.25, steps: int | None = None,
             batch_size: int = 64, climatology: np.ndarray | None = None) -> pd.DataFrame:
    """The table of :func:`diagnose_tables` (one row per (objective, layers), means over seeds)."""
    return diagnose_tables(series, dataset_name, dataset_config, pretrain_config, objectives, seeds, layer_choices,
                           ratio, steps, batch_size, climatology)[0]


def diagnose_tables(series: SeriesData, dataset_name: str, dataset_config: dict, pretrain_config: dict,
                    objectives: Sequence[str] = DEFAULT_OBJECTIVES, seeds: Sequence[int] = (0, 1),
                    layer_choices: Sequence[Sequence[int]] = ([-1],), ratio: float = 0.25, steps: int | None = None,
                    batch_size: int = 64, climatology: np.ndarray | None = None
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(table, per_seed)``: :func:`diagnose_importance` on the training windows, per (objective, layers).

    ``table`` has one row per (objective, layers), averaged over seeds; ``per_seed`` one row per
    (objective, layers, seed).

    For each objective and seed, an upstream ViT is pretrained in process
    (:func:`nuwa.pretrain.pretrain` with a copy of ``pretrain_config`` whose ``objective`` is
    that objective, and ``steps`` if given) and its importance computed on the training
    windows (:func:`nuwa.saliency.compute_importance`, ``batch_size`` windows a batch) for each
    layer choice. Columns: :data:`COLUMNS`; the numbers are means over the seeds (the counts of
    skipped steps are sums), ``*_sd`` their standard deviation over seeds (ddof 1; NaN for one
    seed), ``seed_iou`` the :func:`mask_iou` of the environmental masks of the first two seeds
    (NaN for one seed), ``final_loss`` the last pretraining loss, ``seconds`` the wall time of
    pretraining plus saliency, summed over seeds. ``per_seed``: the same numbers unaveraged, one
    row per (objective, layers, seed) (:data:`PER_SEED_COLUMNS`). ``climatology`` (C, H, W): what
    the anomaly is measured against, by default :func:`training_climatology`. Nothing is written.
    """
    import time

    import pandas as pd

    from nuwa.pretrain import pretrain
    from nuwa.saliency import compute_importance
    from nuwa.windows import select_dataset

    seeds = [int(seed) for seed in seeds]
    if not seeds:
        raise ValueError("diagnose: give at least one seed")
    layer_choices = [[int(layer) for layer in layers] for layers in layer_choices]
    if not layer_choices or not all(layer_choices):
        raise ValueError(f"diagnose: layer_choices must be non-empty lists of block indices, got {layer_choices}")
    layer_choices = list({layers_label(layers): layers for layers in layer_choices}.values())  # once each
    train = select_dataset(series, dataset_config, "train")
    if len(train) == 0:
        raise ValueError(f"dataset {dataset_name!r}: no training window fits in the training split")
    windows = train.inputs(train.starts)
    climatology = training_climatology(series) if climatology is None else np.asarray(climatology)
    patch_size = int(dataset_config["patch_size"])
    records, rows = [], []
    for objective in objectives:
        config = {**pretrain_config, "objective": objective}
        if steps is not None:
            config["steps"] = int(steps)
        results: dict[str, list[dict]] = {layers_label(layers): [] for layers in layer_choices}
        masks: dict[str, list[np.ndarray]] = {layers_label(layers): [] for layers in layer_choices}
        for seed in seeds:
            started = time.perf_counter()
            model, history = pretrain(series, dataset_name, dataset_config, config, seed)
            pretrain_seconds = time.perf_counter() - started
            for layers in layer_choices:
                label = layers_label(layers)
                started = time.perf_counter()
                _, importance = compute_importance(model, train, layers, batch_size, dataset_name)
                numbers = diagnose_importance(windows, climatology, importance, patch_size, ratio)
                numbers["final_loss"] = float(history["loss"].iloc[-1])
                numbers["seconds"] = pretrain_seconds + time.perf_counter() - started
                results[label].append(numbers)
                records.append({"dataset": dataset_name, "objective": objective, "layers": label, "seed": seed,
                                "pretrain_steps": int(config["steps"]), **numbers})
                if len(masks[label]) < 2:
                    masks[label].append(environmental(importance, ratio))
        for label, runs in results.items():
            first = runs[0]
            row = {"dataset": dataset_name, "objective": objective, "layers": label,
                   "seeds": ",".join(map(str, seeds)), "pretrain_steps": int(config["steps"])}
            row.update({key: first[key] for key in ("windows", "steps", "patches", "ratio", "k", "chance",
                                                     "iou_chance")})
            for key in AVERAGED:
                values = [r[key] for r in runs]
                row[key] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
            for key in SUMMED:
                row[key] = int(sum(r[key] for r in runs))
            for key in ("overlap_anomaly", "overlap_change"):
                values = [r[key] for r in runs]
                row[f"{key}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
            pair = masks[label]
            row["seed_iou"] = mask_iou(pair[0], pair[1]) if len(pair) > 1 else float("nan")
            row["seconds"] = float(sum(r["seconds"] for r in runs))
            rows.append(row)
    return pd.DataFrame(rows, columns=list(COLUMNS)), pd.DataFrame(records, columns=list(PER_SEED_COLUMNS))


def add_masks_in_use(table: pd.DataFrame, windows: np.ndarray, climatology: np.ndarray, importance: np.ndarray, *,
                     dataset_name: str, patch_size: int, ratio: float, pretrain_config: dict, layers: Sequence[int],
                     source: str) -> pd.DataFrame:
    """``table`` (:func:`diagnose_tables`' rows, marked ``masks = "pretrained here"``) and a last
    row for the masks the banks use: :func:`diagnose_importance` of the saliency file's
    ``importance`` (from ``source``) on the training ``windows``, labelled with the pipeline's
    upstream objective, seed and layers."""
    import pandas as pd

    row = diagnose_importance(windows, climatology, importance, patch_size, ratio)
    row.update(dataset=dataset_name, masks=f"in use ({source})", objective=pretrain_config["objective"],
               layers=layers_label(layers), seeds=str(pretrain_config["seed"]), pretrain_steps=pretrain_config["steps"])
    table = table.copy()
    table.insert(1, "masks", "pretrained here")
    return pd.concat([table, pd.DataFrame([row])], ignore_index=True)
