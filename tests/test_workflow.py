"""The real workflow, end to end, on the tiny config: Snakemake and DVC, reruns, lint."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from conftest import REPO, copy_run, digest, make_workdir, output_files, tool_env
from nuwa import grid

pytestmark = pytest.mark.slow


def run(command: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def snakemake_jobs(dry_run_output: str) -> set[str]:
    """(rule, wildcards) of each job a dry run would execute."""
    jobs, rule = set(), None
    for line in dry_run_output.splitlines():
        match = re.match(r"^(?:local)?rule (\w+):", line.strip())
        if match:
            rule = match.group(1)
            jobs.add(rule)
        match = re.match(r"^wildcards: (.*)$", line.strip())
        if match and rule:
            jobs.discard(rule)
            jobs.add(f"{rule}[{match.group(1)}]")
    return jobs


@pytest.fixture(scope="module")
def snakemake_run(uninterrupted_tiny_run, tmp_path_factory):
    """The tiny config run by `snakemake --cores 2` in a fresh checkout: a copy of the suite's
    shared run (tests here change params and run more jobs in it)."""
    return copy_run(uninterrupted_tiny_run[0], tmp_path_factory.mktemp("snakemake") / "run")


@pytest.fixture(scope="module")
def dvc_run(tmp_path_factory):
    directory = make_workdir(tmp_path_factory.mktemp("dvc"))
    run(["git", "init", "-q"], directory)
    run(["dvc", "init", "-q"], directory)
    run(["dvc", "repro"], directory)
    return directory


def test_snakemake_lint_is_clean():
    result = run(["snakemake", "--lint"], REPO, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr or "no issues" in (result.stdout + result.stderr).lower()


def test_default_config_dry_run_plans_the_whole_grid():
    from nuwa.datasets import source_status

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name in params["grid"]["datasets"]:
        source, present = source_status(params["datasets"][name])
        if not present:
            pytest.skip(f"default grid dataset {name}: source {source} absent from this checkout's surroundings")
    result = run(["snakemake", "--dry-run", "--cores", "2"], REPO)
    cells = (len(params["grid"]["datasets"]) * len(params["grid"]["backbones"]) * len(params["grid"]["variants"])
             * len(params["grid"]["seeds"]))
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, flags=re.M))
    if not counts.get("train"):  # outputs may already exist from a real run in the checkout
        pytest.skip("the checkout already holds trained cells; dry run has nothing to plan")
    assert int(counts["train"]) == cells


def test_snakemake_builds_every_contract_file(snakemake_run):
    files = output_files(snakemake_run)
    params = yaml.safe_load((snakemake_run / "params.yaml").read_text())
    for dataset in params["grid"]["datasets"]:
        assert f"data/processed/{dataset}.nc" in files
        assert f"results/upstream/{dataset}/model.pt" in files
        assert f"results/upstream/{dataset}/history.csv" in files
        assert f"results/saliency/{dataset}.nc" in files
        for variant in params["grid"]["variants"]:
            assert f"results/bank/{dataset}/{variant}/100pct/seed0.nc" in files
        for backbone in params["grid"]["backbones"]:
            for variant in params["grid"]["variants"]:
                for name in ("model.pt", "history.csv", "metrics.json", "examples.nc"):
                    assert f"results/runs/{dataset}/forecast/100pct/{backbone}/{variant}/seed0/{name}" in files
        assert f"results/diagnostics/{dataset}.csv" in files and f"results/diagnostics/{dataset}_per_seed.csv" in files
        assert f"results/figures/{dataset}_diagnostics.png" in files
        diagnostics = (snakemake_run / f"results/diagnostics/{dataset}.csv").read_text()
        assert diagnostics.count("pretrained here") == 3 and "in use (results/saliency/" in diagnostics
        for baseline in params["grid"]["baselines"]:
            assert f"results/baselines/{dataset}/forecast/{baseline}.json" in files
            assert f"results/baselines/{dataset}/forecast/{baseline}_losses.nc" in files
        assert f"results/figures/{dataset}_predictions.png" in files
        assert f"results/figures/{dataset}_comparisons.png" in files and f"results/figures/{dataset}_lead_time.png" in files
        assert f"results/figures/{dataset}_saliency.png" in files
        assert f"results/figures/{dataset}_predictions.gif" in files
        assert f"results/figures/{dataset}_learning_curves.png" in files
    summary = (snakemake_run / "results/tables/summary.csv").read_text()
    for variant in ("ori", "nuwa", "random", "persistence", "optical_flow"):
        assert variant in summary
    comparisons = (snakemake_run / "results/tables/comparisons.csv").read_text()
    assert "nuwa - ori" in comparisons and "nuwa - random" in comparisons
    assert "results/tables/lead_time.csv" in files
    losses = xr.open_dataset(snakemake_run / "results/runs/moving_glyphs/forecast/100pct/simvp/nuwa/seed0/test_losses.nc")
    assert losses["mse"].dims == ("window", "lead")
    saliency = xr.open_dataset(snakemake_run / "results/saliency/moving_glyphs.nc")
    assert saliency["importance"].dims == ("sample", "step", "patch_y", "patch_x")
    assert saliency["importance"].dtype == "float32"
    assert set(saliency.attrs) >= {"patch_size", "layers"}
    # the ratio has one owner, the bank variant: the saliency file holds importance only
    assert "causal" not in saliency and "environment_ratio" not in saliency.attrs
    bank = xr.open_dataset(snakemake_run / "results/bank/moving_glyphs/nuwa/100pct/seed0.nc")
    assert bank.attrs["environment_ratio"] == params["bank"]["environment_ratio"] and bank.attrs["seed"] == 0
    assert 0 < bank.attrs["changed_cell_fraction"] < 1 and bank.attrs["mean_abs_change_std"] > 0
    assert not list(snakemake_run.rglob("*.tmp")), "a temporary file survived"


def test_the_snakemake_report_files_every_table_and_figure_with_a_caption(snakemake_run, tmp_path):
    """`snakemake --report`: the one file a researcher opens holds the comparisons, the tables in
    the paper's layout, the saliency and prediction figures, each under its category with the
    caption that says how to read it (workflow/report/*.rst)."""
    out = tmp_path / "report.html"
    result = run(["snakemake", "--report", str(out)], snakemake_run)
    added = set(re.findall(r"Adding (\S+) \(", result.stdout + result.stderr))
    assert {"summary.csv", "comparisons.csv", "lead_time.csv", "table1.md", "paper_vs_ours.md", "scarcity.png",
            "moving_glyphs_comparisons.png", "moving_glyphs_saliency.png", "moving_glyphs_predictions.png",
            "moving_glyphs_lead_time.png", "moving_glyphs_diagnostics.png", "moving_glyphs_predictions.gif",
            "moving_glyphs_learning_curves.png"} <= added
    html = out.read_text()
    for category in ("1. Comparisons", "2. Tables", "3. The paper's tables", "4. Saliency", "5. Predictions",
                     "6. Training"):
        assert category in html, category
    for phrase in ("whole 95 % interval is below 0", "few independent units for a verdict",  # one line of each
                   "cover the signal (plume, rain, glyphs) rather than the background",  # caption file
                   "Each row's label says which direction is better", "red where the forecast is",
                   "one frame per", "the star its minimum"):
        assert phrase in html, phrase


def test_nuwa_evaluate_scores_a_saved_model_on_a_dataset(snakemake_run, tmp_path):
    """`nuwa evaluate --checkpoint`: a run's model.pt on its own dataset gives the run's own test
    metrics (the same windows, the same normalisation), with example predictions."""
    import json

    cell = "results/runs/moving_glyphs/forecast/100pct/simvp/nuwa/seed0"
    out = tmp_path / "evaluated"
    run(["nuwa", "evaluate", "--checkpoint", f"{cell}/model.pt", "--dataset", "moving_glyphs", "--out-dir", str(out),
         "--examples", "3"], snakemake_run)
    ours = json.loads((out / "metrics.json").read_text())
    own = json.loads((snakemake_run / cell / "metrics.json").read_text())
    assert ours["mse"] == pytest.approx(own["mse"], rel=1e-6) and ours["ssim"] == pytest.approx(own["ssim"], rel=1e-6)
    assert ours["trained_on"] == "moving_glyphs" and ours["variant"] == "nuwa"
    assert xr.open_dataset(out / "examples.nc").sizes["example"] == 3
    (tmp_path / "not_a_model.pt").write_bytes(b"nonsense")
    failed = run(["nuwa", "evaluate", "--checkpoint", str(tmp_path / "not_a_model.pt"), "--dataset", "moving_glyphs",
                  "--out-dir", str(out)], snakemake_run, check=False)
    assert failed.returncode != 0 and "not_a_model.pt" in failed.stderr and "Traceback" not in failed.stderr


def test_command_line_overrides_are_typed_validated_and_reach_the_jobs(snakemake_run):
    """`snakemake --config train='{"steps": 3}'`: typed like the file (Snakemake hands nested values
    over as strings), validated with an error that names the command line, read by every job, and
    rerunning only the stages whose keys it changes."""
    import json

    jobs = snakemake_jobs(run(["snakemake", "--dry-run", "--cores", "2", "--config", 'train={"steps": 3}'],
                              snakemake_run).stdout)
    assert jobs and all(j.startswith(("train[", "tables", "figures", "validate", "all")) for j in jobs), jobs
    bad = run(["snakemake", "--dry-run", "--cores", "2", "--config", 'train={"steps": -1}'], snakemake_run,
              check=False)
    said = bad.stdout + bad.stderr  # Snakemake prints the exception on stdout
    assert bad.returncode != 0 and "--config train=" in said and "train.steps: -1 is out of range" in said
    target = "results/runs/moving_glyphs/forecast/100pct/simvp/ori/seed0/metrics.json"
    try:
        run(["snakemake", "--cores", "1", "--config", 'train={"steps": 3}', "--", target], snakemake_run)
        assert json.loads((snakemake_run / target).read_text())["steps"] == 3  # the job read the override
    finally:  # back to the file's parameters for the other tests; the whole workflow, as the tables and
        # figures read the cell's history.csv, whose wall-clock column the rerun changed
        run(["snakemake", "--cores", "2"], snakemake_run)
    assert json.loads((snakemake_run / target).read_text())["steps"] != 3


def test_a_dry_run_with_other_params_leaves_the_jobs_params_file_alone(snakemake_run):
    """A dry run (here with an override; once, another experiment file) in a checkout where a
    workflow runs must not rewrite the file that workflow's jobs read: the file is written once a
    run holds Snakemake's lock. And a job whose run planned with other params than the file now
    holds (two executing runs with other params in one checkout) is refused, naming the file."""
    job_params = snakemake_run / ".nuwa/params.yaml"
    before = job_params.read_bytes()
    run(["snakemake", "--dry-run", "--cores", "2", "--config", 'train={"steps": 3}'], snakemake_run)
    assert job_params.read_bytes() == before
    planned = f".nuwa/params.yaml\t{'0' * 64}"  # NUWA_JOB_PARAMS of a run that planned with other params
    refused = subprocess.run(["nuwa", "validate", "--params", ".nuwa/params.yaml"], cwd=snakemake_run,
                             env={**tool_env(), "NUWA_JOB_PARAMS": planned}, capture_output=True, text=True)
    assert refused.returncode != 0
    assert ".nuwa/params.yaml: not the params this job's Snakemake run planned with" in refused.stderr
    assert "another Snakemake run in this checkout rewrote it" in refused.stderr
    # another file than the run's (a user's own command) is not the job's file: not checked
    assert subprocess.run(["nuwa", "validate", "--params", "params.yaml"], cwd=snakemake_run,
                          env={**tool_env(), "NUWA_JOB_PARAMS": planned}).returncode == 0


def test_show_mask_writes_a_png_of_a_window(snakemake_run):
    sample = int(xr.open_dataset(snakemake_run / "results/saliency/moving_glyphs.nc")["sample"].values[3])
    run(["nuwa", "show-mask", "results/saliency/moving_glyphs.nc", "--sample", str(sample), "--out", "mask.png"],
        snakemake_run)
    assert (snakemake_run / "mask.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run(["nuwa", "show-mask", "results/saliency/moving_glyphs.nc", "--sample", str(sample), "--out", "bank.png",
         "--bank", "results/bank/moving_glyphs/nuwa/100pct/seed0.nc"], snakemake_run)
    assert (snakemake_run / "bank.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = run(["nuwa", "show-mask", "results/saliency/moving_glyphs.nc", "--sample", "99999"], snakemake_run,
                  check=False)
    assert missing.returncode == 2 and "99999" in missing.stderr and "moving_glyphs.nc" in missing.stderr


@pytest.mark.parametrize("argv", [
    ["validate"],
    ["ingest", "--dataset", "moving_glyphs", "--out", "{tmp}/processed.nc"],
    ["bank", "--dataset", "moving_glyphs", "--variant", "nuwa", "--seed", "0", "--out", "{tmp}/bank.nc"],
    ["bank", "--dataset", "moving_glyphs", "--variant", "random", "--seed", "0", "--out", "{tmp}/bank.nc"],
    ["tables", "--out-csv", "{tmp}/summary.csv", "--out-md", "{tmp}/summary.md"],
    ["figures", "--dataset", "moving_glyphs", "--out-predictions", "{tmp}/p.png", "--out-saliency", "{tmp}/s.png"],
], ids=lambda argv: "-".join(argv[:4:3]))
def test_stages_that_compute_without_torch_start_without_it(snakemake_run, tmp_path, argv):
    """torch, timm and torchvision cost 2-5 s of imports per job: a job that computes with numpy
    only (masks are numpy) does not pay them, with $NUWA_THREADS set as in the workflow."""
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    code = ("import sys; from nuwa.cli import main; status = main(sys.argv[1:]); "
            "print('imported:', *(name for name in ('torch', 'timm', 'torchvision') if name in sys.modules)); "
            "sys.exit(status)")
    env = dict(tool_env(), NUWA_THREADS="1")
    result = subprocess.run([sys.executable, "-c", code, *argv], cwd=snakemake_run, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "imported:", f"nuwa {argv[0]}: {result.stdout}"


def test_snakemake_and_dvc_build_the_same_files_with_the_same_bytes(snakemake_run, dvc_run):
    assert output_files(snakemake_run) == output_files(dvc_run)
    for relative in ("data/processed/moving_glyphs.nc", "results/saliency/moving_glyphs.nc",
                     "results/bank/moving_glyphs/nuwa/100pct/seed0.nc", "results/bank/moving_glyphs/random/100pct/seed0.nc",
                     "results/runs/moving_glyphs/forecast/100pct/simvp/nuwa/seed0/metrics.json", "results/tables/summary.csv"):
        assert digest(snakemake_run / relative) == digest(dvc_run / relative), relative


def test_a_rerun_with_nothing_changed_does_no_work_in_either_tool(snakemake_run, dvc_run):
    """After a complete run, running again runs no job and touches no output (both tools)."""
    def mtimes(directory: Path) -> dict[str, int]:
        return {p: (directory / p).stat().st_mtime_ns for p in output_files(directory)}

    before = mtimes(snakemake_run)
    result = run(["snakemake", "--cores", "2"], snakemake_run)
    output = result.stdout + result.stderr
    assert "Nothing to be done" in output and not snakemake_jobs(output), output
    assert mtimes(snakemake_run) == before

    before = mtimes(dvc_run)
    result = run(["dvc", "repro"], dvc_run)
    assert "Running stage" not in result.stdout, result.stdout
    assert "up to date" in result.stdout, result.stdout
    assert "up to date" in run(["dvc", "status"], dvc_run).stdout
    assert mtimes(dvc_run) == before


def _edit_params(directory: Path, edit) -> None:
    params = yaml.safe_load((directory / "params.yaml").read_text())
    edit(params)
    (directory / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_snakemake_reruns_only_the_cells_a_change_touches(snakemake_run):
    assert snakemake_jobs(run(["snakemake", "--dry-run", "--cores", "2"], snakemake_run).stdout) == set()
    original = (snakemake_run / "params.yaml").read_text()
    try:
        _edit_params(snakemake_run, lambda p: p["variants"]["random"].update(environment_ratio=0.5))
        jobs = snakemake_jobs(run(["snakemake", "--dry-run", "--cores", "2"], snakemake_run).stdout)
        trains = {j for j in jobs if j.startswith("train[")}
        assert trains == {f"train[dataset=moving_glyphs, task=forecast, train_percent=100, backbone={b}, variant=random, seed=0]"
                          for b in ("simvp", "convlstm")}
        assert "bank[dataset=moving_glyphs, train_percent=100, variant=random, seed=0]" in jobs
        assert not any("ori" in j or "nuwa" in j for j in jobs), jobs
        assert not any(j.startswith(("pretrain", "saliency", "ingest")) for j in jobs)

        # an ablation is a params edit: a second ratio as a new variant adds new cells only
        (snakemake_run / "params.yaml").write_text(original)
        _edit_params(snakemake_run, lambda p: (p["variants"].update(nuwa_r50={"method": "saliency",
                                                                             "environment_ratio": 0.5}),
                                              p["grid"]["variants"].append("nuwa_r50")))
        jobs = snakemake_jobs(run(["snakemake", "--dry-run", "--cores", "2"], snakemake_run).stdout)
        trains = {j for j in jobs if j.startswith("train[")}
        assert trains == {f"train[dataset=moving_glyphs, task=forecast, train_percent=100, backbone={b}, variant=nuwa_r50, seed=0]"
                          for b in ("simvp", "convlstm")}
        assert {j for j in jobs if j.startswith("bank[")} == {"bank[dataset=moving_glyphs, train_percent=100, variant=nuwa_r50, seed=0]"}

        # bank.chunk_size bounds memory and never changes the bytes: it reruns no stage (only the
        # check of the whole file, `validate`, whose marker no stage reads under Snakemake)
        (snakemake_run / "params.yaml").write_text(original)
        _edit_params(snakemake_run, lambda p: p["bank"].update(chunk_size=3))
        assert snakemake_jobs(run(["snakemake", "--dry-run", "--cores", "2"], snakemake_run).stdout) <= {"validate",
                                                                                                        "all"}

        # a second seed is one more value on one axis: its banks and cells, nothing else
        (snakemake_run / "params.yaml").write_text(original)
        _edit_params(snakemake_run, lambda p: p["grid"]["seeds"].append(7))
        jobs = snakemake_jobs(run(["snakemake", "--dry-run", "--cores", "2"], snakemake_run).stdout)
        assert {j for j in jobs if j.startswith(("train[", "bank["))} == (
            {f"train[dataset=moving_glyphs, task=forecast, train_percent=100, backbone={b}, variant={v}, seed=7]"
             for b in ("simvp", "convlstm") for v in ("ori", "nuwa", "random")}
            | {f"bank[dataset=moving_glyphs, train_percent=100, variant={v}, seed=7]" for v in ("ori", "nuwa", "random")})
        assert not any(j.startswith(("pretrain", "saliency", "ingest")) for j in jobs)
    finally:
        (snakemake_run / "params.yaml").write_text(original)


def test_dvc_reruns_only_the_cells_a_change_touches(dvc_run):
    assert "up to date" in run(["dvc", "status"], dvc_run).stdout
    before = {p: digest(dvc_run / p) for p in output_files(dvc_run) if p.endswith("metrics.json")}
    _edit_params(dvc_run, lambda p: p["variants"]["random"].update(environment_ratio=0.5))
    result = run(["dvc", "repro"], dvc_run)
    ran = set(re.findall(r"Running stage '([^']+)'", result.stdout))
    trains = {s for s in ran if s.startswith("train@")}
    assert trains == {"train@moving_glyphs-forecast-100-simvp-random-0", "train@moving_glyphs-forecast-100-convlstm-random-0"}, ran
    assert not any(s.startswith(("pretrain", "saliency", "ingest")) for s in ran), ran
    after = {p: digest(dvc_run / p) for p in output_files(dvc_run) if p.endswith("metrics.json")}
    changed = {p for p in before if before[p] != after[p]}
    assert changed == {f"results/runs/moving_glyphs/forecast/100pct/{b}/random/seed0/metrics.json" for b in ("simvp", "convlstm")}


def test_dvc_yaml_is_the_one_generated_from_the_stage_table():
    """dvc.yaml is generated from nuwa/stages.py (the table Snakemake's rules read): regenerating
    it gives the committed bytes, so the two tools cannot drift apart."""
    generated = run(["nuwa", "dvc-yaml"], REPO).stdout
    assert generated == (REPO / "dvc.yaml").read_text(), "dvc.yaml is stale: run `nuwa dvc-yaml --out dvc.yaml`"
    from nuwa.stages import STAGES, stage_param_keys

    stages = yaml.safe_load(generated)["stages"]
    assert set(stages) == set(STAGES)
    from nuwa.stages import _dvc_item

    for name in STAGES:
        if name != "validate":
            wildcards = {**{axis: "${item.%s}" % axis for axis in grid.STAGE_AXES}, **_dvc_item(STAGES[name].axes)}
            assert stages[name]["params"] == stage_param_keys(name, **wildcards), name
    assert stages["train"]["matrix"]["seed"] == "${grid.seeds}" and "${item.seed}" in stages["train"]["cmd"]


def test_snakemake_rules_run_the_stage_table_commands(tmp_path):
    """Each rule's shell command is the stage table's command plus Snakemake's own options: the
    same command DVC runs, with its placeholders."""
    dry = run(["snakemake", "--dry-run", "--printshellcmds", "--cores", "2"], make_workdir(tmp_path)).stdout
    dvc_stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    item = {"dataset": "moving_glyphs", "task": "forecast", "train_percent": "100", "backbone": "simvp",
            "variant": "nuwa", "seed": "0", "baseline": "optical_flow"}
    for name in ("ingest", "baseline", "pretrain", "saliency", "bank", "train", "tables", "figures"):
        command = dvc_stages[name]["cmd"]
        for axis, value in item.items():
            command = command.replace("${item.%s}" % axis, value)
        assert command in dry, name


def test_vit_cell_starts_from_the_upstream_weights(snakemake_run):
    """init_from_upstream: Snakemake adds the upstream model as input and train copies its blocks."""
    import json

    original = (snakemake_run / "params.yaml").read_text()
    try:
        def add_vit(params):
            upstream = params["pretrain"]
            params["backbones"]["vit"] = {"kind": "vit", "size": "small", "init_from_upstream": True,
                                          "hid_T": upstream["embed_dim"], "N_T": upstream["depth"],
                                          "num_heads": upstream["num_heads"], "mlp_ratio": upstream["mlp_ratio"]}
            params["grid"]["backbones"].append("vit")

        _edit_params(snakemake_run, add_vit)
        target = "results/runs/moving_glyphs/forecast/100pct/vit/ori/seed0/metrics.json"
        dry = run(["snakemake", "--dry-run", "--cores", "1", target], snakemake_run).stdout
        inputs = [line for line in dry.splitlines() if line.strip().startswith("input:")]
        assert any("results/upstream/moving_glyphs/model.pt" in line for line in inputs), dry
        run(["snakemake", "--cores", "1", target], snakemake_run)
        metrics = json.loads((snakemake_run / target).read_text())
        assert metrics["upstream_tensors_loaded"] > 0
        log = (snakemake_run / "logs/train/moving_glyphs/forecast/100pct/vit/ori/seed0.log").read_text()
        assert "Traceback" not in log
        # a backbone that cannot take the weights says so
        _edit_params(snakemake_run, lambda p: p["backbones"]["simvp"].update(init_from_upstream=True))
        failed = run(["nuwa", "train", "--dataset", "moving_glyphs", "--backbone", "simvp", "--variant", "ori",
                      "--seed", "0", "--bank", "results/bank/moving_glyphs/ori/100pct/seed0.nc", "--out-dir", "elsewhere"],
                     snakemake_run, check=False)
        assert failed.returncode == 2 and "cannot start from the upstream ViT's weights" in failed.stderr
    finally:
        (snakemake_run / "params.yaml").write_text(original)


def test_the_task_and_train_percent_axes_run_end_to_end(snakemake_run):
    """A tiny version of each axis of the paper's other questions: super-resolution (inputs 2 x 2
    block means, targets at full size) and half the training windows, through Snakemake; the
    tables hold every setting, each compared within itself."""
    import json

    import pandas as pd

    original = (snakemake_run / "params.yaml").read_text()
    try:
        def axes(params):
            params["tasks"]["sr2"] = {"kind": "super_resolution", "factor": 2}
            params["grid"].update(tasks=["forecast", "sr2"], train_percents=[50, 100], backbones=["simvp"],
                                  variants=["ori", "nuwa"])

        _edit_params(snakemake_run, axes)
        jobs = snakemake_jobs(run(["snakemake", "--dry-run", "--cores", "2"], snakemake_run).stdout)
        trains = {j for j in jobs if j.startswith("train[")}
        # the forecast cells at 100 % exist already: the new settings' cells alone run
        assert trains == {f"train[dataset=moving_glyphs, task={t}, train_percent={p}, backbone=simvp, variant={v}, "
                          "seed=0]" for t, p in (("sr2", 50), ("sr2", 100), ("forecast", 50)) for v in ("ori", "nuwa")}
        assert {j for j in jobs if j.startswith("bank[")} == {
            f"bank[dataset=moving_glyphs, train_percent=50, variant={v}, seed=0]" for v in ("ori", "nuwa")}
        assert not any(j.startswith(("pretrain", "saliency", "ingest")) for j in jobs)
        run(["snakemake", "--cores", "2"], snakemake_run)
        runs = snakemake_run / "results/runs/moving_glyphs"
        sr = json.loads((runs / "sr2/100pct/simvp/nuwa/seed0/metrics.json").read_text())
        half = json.loads((runs / "forecast/50pct/simvp/nuwa/seed0/metrics.json").read_text())
        full = json.loads((runs / "forecast/100pct/simvp/nuwa/seed0/metrics.json").read_text())
        assert sr["input_factor"] == 2 and full["input_factor"] == 1
        assert half["train_windows"] == -(-full["train_windows"] // 2)  # ceil: the most recent half
        bank = xr.open_dataset(snakemake_run / "results/bank/moving_glyphs/nuwa/50pct/seed0.nc")
        copies = yaml.safe_load(original)["bank"]["copies"]
        assert bank.sizes["bank_sample"] == copies * half["train_windows"]  # the bank of those windows alone
        examples = xr.open_dataset(runs / "sr2/100pct/simvp/nuwa/seed0/examples.nc")
        assert examples.sizes["input_y"] * 2 == examples.sizes["y"]
        baseline = json.loads((snakemake_run / "results/baselines/moving_glyphs/sr2/persistence.json").read_text())
        assert baseline["input_factor"] == 2
        comparisons = pd.read_csv(snakemake_run / "results/tables/comparisons.csv")
        settings = set(zip(comparisons["task"], comparisons["train_percent"]))
        assert settings == {("forecast", 50), ("forecast", 100), ("sr2", 50), ("sr2", 100)}
        summary = (snakemake_run / "results/tables/summary.md").read_text()
        assert "## moving_glyphs: sr2, 50 % of the training windows" in summary
        assert (snakemake_run / "results/figures/scarcity.png").stat().st_size > 10_000
        assert "| moving_glyphs | forecast | simvp | nuwa - ori |" in (
            snakemake_run / "results/tables/scarcity.md").read_text()
    finally:
        (snakemake_run / "params.yaml").write_text(original)


def test_cells_are_evaluated_on_another_dataset_without_retraining(snakemake_run):
    """grid.eval_on: the trained cells of one dataset scored on another's test split (here faster
    glyphs of the same shape), normalised as in training; the generalisation table pairs them."""
    import json

    import pandas as pd

    original = (snakemake_run / "params.yaml").read_text()
    try:
        def faster(params):
            params["datasets"]["glyphs_fast"] = dict(params["datasets"]["moving_glyphs"], max_speed=4.0, seed=9)
            params["grid"]["eval_on"] = [{"train": "moving_glyphs", "test": "glyphs_fast"}]

        _edit_params(snakemake_run, faster)
        jobs = snakemake_jobs(run(["snakemake", "--dry-run", "--cores", "2"], snakemake_run).stdout)
        assert not any(j.startswith("train[") for j in jobs)  # nothing is retrained
        transfers = {j for j in jobs if j.startswith("transfer[")}
        assert len(transfers) == 2 * 3  # backbones x variants of the one seed
        assert "ingest[dataset=glyphs_fast]" in jobs
        run(["snakemake", "--cores", "2"], snakemake_run)
        cell = snakemake_run / "results/runs/moving_glyphs/forecast/100pct/simvp/nuwa/seed0"
        metrics = json.loads((cell / "eval_on/glyphs_fast/metrics.json").read_text())
        own = json.loads((cell / "metrics.json").read_text())
        assert metrics["eval_on"] == "glyphs_fast" and metrics["normalised_with"] == "moving_glyphs"
        assert metrics["mse"] != own["mse"] and metrics["test_windows"] > 0
        table = pd.read_csv(snakemake_run / "results/tables/generalisation.csv")
        assert set(table["dataset"]) == {"moving_glyphs → glyphs_fast"}
        assert "moving_glyphs → glyphs_fast" in (snakemake_run / "results/tables/generalisation.md").read_text()
        # a dataset of another shape is refused by validation, with both shapes
        _edit_params(snakemake_run, lambda p: p["datasets"]["glyphs_fast"].update(height=32, width=32))
        failed = run(["nuwa", "validate"], snakemake_run, check=False)
        assert failed.returncode != 0 and "16 x 16 x" in failed.stderr and "32 x 32 x" in failed.stderr
    finally:
        (snakemake_run / "params.yaml").write_text(original)


def test_a_variant_can_take_its_masks_from_another_upstream_vit(snakemake_run):
    """The upstream objective or saliency layer as an ablation: grid.upstreams pretrains another
    ViT, and a variant naming it draws its bank's masks from that ViT's saliency."""
    original = (snakemake_run / "params.yaml").read_text()
    try:
        def masked(params):
            params["grid"]["upstreams"] = ["masked"]
            params["variants"]["nuwa_masked"] = {"method": "saliency", "upstream": "masked"}
            params["grid"].update(variants=["ori", "nuwa", "nuwa_masked"], backbones=["simvp"])

        _edit_params(snakemake_run, masked)
        jobs = snakemake_jobs(run(["snakemake", "--dry-run", "--cores", "2"], snakemake_run).stdout)
        assert {j for j in jobs if j.startswith(("pretrain", "saliency"))} == {
            "pretrain_ablation[dataset=moving_glyphs, upstream=masked]",
            "saliency_ablation[dataset=moving_glyphs, upstream=masked]"}
        assert {j for j in jobs if j.startswith(("bank[", "train["))} == {
            "bank[dataset=moving_glyphs, train_percent=100, variant=nuwa_masked, seed=0]",
            "train[dataset=moving_glyphs, task=forecast, train_percent=100, backbone=simvp, variant=nuwa_masked, seed=0]"}
        run(["snakemake", "--cores", "2"], snakemake_run)
        ours = xr.open_dataset(snakemake_run / "results/saliency/ablations/moving_glyphs/masked.nc")
        default = xr.open_dataset(snakemake_run / "results/saliency/moving_glyphs.nc")
        assert not np.array_equal(ours["importance"].values, default["importance"].values)
        bank = xr.open_dataset(snakemake_run / "results/bank/moving_glyphs/nuwa_masked/100pct/seed0.nc")
        nuwa = xr.open_dataset(snakemake_run / "results/bank/moving_glyphs/nuwa/100pct/seed0.nc")
        assert not np.array_equal(bank["causal"].values, nuwa["causal"].values)  # other masks, same draws
        # a variant naming an upstream that is not pretrained is refused before anything runs
        _edit_params(snakemake_run, lambda p: p["grid"].update(upstreams=[]))
        failed = run(["nuwa", "validate"], snakemake_run, check=False)
        assert failed.returncode != 0 and "'masked' is not in grid.upstreams" in failed.stderr
    finally:
        (snakemake_run / "params.yaml").write_text(original)


RADAR = REPO.parent / "shared" / "data" / "radar"


@pytest.mark.skipif(not RADAR.is_dir(), reason=f"real radar files not present at {RADAR} (shared/data beside the repo)")
def test_radar_pipeline_end_to_end(tmp_path):
    """Real KNMI radar through the whole workflow: ingest with pysteps, saliency, bank, training, tables."""
    import json

    default = yaml.safe_load((REPO / "params.yaml").read_text())
    params = yaml.safe_load((REPO / "tests/data/tiny_params.yaml").read_text())
    radar = dict(default["datasets"]["radar_knmi"], source=str(RADAR / "KNMI"))
    params["datasets"] = {"radar_knmi": radar}
    params["grid"].update(datasets=["radar_knmi"], backbones=["simvp"], variants=["ori", "nuwa"])
    directory = make_workdir(tmp_path, params)
    run(["snakemake", "--cores", "2"], directory)
    processed = xr.open_dataset(directory / "data/processed/radar_knmi.nc")
    assert processed["rain_rate"].shape == (92, 1, 32, 32)
    assert processed["missing_fraction"].dims == ("time",)
    assert 0 < float(processed["missing_fraction"].max()) < 0.05
    assert str(processed["time"].values[1] - processed["time"].values[0]) == "300000000000 nanoseconds"
    bank = xr.open_dataset(directory / "results/bank/radar_knmi/nuwa/100pct/seed0.nc")
    assert bank.sizes["bank_sample"] == 44  # one copy per training window
    for variant in ("ori", "nuwa"):
        metrics = json.loads((directory / f"results/runs/radar_knmi/forecast/100pct/simvp/{variant}/seed0/metrics.json").read_text())
        assert metrics["mse"] >= 0 and "csi" in json.dumps(metrics)
    summary = (directory / "results/tables/summary.csv").read_text()
    assert "radar_knmi" in summary and "persistence" in summary


NYCBIKE = REPO.parent / "shared" / "data" / "traffic" / "NYCBike1"


@pytest.mark.skipif(not NYCBIKE.is_dir(), reason=f"real NYCBike1 files not present at {NYCBIKE}")
def test_snakemake_ingests_one_named_dataset_and_needs_its_source(tmp_path):
    default = yaml.safe_load((REPO / "params.yaml").read_text())
    params = yaml.safe_load((REPO / "tests/data/tiny_params.yaml").read_text())
    params["datasets"]["nycbike"] = dict(default["datasets"]["nycbike"], source=str(NYCBIKE))
    params["datasets"]["elsewhere"] = dict(default["datasets"]["nycbike"], source=str(tmp_path / "absent"))
    directory = make_workdir(tmp_path, params)
    run(["snakemake", "--cores", "1", "data/processed/nycbike.nc"], directory)
    assert output_files(directory) == {"data/processed/nycbike.nc"}
    assert xr.open_dataset(directory / "data/processed/nycbike.nc")["bike_flow"].shape == (1296, 2, 16, 8)
    # the source is the ingest job's input: a missing one stops the DAG before any job runs
    missing = run(["snakemake", "--cores", "1", "data/processed/elsewhere.nc"], directory, check=False)
    assert missing.returncode != 0
    assert "Missing input files" in missing.stderr + missing.stdout and str(tmp_path / "absent") in missing.stderr + missing.stdout
    assert not (directory / "data/processed/elsewhere.nc").exists()


def test_a_multi_gpu_cell_runs_under_torchrun(tmp_path):
    """backbones.<name>.gpus: 2 asks Slurm for 2 GPUs and trains with DDP (2 gloo processes on CPU)."""
    import json

    params = yaml.safe_load((REPO / "tests/data/tiny_params.yaml").read_text())
    params["backbones"]["simvp"]["gpus"] = 2
    directory = make_workdir(tmp_path, params)
    target = "results/runs/moving_glyphs/forecast/100pct/simvp/ori/seed0/metrics.json"
    dry = run(["snakemake", "--dry-run", "--cores", "2", target], directory).stdout
    train_job = dry[dry.index("rule train:"):]
    assert "gpu=2" in train_job.split("\n\n")[0], train_job
    run(["snakemake", "--cores", "2", target], directory)
    metrics = json.loads((directory / target).read_text())
    assert metrics["world_size"] == 2 and metrics["backend"] == "gloo"
    log = (directory / "logs/train/moving_glyphs/forecast/100pct/simvp/ori/seed0.log").read_text()
    assert "running under torchrun" in log


def test_publish_copies_a_finished_grid_and_refuses_one_snakemake_would_retrain(snakemake_run, tmp_path):
    """docs/results/publish.py on a finished grid: every run's row, the tables and the report; and
    after a params edit that would retrain cells, a refusal naming how many, with nothing written."""
    publish = [sys.executable, str(REPO / "docs" / "results" / "publish.py"), "tiny", "--experiment", "params.yaml",
               "--to", str(tmp_path)]
    run(publish, snakemake_run)
    params = yaml.safe_load((snakemake_run / "params.yaml").read_text())
    with open(tmp_path / "tiny" / "runs.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(grid.train_cells(params))
    assert all(row["wall_seconds"] and row["finished_utc"].endswith("Z") for row in rows)
    assert {"summary.csv", "comparisons.csv", "table1.md"} <= {p.name for p in (tmp_path / "tiny" / "tables").iterdir()}
    assert (tmp_path / "tiny" / "report.html").stat().st_size > 0
    published = digest(tmp_path / "tiny" / "runs.csv")

    original = (snakemake_run / "params.yaml").read_text()
    try:
        _edit_params(snakemake_run, lambda p: p["variants"]["random"].update(environment_ratio=0.5))
        result = run(publish, snakemake_run, check=False)
        assert result.returncode != 0
        assert "would train 2 cells again" in result.stderr and "params.yaml" in result.stderr
        assert digest(tmp_path / "tiny" / "runs.csv") == published
        assert not (tmp_path / "tiny.partial").exists()
    finally:
        (snakemake_run / "params.yaml").write_text(original)

    # while another Snakemake holds the checkout (run_queue.sh's next grid), a finished grid is
    # published without Snakemake: the same runs and tables, no report
    lock = snakemake_run / ".snakemake" / "locks" / "0.input.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text("")
    try:
        result = run(publish, snakemake_run)
        assert "another Snakemake holds this checkout" in result.stderr
        assert digest(tmp_path / "tiny" / "runs.csv") == published
        assert (tmp_path / "tiny" / "tables" / "table1.md").exists()
        assert not (tmp_path / "tiny" / "report.html").exists()
    finally:
        lock.unlink()
