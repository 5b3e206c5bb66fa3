"""Experiment files (experiments/*.yaml): overlays of params.yaml that nuwa, Snakemake and the DAG
benchmark read the same way, each planning the grid it states."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import REPO, tool_env
from nuwa.config import ParamsError, load_params, overlay

EXPERIMENTS = sorted((REPO / "experiments").glob("*.yaml"))


def test_overlay_merges_mappings_and_replaces_everything_else():
    base = {"grid": {"datasets": ["a", "b"], "seeds": [0]}, "train": {"steps": 10, "batch_size": 4}, "x": 1}
    merged = overlay(base, {"grid": {"seeds": [0, 1, 2]}, "train": {"steps": 99}, "x": {"now": "a mapping"}})
    assert merged == {"grid": {"datasets": ["a", "b"], "seeds": [0, 1, 2]}, "train": {"steps": 99, "batch_size": 4},
                      "x": {"now": "a mapping"}}
    assert base["grid"]["seeds"] == [0] and base["train"]["steps"] == 10  # the base is not changed


def test_an_experiment_file_extends_params(tmp_path):
    (tmp_path / "experiments").mkdir()
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    experiment = tmp_path / "experiments" / "more_seeds.yaml"
    experiment.write_text("extends: ../params.yaml\ngrid: {seeds: [0, 1, 2, 3, 4]}\ntrain: {steps: 7}\n")
    params = load_params(experiment)
    base = load_params(tmp_path / "params.yaml")
    assert params["grid"]["seeds"] == [0, 1, 2, 3, 4] and params["train"]["steps"] == 7
    assert params["grid"]["datasets"] == base["grid"]["datasets"]
    assert params["train"]["batch_size"] == base["train"]["batch_size"] and "extends" not in params
    # an error in the merged parameters names both files
    experiment.write_text("extends: ../params.yaml\ngrid: {seeds: [-1]}\n")
    with pytest.raises(ParamsError, match=r"more_seeds.yaml \(extends .*params.yaml\): grid.seeds"):
        load_params(experiment)


@pytest.mark.parametrize("text, phrase", [
    ("extends: ../absent.yaml\n", "absent.yaml: parameter file not found (named by 'extends' in"),
    ("extends: [a]\n", "extends: expected the path of the params file this one overlays"),
    ("extends: loop.yaml\n", "extends this file again (a cycle)"),
])
def test_a_bad_extends_is_a_clear_error(tmp_path, text, phrase):
    (tmp_path / "loop.yaml").write_text(text)
    with pytest.raises(ParamsError, match=re.escape(phrase)):
        load_params(tmp_path / "loop.yaml")


def planned(tmp_path: Path, experiment: Path) -> dict[str, int]:
    """Snakemake's dry run of ``experiment`` in a copy of the workflow whose data sources are
    placeholders (a dry run reads no data): the job count of each rule."""
    work = tmp_path / "work"
    (work / "experiments").mkdir(parents=True)
    shutil.copy(REPO / "Snakefile", work / "Snakefile")
    shutil.copytree(REPO / "workflow", work / "workflow", symlinks=False, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, entry in params["datasets"].items():
        if "source" in entry:
            (work / "placeholders" / name).mkdir(parents=True)
            (work / "placeholders" / name / "PLACEHOLDER").write_text("a dry run reads no data\n")
            entry["source"] = f"placeholders/{name}"
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for path in EXPERIMENTS:  # an experiment file may extend another
        shutil.copy(path, work / "experiments" / path.name)
    result = subprocess.run(["snakemake", "--dry-run", "--cores", "1", "--configfile", f"experiments/{experiment.name}"],
                            cwd=work, env=tool_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)\s*$", result.stdout, flags=re.M)}


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=[path.stem for path in EXPERIMENTS])
def test_each_experiment_file_plans_its_grid(tmp_path, experiment):
    params = load_params(experiment)
    grid = params["grid"]
    cells = 1
    for key in ("datasets", "tasks", "train_percents", "backbones", "variants", "seeds"):
        cells *= len(grid[key])
    jobs = planned(tmp_path, experiment)
    assert jobs["train"] == cells
    if experiment.stem == "table1":  # the paper's Table 1: eight backbones x six datasets x Ori, +Nuwa and controls
        assert jobs["train"] >= 8 * 6 * 3 * 5


def test_nuwa_params_writes_the_merged_file_dvc_reads(tmp_path):
    from nuwa import cli

    out = tmp_path / "params.yaml"
    assert cli.main(["params", str(REPO / "experiments" / "scarcity_cpu.yaml"), "--out", str(out)]) == 0
    assert load_params(out) == load_params(REPO / "experiments" / "scarcity_cpu.yaml")
    assert "extends" not in yaml.safe_load(out.read_text())
