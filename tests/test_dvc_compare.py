"""What DVC shows a researcher: compact metrics that git versions (`dvc metrics show / diff`,
`dvc exp show`), top-level plots that overlay the variants, and a plots page that draws offline.

The DVC checks run on a small fixture result tree (the tiny grid's runs and baselines, made up,
in the files' real formats) that the real `nuwa tables` turns into the compared files, in a
temporary git + DVC repository with two commits: seconds, no training.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml

from conftest import REPO, TINY_PARAMS, tool_env
from nuwa import grid
from nuwa.stages import PLOTS, STAGES, metrics_files
from nuwa.tables import HEADLINE, lead_time_curves, loss_curves

STEPS, EVAL_EVERY, WINDOWS = 40, 10, 24
NUWA = "results/metrics/moving_glyphs/forecast/100pct/simvp/nuwa.json"


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def _losses(rng, leads: int, offset: float) -> xr.Dataset:
    mse = 1.0 + offset + 0.05 * rng.standard_normal((WINDOWS, leads)) + 0.1 * np.arange(leads)
    targets = np.linspace(0.0, 1.0, WINDOWS)  # the same test windows for every run
    return xr.Dataset({"mse": (("window", "lead"), mse), "mae": (("window", "lead"), np.sqrt(mse)),
                       "target_mean": ("window", targets), "target_max": ("window", targets)},
                      coords={"source_index": ("window", np.arange(WINDOWS) * 2), "lead": np.arange(1, leads + 1)})


def _history(rng, offset: float) -> pd.DataFrame:
    step = np.arange(1, STEPS + 1)
    train = 1.0 + offset + np.exp(-step / 10) + 0.02 * rng.standard_normal(STEPS)
    val = np.where(step % EVAL_EVERY == 0, train + 0.05, np.nan)
    return pd.DataFrame({"step": step, "train_loss": train, "learning_rate": 1e-3, "val_loss": val,
                         "seconds": step * 0.1})


def fixture_results(directory: Path, params: dict) -> None:
    """Every file `nuwa tables` reads for the grid of ``params`` (runs and baselines) and the
    upstream's history (the other plot), made up."""
    rng = np.random.default_rng(0)
    offsets = {"ori": 0.0, "nuwa": -0.2, "random": 0.1}
    for cell in grid.train_cells(params):
        leads = params["datasets"][cell.dataset]["output_frames"]
        folder = directory / cell.run_dir
        folder.mkdir(parents=True)
        losses = _losses(rng, leads, offsets.get(cell.variant, 0.0))
        losses.to_netcdf(folder / "test_losses.nc")
        _history(rng, offsets.get(cell.variant, 0.0)).to_csv(folder / "history.csv", index=False)
        mse = float(losses["mse"].mean())
        (folder / "metrics.json").write_text(json.dumps({
            "mse": mse, "mae": float(losses["mae"].mean()), "ssim": 0.5, "csi_0.5": 0.3, "csi_m": 0.3,
            "mix_fraction": 0.0 if cell.variant == "ori" else 0.5, "bank_changed_cell_fraction": 0.1,
            "bank_mean_abs_change": 0.2, "never_observed_masked": False, "seed": cell.seed}))
    for dataset in params["grid"]["datasets"]:
        leads = params["datasets"][dataset]["output_frames"]
        upstream = directory / grid.UPSTREAM_HISTORY.format(dataset=dataset)
        upstream.parent.mkdir(parents=True)
        _history(rng, 0.0)[["step", "train_loss", "seconds"]].rename(columns={"train_loss": "loss"}).to_csv(
            upstream, index=False)
        for task in params["grid"]["tasks"]:
            for index, name in enumerate(params["grid"]["baselines"]):
                path = directory / grid.BASELINE.format(dataset=dataset, task=task, baseline=name)
                path.parent.mkdir(parents=True, exist_ok=True)
                losses = _losses(rng, leads, 0.5 + index)
                losses.to_netcdf(directory / grid.BASELINE_LOSSES.format(dataset=dataset, task=task, baseline=name))
                path.write_text(json.dumps({"mse": float(losses["mse"].mean()), "mae": float(losses["mae"].mean()),
                                            "ssim": 0.2, "csi_m": 0.1, "never_observed_masked": False}))


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> Path:
    """A git + DVC repository holding the workflow's DVC files and the tiny grid's compared
    files from `nuwa tables`, committed twice (the second commit changes one cell's MSE)."""
    directory = tmp_path_factory.mktemp("compared")
    params = yaml.safe_load(TINY_PARAMS.read_text())
    shutil.copy(TINY_PARAMS, directory / "params.yaml")
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, directory / name)
    fixture_results(directory, params)
    stale = directory / grid.METRICS_DIR / grid.BASELINE_METRICS.format(dataset="gone", task="forecast",
                                                                        baseline="persistence")
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")  # a row of an earlier grid: the stage removes it
    run(["nuwa", "tables"], directory)
    run(["git", "init", "-q"], directory)
    run(["dvc", "init", "-q"], directory)
    shutil.copy(REPO / ".dvc" / "config", directory / ".dvc" / "config")
    shutil.copytree(REPO / ".dvc" / "plots", directory / ".dvc" / "plots")
    commit = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org", "commit", "-q", "-m"]
    run(["git", "add", "-A"], directory)
    run([*commit, "first"], directory)
    nuwa = json.loads((directory / NUWA).read_text())
    (directory / NUWA).write_text(json.dumps({**nuwa, "mse": round(nuwa["mse"] * 0.9, 6)}))
    run([*commit, "second", "-a"], directory)
    return directory


