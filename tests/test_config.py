"""Bad parameters are refused before anything runs, with a message naming key, value and rule."""

from __future__ import annotations

import copy
import re
import subprocess
import sys

import pytest

from conftest import REPO, TINY_PARAMS, make_workdir, tool_env
from nuwa.config import ParamsError, load_params, validate_params


def _set(params, dotted, value):
    node = params
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    node[last] = value


BAD = [
    ("grid.backbones", ["simvp", "no_such_net"], "no_such_net"),
    ("grid.datasets", ["moving_glyphs", "nowhere"], "nowhere"),
    ("bank.environment_ratio", 1.5, "bank.environment_ratio"),
    ("bank.environment_ratio", 0.0, "bank.environment_ratio"),
    ("bank.mix_fraction", 1.5, "bank.mix_fraction"),
    ("variants.nuwa.mix_fraction", -0.1, "variants.nuwa.mix_fraction"),
    ("variants.nuwa.environment_ratio", -0.2, "variants.nuwa.environment_ratio"),
    ("datasets.moving_glyphs.patch_size", 5, "patch_size"),
    ("train.steps", 0, "train.steps"),
    ("train.steps", "many", "train.steps"),
    ("grid.seeds", [1.5], "grid.seeds"),
    ("grid.baselines", ["climatology"], "grid.baselines"),
    ("evaluation.comparisons", [["nuwa", "nowhere"]], "evaluation.comparisons.0: 'nowhere' has no entry under variants"),
    ("evaluation.comparisons", [["nuwa", "nuwa"]], "compares a variant with itself"),
    ("evaluation.block_windows", 0, "evaluation.block_windows"),
    ("grid.seeds", [], "grid.seeds"),
    ("pretrain.seed", -1, "pretrain.seed"),
    ("grid.variants", [], "grid.variants"),
    ("grid.backbones", ["simvp", "simvp"], "grid.backbones"),
    ("pretrain.objective", "denoise", "denoise"),
    ("datasets.moving_glyphs.split", {"train": 0.5, "val": 0.1, "test": 0.1}, "split"),
    ("datasets.moving_glyphs.output_frames", 400, "output_frames"),
]


@pytest.mark.parametrize("key,value,expected", BAD)
def test_bad_values_are_named(tiny_params, key, value, expected):
    params = copy.deepcopy(tiny_params)
    _set(params, key, value)
    with pytest.raises(ParamsError) as error:
        validate_params(params)
    assert expected in str(error.value)


def test_typo_key_is_named_with_the_allowed_keys(tiny_params):
    tiny_params["saliency"]["enviroment_ratio"] = 0.3
    with pytest.raises(ParamsError, match=r"saliency: unknown key 'enviroment_ratio' \(allowed: batch_size, "
                                          r"layers\)"):
        validate_params(tiny_params)


@pytest.mark.parametrize("key,value,phrase", [
    ("seed", 0, "seed: moved: the training seeds are grid.seeds"),
    ("grid.replicate_seeds", [1, 2], "grid.replicate_seeds: moved: list every training seed in grid.seeds"),
    ("saliency.environment_ratio", 0.25, "saliency.environment_ratio: moved: the environment ratio belongs to the "
                                         "bank variants"),
])
def test_keys_of_the_old_layout_say_where_they_moved(tiny_params, key, value, phrase):
    _set(tiny_params, key, value)
    with pytest.raises(ParamsError, match=re.escape(phrase)):
        validate_params(tiny_params)


@pytest.mark.parametrize("name", ["../x", "a/b", "a;b", "$(x)", "with space", "Мoving"])
def test_names_that_could_become_paths_or_shell_words_are_refused(tiny_params, name):
    tiny_params["variants"][name] = {"method": "none"}
    with pytest.raises(ParamsError, match="is not allowed"):
        validate_params(tiny_params)


@pytest.mark.parametrize("entry, phrase", [
    ({"method": "mixup"}, "variants.extra: method 'mixup' needs mixup_alpha"),
    ({"method": "saliency", "mixup_alpha": 0.2}, "variants.extra.mixup_alpha: only a variant with method 'mixup'"),
    ({"method": "mixup", "mixup_alpha": 0.2, "environment_ratio": 0.3},
     "variants.extra: method 'mixup' builds no bank, so environment_ratio would be ignored"),
    ({"method": "none", "copies": 2}, "variants.extra: method 'none' builds no bank, so copies would be ignored"),
])
def test_variant_keys_its_method_does_not_read_are_refused(tiny_params, entry, phrase):
    tiny_params["variants"]["extra"] = entry
    with pytest.raises(ParamsError, match=re.escape(phrase)):
        validate_params(tiny_params)


def test_default_tiny_and_full_params_are_valid():
    load_params(REPO / "params.yaml")
    load_params(TINY_PARAMS)
    full = load_params(REPO / "experiments" / "table1.yaml")
    assert len(full["grid"]["backbones"]) == 8  # the paper's Table 1


def test_validating_params_imports_no_heavy_library():
    """Snakemake validates params.yaml each time it parses the Snakefile (every dry run, every
    cluster job): the dataset and backbone kinds and schemas come without torch, xarray, dask..."""
    heavy = ("torch", "timm", "xarray", "dask", "matplotlib", "h5py", "pysteps", "netCDF4", "numba")
    code = ("import sys; from nuwa.config import load_params; load_params(sys.argv[1]); "
            f"print(' '.join(name for name in {heavy!r} if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code, str(REPO / "experiments" / "table1.yaml")], capture_output=True,
                            text=True, check=True, env=tool_env())
    assert result.stdout.strip() == "", f"validation imported {result.stdout.strip()}"


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ParamsError, match="nope.yaml: parameter file not found"):
        load_params(tmp_path / "nope.yaml")


@pytest.mark.slow
def test_cli_snakemake_and_dvc_give_the_same_error(tmp_path, tiny_params):
    tiny_params["bank"]["environment_ratio"] = 1.5
    directory = make_workdir(tmp_path, tiny_params)
    expected = "bank.environment_ratio: 1.5 is out of range (allowed: > 0 and < 1)"
    cli = subprocess.run(["nuwa", "validate"], cwd=directory, env=tool_env(), capture_output=True, text=True)
    assert cli.returncode == 2 and expected in cli.stderr
    smk = subprocess.run(["snakemake", "--cores", "1"], cwd=directory, env=tool_env(), capture_output=True, text=True)
    assert smk.returncode != 0 and expected in smk.stdout + smk.stderr
    subprocess.run(["git", "init", "-q"], cwd=directory, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=directory, env=tool_env(), check=True)
    dvc = subprocess.run(["dvc", "repro"], cwd=directory, env=tool_env(), capture_output=True, text=True)
    assert dvc.returncode != 0 and expected in dvc.stdout + dvc.stderr
    assert not (directory / "data").exists() and not (directory / "results").exists()
