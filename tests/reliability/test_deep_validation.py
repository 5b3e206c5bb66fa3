"""Validation that reaches below the surface: what a later stage would refuse, `nuwa validate`
refuses first (tests/reliability/test_hostile_params.py holds the refused files, each with its
one line; these are the mechanisms behind them).

* Each backbone's presets and the checks its builder runs first are torch-free
  (nuwa.backbones._specs.<kind>), so params validation checks every backbone entry on every grid
  dataset and task without importing torch (Snakemake validates each time it reads the Snakefile).
  A seeded fuzz shows they refuse exactly what building the model (on torch's meta device) refuses.
* ``load_params(models=True)`` also builds the grid's backbones on the meta device: the checks
  of every module's constructor, and a bound on the model's size, with no memory and no draw.
* YAML aliases are counted as the copies Snakemake and DVC make of them, in linear time.
"""

from __future__ import annotations

import importlib
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, TINY_PARAMS, tool_env
from nuwa import config
from nuwa.backbones import backbone_kinds, backbone_spec
from nuwa.backbones._specs import resolve_hparams
from nuwa.config import ParamsError, load_params

GLYPHS_SHAPE = "datasets.moving_glyphs (4 -> 4 frames of 16 x 16)"


def _tiny() -> dict:
    return yaml.safe_load(TINY_PARAMS.read_text())