def test_the_compared_files_are_versioned_by_git_and_the_rest_of_results_is_not():
    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0

    for path in (grid.SUMMARY_CSV, grid.SUMMARY_MD, grid.COMPARISONS_CSV, grid.LEAD_TIME_CSV, grid.LOSS_PLOT,
                 grid.LEAD_TIME_PLOT, f"{grid.METRICS_DIR}/{grid.CELL_METRICS}", f"{grid.METRICS_DIR}/x.json"):
        assert not ignored(path), f"{path} is git-ignored: `dvc metrics diff` / `dvc exp show` cannot read past commits"
    for path in ("results/runs/d/forecast/100pct/simvp/ori/seed0/metrics.json", grid.BANK, grid.PARAMS_OK,
                 "data/processed/d.nc", "dvc_plots/index.html"):
        assert ignored(path), path


def test_the_tables_stage_writes_one_small_metrics_file_per_summary_row(compared):
    params = yaml.safe_load(TINY_PARAMS.read_text())
    written = {str(p.relative_to(compared)) for p in (compared / grid.METRICS_DIR).rglob("*") if p.is_file()}
    assert written == set(metrics_files(params))  # what Snakemake is told the folder holds
    for path in written:
        values = json.loads((compared / path).read_text())
        assert "conventions" not in values
        assert set(values) - set(HEADLINE) <= {f"vs_{b}" for _, b in params["evaluation"]["comparisons"]}, path
    nuwa = json.loads((compared / NUWA).read_text())
    assert set(nuwa) == {*HEADLINE, "vs_ori", "vs_random"}
    assert set(nuwa["vs_ori"]) == {"mse_pct", "mse_pct_low", "mse_pct_high"}
    assert nuwa["vs_ori"]["mse_pct_low"] <= nuwa["vs_ori"]["mse_pct"] <= nuwa["vs_ori"]["mse_pct_high"] < 0
    # the summary, which every row's numbers come from, states the conventions once
    assert (compared / grid.SUMMARY_MD).read_text().count("## Conventions") == 1


def test_the_tables_stage_empties_no_folder_but_a_metrics_one(compared, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    outputs = [f"--out-{name}={tmp_path / 'out' / name}" for name in ("csv", "md", "comparisons", "lead-time")]
    result = subprocess.run(["nuwa", "tables", *outputs, f"--out-metrics={tmp_path}"], cwd=compared, env=tool_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "--out-metrics" in result.stderr and (tmp_path / "notes.txt").exists()


def test_dvc_metrics_show_is_a_narrow_table_with_a_row_per_summary_row(compared):
    lines = run(["dvc", "metrics", "show"], compared).stdout.splitlines()
    assert lines[0].split() == ["Path", *sorted(HEADLINE), "vs_ori.mse_pct", "vs_ori.mse_pct_high",
                                "vs_ori.mse_pct_low", "vs_random.mse_pct", "vs_random.mse_pct_high",
                                "vs_random.mse_pct_low"]
    assert len(lines) == 1 + len(metrics_files(yaml.safe_load(TINY_PARAMS.read_text())))
    assert max(map(len, lines)) < 240


def test_dvc_metrics_diff_and_exp_show_compare_commits_by_readable_keys(compared):
    diff = json.loads(run(["dvc", "metrics", "diff", "HEAD~1", "HEAD", "--json"], compared).stdout)
    assert list(diff) == [NUWA] and list(diff[NUWA]) == ["mse"]
    assert diff[NUWA]["mse"]["new"] == pytest.approx(0.9 * diff[NUWA]["mse"]["old"], rel=1e-5)
    rows = json.loads(run(["dvc", "exp", "show", "--json"], compared).stdout)
    head = next(row for row in rows if row["rev"] != "workspace")
    metrics = head["data"]["metrics"]  # the commit's row: its metrics read from git, not '!'
    assert NUWA in metrics and metrics[NUWA]["data"]["vs_ori"]["mse_pct"] < 0

    def columns(node) -> int:
        return sum(columns(value) for value in node.values()) if isinstance(node, dict) else 1

    # 6 cells x 3 headline metrics, 2 comparisons x 3 for each of the 2 nuwa cells, 2 baselines x 3
    assert sum(columns(entry["data"]) for entry in metrics.values()) == 6 * 3 + 2 * 2 * 3 + 2 * 3


def _plots_json(directory: Path) -> dict:
    return json.loads(run(["dvc", "plots", "show", "--json"], directory).stdout)


def test_top_level_plots_overlay_the_variants_with_train_and_validation_loss(compared):
    shown = _plots_json(compared)
    assert not shown.get("errors"), shown["errors"]
    for plot in PLOTS:
        assert plot.name in shown["data"], plot.name
    loss = shown["data"]["loss"][0]
    spec = loss["content"]
    points = spec["data"]["values"]
    assert {p["variant"] for p in points} == {"ori", "nuwa", "random"}
    assert {p["curve"] for p in points} == {"train", "validation"}
    assert spec["spec"]["encoding"]["color"]["field"] == "series"  # the variant (and the revision, in a diff)
    lead = shown["data"]["lead_time_mse"][0]["content"]["data"]["values"]
    assert {p["variant"] for p in lead} >= {"ori", "nuwa", "random", "persistence", "optical_flow"}
    # per run: the training and the validation loss
    run_plot = next(name for name in shown["data"] if name.endswith("simvp/nuwa/seed0/history.csv"))
    fold = shown["data"][run_plot][0]["content"]["transform"][0]["fold"]
    assert fold == ["train_loss", "val_loss"]


def test_dvc_plots_show_writes_a_page_that_needs_no_network(compared):
    run(["dvc", "plots", "show"], compared)
    page = (compared / "dvc_plots" / "index.html").read_text()
    assert not re.search(r"<script[^>]*\bsrc=", page), "a script loaded from elsewhere"
    assert "cdn.jsdelivr" not in page
    assert "window.vegaEmbed=" in page.replace(" ", "")  # vl-convert's bundle, inlined
    assert "vegaEmbed('#loss'" in page


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium to render the page")
def test_the_offline_page_draws_every_plot_in_a_headless_browser(compared, tmp_path):
    run(["dvc", "plots", "show", "--out", str(tmp_path / "page")], compared)
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000",
                          "--dump-dom", (tmp_path / "page" / "index.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    embedded = re.findall(r'<div id="[^"]+" class="vega-embed', dom)
    assert len(embedded) == len(PLOTS) + 1 + 6, embedded  # 3 overlays, the upstream, 6 runs
    assert len(re.findall(r'<svg [^>]*class="marks"', dom)) == len(embedded)  # each drawn
    assert dom.count('class="mark-line') >= len(embedded)


def test_dvc_yaml_declares_compact_metrics_and_top_level_plots():
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages = spec["stages"]
    for name in ("train", "transfer", "baseline"):
        assert "metrics" not in stages[name], f"{name}: per-run metrics in `dvc exp show` (hundreds of columns)"
    assert stages["tables"]["metrics"] == [{grid.METRICS_DIR: {"cache": False}}]
    history = next(iter(stages["train"]["plots"][0].values()))
    assert history["template"] == "nuwa_history" and history["y"] == "train_loss"
    plots = {name: definition for entry in spec["plots"] for name, definition in entry.items()}
    assert list(plots) == [plot.name for plot in PLOTS]
    produced = {output.path for output in STAGES["tables"].outputs.values()}
    for plot in PLOTS:
        assert plots[plot.name]["y"] == {plot.file: plot.y} and plot.file in produced
        template = json.loads((REPO / ".dvc" / "plots" / f"{plots[plot.name]['template']}.json").read_text())
        assert "<DVC_METRIC_DATA>" in json.dumps(template)
    config = (REPO / ".dvc" / "config").read_text()
    page = re.search(r"html_template\s*=\s*(\S+)", config).group(1)
    assert "{plot_divs}" in (REPO / ".dvc" / page).read_text()


def test_the_committed_plots_page_is_the_generated_one():
    pytest.importorskip("vl_convert")
    generated = run(["nuwa", "plots-page"], REPO).stdout
    assert generated == (REPO / ".dvc" / "plots" / "page.html").read_text(), \
        "the page is stale: run `nuwa plots-page --out .dvc/plots/page.html`"


def test_a_runs_metrics_file_states_no_conventions(tmp_path):
    shutil.copy(TINY_PARAMS, tmp_path / "params.yaml")
    run(["nuwa", "ingest", "--dataset", "moving_glyphs"], tmp_path)
    run(["nuwa", "baseline", "--dataset", "moving_glyphs", "--baseline", "persistence"], tmp_path)
    metrics = json.loads((tmp_path / grid.BASELINE.format(dataset="moving_glyphs", task="forecast",
                                                          baseline="persistence")).read_text())
    assert "conventions" not in metrics and metrics["never_observed_masked"] is False


def test_loss_curves_average_seeds_and_bin_the_training_loss():
    rng = np.random.default_rng(1)
    histories = {("d", "forecast", 100, "simvp", v, seed): _history(rng, 0.0) for v in ("ori", "nuwa")
                 for seed in (0, 1)}
    curves = loss_curves(histories, points=8)
    train = curves[(curves.variant == "ori") & (curves.curve == "train")]
    assert len(train) == 8 and train["step"].iloc[-1] == STEPS
    both = pd.concat([histories[("d", "forecast", 100, "simvp", "ori", s)] for s in (0, 1)])
    assert train["loss"].mean() == pytest.approx(both["train_loss"].mean())
    validation = curves[(curves.variant == "nuwa") & (curves.curve == "validation")]
    assert list(validation["step"]) == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))


def test_lead_time_curves_draw_each_baseline_in_every_backbone_panel():
    rows = [{"dataset": "d", "task": "forecast", "train_percent": 100, "backbone": b, "variant": "ori", "seed": s,
             "lead": lead, "mse": float(s), "mae": 1.0} for b in ("simvp", "convlstm") for s in (0, 1)
            for lead in (1, 2)]
    rows += [{"dataset": "d", "task": "forecast", "train_percent": "-", "backbone": "persistence", "variant": "-",
              "seed": "-", "lead": lead, "mse": 3.0, "mae": 2.0} for lead in (1, 2)]
    curves = lead_time_curves(pd.DataFrame(rows))
    trained = curves[curves.curve == "trained"]
    assert len(trained) == 4 and set(trained["mse"]) == {0.5}
    baseline = curves[curves.curve == "baseline"]
    assert set(baseline["backbone"]) == {"simvp", "convlstm"} and set(baseline["variant"]) == {"persistence"}
    assert set(baseline["train_percent"]) == {100}


def test_tables_of_a_grid_still_running_are_built_from_its_finished_runs(tmp_path):
    """`nuwa tables --finished-only`: a grid still running gives tables of the runs that have
    finished, says how many it left out, and pairs only seeds both variants have; without the
    flag (the pipeline's tables stage) an unfinished run is an error naming its file."""
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["grid"]["seeds"] = [0, 1]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    fixture_results(tmp_path, params)
    cells = grid.train_cells(params)
    unfinished = [cell for cell in cells if cell.variant == "random" or (cell.variant == "nuwa" and cell.seed == 1)]
    for cell in unfinished:
        (tmp_path / cell.file("metrics.json")).unlink()
    unscored = grid.BASELINE.format(dataset="moving_glyphs", task="forecast", baseline=params["grid"]["baselines"][-1])
    (tmp_path / unscored).unlink()  # a baseline not scored yet either
    failed = subprocess.run(["nuwa", "tables"], cwd=tmp_path, env=tool_env(), capture_output=True, text=True)
    assert failed.returncode != 0 and "metrics.json" in failed.stderr and "Traceback" not in failed.stderr
    result = run(["nuwa", "tables", "--finished-only"], tmp_path)
    finished = len(cells) - len(unfinished)
    assert f"from {finished} of {len(cells)} training runs ({len(unfinished)} not finished)" in result.stdout
    summary = pd.read_csv(tmp_path / grid.SUMMARY_CSV)
    assert "random" not in set(summary["variant"]) and {"ori", "nuwa"} <= set(summary["variant"])
    assert params["grid"]["baselines"][-1] not in set(summary["backbone"])
    assert summary["skill"].notna().any()  # persistence, scored, still gives the skill
    comparisons = pd.read_csv(tmp_path / grid.COMPARISONS_CSV)
    assert set(comparisons["comparison"]) == {"nuwa - ori"}  # nuwa - random has no finished B
    assert set(comparisons["n_seeds"]) == {1} and set(comparisons["unpaired_seeds"]) == {"[1]"}
    assert f"Built from {finished} of {len(cells)} training runs" in (tmp_path / grid.SUMMARY_MD).read_text()
    for cell in cells:  # nothing is left in the metrics folder for a run that has not finished
        row = tmp_path / grid.METRICS_DIR / grid.CELL_METRICS.format(**{axis: getattr(cell, axis) for axis in grid.AXES
                                                                        if axis != "seed"})
        assert row.exists() == (cell.variant != "random"), row