def _write(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _with_backbone(tmp_path: Path, name: str, entry: dict) -> Path:
    params = _tiny()
    params["backbones"][name] = entry
    params["grid"]["backbones"].append(name)
    return _write(tmp_path / "params.yaml", params)


def test_every_backbone_has_a_torch_free_spec_that_its_builder_uses():
    for kind in backbone_kinds():
        spec = backbone_spec(kind)
        assert spec is not None, kind
        module = importlib.import_module(f"nuwa.backbones.{kind}")
        assert module.PRESETS is spec.PRESETS, kind  # one table of presets, not a copy
        keys = {size: set(hparams) for size, hparams in spec.PRESETS.items()}
        assert len({frozenset(k) for k in keys.values()}) == 1, f"{kind}: presets with other keys: {keys}"
    from nuwa.backbones import ENTRY_KEYS, earthformer
    from nuwa.backbones._specs import earthformer as earthformer_spec
    from nuwa.train import PIPELINE_KEYS

    assert tuple(earthformer._ACTIVATIONS) == earthformer_spec.ACTIVATIONS
    # the keys of a backbone entry that are not the builder's: as `nuwa train` strips them
    assert set(config.PIPELINE_KEYS) == set(PIPELINE_KEYS) and set(ENTRY_KEYS) == {*PIPELINE_KEYS, "size"}


def test_params_validation_finds_a_backbone_error_without_importing_torch(tmp_path):
    path = _with_backbone(tmp_path, "vit", {"kind": "vit", "size": "small", "num_heads": 3})
    code = ("import sys\nfrom nuwa.config import ParamsError, load_params\ntry:\n    load_params(sys.argv[1])\n"
            "except ParamsError as error:\n    print(error)\nprint('torch' in sys.modules, 'timm' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True,
                            env=tool_env())
    assert result.stdout.splitlines() == [
        f"{path}: backbones.vit: cannot be built for {GLYPHS_SHAPE}: vit: hid_T=64 is not divisible by num_heads=3",
        "False False"]


# Values each kind of hyperparameter is drawn from: small, odd, even, zero, wrong lengths, other patterns.
FUZZ_INTS = [0, 1, 2, 3, 5, 6, 7, 9, 12, 16]
FUZZ_STRINGS = ["full", "axial", "divided_st", "video_swin_2x8", "cross_2x2", "cross_4x4_lg", "spatial_lg_v1",
                "axial_space_dilate_2", "nope", "gelu", "relu", "t+hw", "zeros", "ignore", "last"]
FUZZ_SHAPES = [((4, 1, 16, 16), 4, 1), ((10, 1, 32, 32), 10, 1), ((6, 1, 20, 28), 6, 1), ((4, 1, 4, 4), 4, 4),
               ((3, 1, 9, 15), 5, 1)]


def _fuzz_value(rng: random.Random, preset):
    if isinstance(preset, bool):
        return rng.choice([True, False])
    if isinstance(preset, int):
        return rng.choice(FUZZ_INTS)
    if isinstance(preset, float):
        return rng.choice([0.0, 0.5, 1.0, 1.5, 2.0])
    if isinstance(preset, list):
        return [rng.choice([1, 2, 3, 4, 8, 16]) for _ in range(rng.choice([len(preset), len(preset), 1, 3]))]
    if isinstance(preset, str):
        return rng.choice([preset, *FUZZ_STRINGS])
    return rng.choice([None, 1, 2, 4, 8])


@pytest.mark.parametrize("kind", backbone_kinds())
def test_the_torch_free_checks_refuse_what_building_the_model_refuses(kind):
    """A seeded fuzz over each backbone's hyperparameters and a few frame shapes: the spec's
    check passes exactly when building the model on the meta device succeeds (3,000 draws found
    no disagreement while this was written; 16 per kind run here)."""
    from nuwa.backbones import build_on_meta

    rng, spec = random.Random(f"deep-validation-{kind}"), backbone_spec(kind)
    outcomes = {True: 0, False: 0}
    for size in ("small", "reference"):
        preset = spec.PRESETS[size]
        for _ in range(8):
            overrides = {key: _fuzz_value(rng, preset[key]) for key in rng.sample(sorted(preset), rng.choice([1, 2]))}
            in_shape, out_frames, scale = rng.choice(FUZZ_SHAPES)
            try:
                spec.check(resolve_hparams(kind, spec.PRESETS, size, overrides), in_shape, out_frames, scale)
                checked = None
            except Exception as exc:  # noqa: BLE001
                checked = exc
            try:
                build_on_meta(kind, in_shape=in_shape, out_frames=out_frames, scale=scale, size=size,
                              max_modules=3000, **overrides)
                built = None
            except Exception as exc:  # noqa: BLE001
                built = exc
            assert (checked is None) == (built is None), (size, overrides, in_shape, out_frames, scale, checked, built)
            outcomes[checked is None] += 1
    assert outcomes[False] > 0  # the draws do reach the checks


def test_models_true_builds_on_the_meta_device_and_bounds_the_model(tmp_path):
    import torch

    wide = _with_backbone(tmp_path, "vit", {"kind": "vit", "size": "small", "hid_T": 65536})
    load_params(wide)  # every hyperparameter within its bounds: the torch-free checks let it through
    state = torch.get_rng_state()
    with pytest.raises(ParamsError) as error:
        load_params(wide, models=True)
    assert str(error.value) == (f"{wide}: backbones.vit: more than 1,000,000,000 parameters for {GLYPHS_SHAPE} "
                                "(allowed: at most 1,000,000,000 parameters and 10,000 modules in a model)")
    deep = _with_backbone(tmp_path, "vit", {"kind": "vit", "size": "small", "N_T": 2000})
    started = time.perf_counter()
    with pytest.raises(ParamsError) as error:
        load_params(deep, models=True)
    assert str(error.value) == (f"{deep}: backbones.vit: more than 10,000 modules for {GLYPHS_SHAPE} "
                                "(allowed: at most 1,000,000,000 parameters and 10,000 modules in a model)")
    assert time.perf_counter() - started < 10  # stopped at the limit, not after 2,000 blocks
    # the paper's transfer, with the tiny upstream ViT's shapes: built, and the upstream's blocks loaded, on meta
    transfer = _with_backbone(tmp_path, "vit", {"kind": "vit", "size": "small", "init_from_upstream": True,
                                                "hid_T": 16, "N_T": 1, "num_heads": 2, "mlp_ratio": 2.0})
    assert load_params(transfer, models=True)["backbones"]["vit"]["init_from_upstream"] is True
    assert torch.equal(torch.get_rng_state(), state)  # no draw made


def test_repository_params_pass_the_deep_checks():
    """The paper's Table 1 file: all eight backbones at their reference sizes, and vit's transfer."""
    params = load_params(REPO / "experiments" / "table1.yaml", models=True)
    assert len(params["grid"]["backbones"]) == 8


def test_aliases_are_counted_in_linear_time_and_merge_keys_still_work(tmp_path):
    levels = 40  # 10**40 values once copied out
    items = ["&a0 [" + ", ".join(["1"] * 10) + "]"]
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    path = tmp_path / "params.yaml"
    path.write_text(TINY_PARAMS.read_text() + "bomb: [" + ", ".join(items) + "]\n")
    started = time.perf_counter()
    with pytest.raises(ParamsError, match=r"bomb: alias \*a3 at line 93 takes the file past 100,000 keys and values"):
        load_params(path)
    assert time.perf_counter() - started < 1
    # experiments/table2_cpu.yaml merges an anchored dataset entry into two others
    datasets = load_params(REPO / "experiments" / "table2_cpu.yaml")["datasets"]
    assert datasets["pollutant64_o8"] == {**datasets["pollutant64_o6"], "output_frames": 8}


def test_plain_values_count_too(tmp_path, monkeypatch):
    path = tmp_path / "params.yaml"
    path.write_text(TINY_PARAMS.read_text())
    monkeypatch.setattr(config, "MAX_YAML_VALUES", 300)
    load_params(path)  # 257 keys and values
    monkeypatch.setattr(config, "MAX_YAML_VALUES", 200)
    with pytest.raises(ParamsError) as error:
        load_params(path)
    assert str(error.value) == (f"{path}: train.eval_every: more than 200 keys and values by line 75 (allowed: at "
                                "most 200 in a params file)")


def test_stage_code_refuses_a_layer_outside_the_upstream_vit():
    """A layer past the depth used to wrap around (`layer % depth`: 7 on one block meant block 0)."""
    import numpy as np

    from nuwa.saliency import saliency_dataset
    from nuwa.upstream import chosen_layers

    assert chosen_layers([-1, 0], 2) == [0, 1]
    message = "layer 7 is not a block of the upstream ViT (depth 1; allowed: -1 to 0, negative counting from the last)"
    with pytest.raises(ValueError) as error:
        chosen_layers([7], 1)
    assert str(error.value) == message
    with pytest.raises(ValueError) as error:
        saliency_dataset(np.arange(1), np.zeros((1, 1, 2, 2)), 4, [7], 1, "x")
    assert str(error.value) == message


@pytest.mark.parametrize("tag", ["!!bool -1", "!!timestamp 0.2"])
def test_a_tag_that_cannot_read_its_value_is_one_line_with_the_line(tmp_path, tag):
    """PyYAML's bool and timestamp constructors fail with KeyError and AttributeError (found by
    the params mutations: a line naming nothing, or a traceback)."""
    path = tmp_path / "params.yaml"
    path.write_text(TINY_PARAMS.read_text().replace("seeds: [0]", f"seeds: [{tag}]"))
    with pytest.raises(ParamsError) as error:
        load_params(path)
    value = tag.split()[1]
    assert str(error.value) == (f"{path}: line 10, column 11: not valid YAML: tag:yaml.org,2002:{tag[2:].split()[0]} "
                                f"cannot be made from {value!r}")


def test_csi_thresholds_that_name_one_threshold_twice_are_refused(tmp_path):
    """[0.5, 0.5] passed validate and was refused by `baseline` only (found by the params mutations)."""
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["datasets"]["moving_glyphs"]["csi_thresholds"] = [0.5, 0.5000001]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError) as error:
        load_params(path)
    assert str(error.value) == (f"{path}: datasets.moving_glyphs.csi_thresholds: [0.5, 0.5000001] name the same "
                                "threshold twice (as the metric keys write them: ['0.5', '0.5']; allowed: distinct "
                                "thresholds)")


@pytest.mark.parametrize("name", ["nan", "null"])
def test_names_csv_readers_take_for_missing_are_reserved(tmp_path, name):
    """A dataset named `nan` ran and drew an empty lead-time figure (found by the params mutations)."""
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["datasets"][name] = params["datasets"].pop("moving_glyphs")
    params["grid"]["datasets"] = [name]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError) as error:
        load_params(path)
    assert str(error.value) == (f"{path}: datasets: name {name!r} is reserved (CSV readers such as pandas read it as a "
                                "missing value: the tables and figures would lose the name; reserved: nan, null)")

