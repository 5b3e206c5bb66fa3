"""Data-parallel training: torchrun with 2 gloo processes on CPU ends where one process ends.

Both runs draw the same global batches (4 samples) from the same seed; under DDP each rank
trains on 2 of them and the gradients are averaged. What differs is only the order of
floating-point sums (the loss mean over 2 samples, then the all-reduce average, against one
mean over 4): about 1e-7 relative per gradient, which after the tiny config's 6 Adam steps
leaves weights within ~1e-7 absolute and test metrics within ~1e-7 relative of each other
(measured: 1.2e-7 and 4.6e-8 for simvp, 1.5e-8 and 1.4e-9 for convlstm). The tolerances
below (weights rtol 1e-4 atol 1e-6, metrics rel 1e-5) leave that a wide margin, while a change
of what is trained on moves weights by ~4e-3 (the size of a few Adam steps) and the validation
loss by ~1e-3 relative; measured with each rank training on the same half batch, with no
gradient average, and with the scheduled-sampling mask drawn per rank instead of per batch.
(A rank that trained on the whole global batch would, by design, not be caught: the average
of equal full-batch gradients is the full-batch gradient; it only costs compute.)
"""

from __future__ import annotations

import json
import math
import subprocess
import time

import pandas as pd
import pytest
import torch
import yaml

from conftest import TINY_PARAMS, tool_env
from nuwa import cli, grid
from nuwa.io import load_checkpoint

WEIGHTS = {"rtol": 1e-4, "atol": 1e-6}
METRICS_REL = 1e-5


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The tiny dataset and the banks of two variants (ori: empty; random: augmented windows)."""
    directory = tmp_path_factory.mktemp("ddp")
    common = ["--params", str(TINY_PARAMS), "--dataset", "moving_glyphs", "--threads", "1"]
    assert cli.main(["ingest", *common, "--out", str(directory / "data.nc")]) == 0
    for variant in ("ori", "random"):
        assert cli.main(["bank", *common, "--variant", variant, "--seed", "0", "--data", str(directory / "data.nc"),
                         "--out", str(directory / f"bank_{variant}.nc")]) == 0
    return directory


def train_arguments(directory, backbone, variant, out_dir, params=TINY_PARAMS):
    return ["train", "--params", str(params), "--dataset", "moving_glyphs", "--backbone", backbone,
            "--variant", variant, "--seed", "0", "--threads", "1", "--device", "cpu", "--data", str(directory / "data.nc"),
            "--bank", str(directory / f"bank_{variant}.nc"), "--out-dir", str(out_dir)]


def torchrun(arguments, processes=2):
    env = dict(tool_env(), OMP_NUM_THREADS="1", NUWA_THREADS="1")
    command = ["torchrun", "--standalone", "--nnodes", "1",
               "--nproc_per_node", str(processes), "-m", "nuwa", *arguments]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("backbone, variant", [("simvp", "random"), ("convlstm", "ori")])
def test_two_processes_train_what_one_process_trains(inputs, tmp_path, backbone, variant):
    # simvp on a pool with bank samples; convlstm draws a scheduled-sampling mask every step
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert cli.main(train_arguments(inputs, backbone, variant, single)) == 0
    started = time.perf_counter()
    result = torchrun(train_arguments(inputs, backbone, variant, ddp))
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"torchrun 2 processes: {time.perf_counter() - started:.1f} s")

    one, two = json.loads((single / "metrics.json").read_text()), json.loads((ddp / "metrics.json").read_text())
    assert (one["world_size"], one["backend"]) == (1, "none")
    assert (two["world_size"], two["backend"]) == (2, "gloo")
    assert set(one) == set(two)
    worst = 0.0
    for key, value in one.items():
        if key in ("world_size", "backend"):
            continue
        if isinstance(value, float):
            assert math.isclose(two[key], value, rel_tol=METRICS_REL, abs_tol=1e-12), key
            worst = max(worst, abs(two[key] - value) / max(abs(value), 1e-30))
        else:  # best_step, counts, names: exactly the same
            assert two[key] == value, key
    print(f"metrics: largest relative difference {worst:.2e}")

    weights_one = load_checkpoint(single / "model.pt")["state_dict"]
    weights_two = load_checkpoint(ddp / "model.pt")["state_dict"]
    assert weights_one.keys() == weights_two.keys()
    largest = max(float((weights_two[k].double() - weights_one[k].double()).abs().max()) for k in weights_one)
    print(f"weights: largest absolute difference {largest:.2e}")
    for name, tensor in weights_one.items():
        assert torch.allclose(weights_two[name], tensor, **WEIGHTS), name

    history_one, history_two = pd.read_csv(single / "history.csv"), pd.read_csv(ddp / "history.csv")
    for column in ("train_loss", "val_loss", "learning_rate"):
        pd.testing.assert_series_equal(history_two[column], history_one[column], rtol=METRICS_REL)
    # only rank 0 wrote, and nothing else is left behind
    assert sorted(p.name for p in ddp.iterdir()) == sorted(grid.RUN_FILES)


def test_a_batch_that_does_not_split_evenly_is_refused(inputs, tmp_path, monkeypatch, capsys):
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["train"]["batch_size"] = 5
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    # what torchrun --nproc_per_node 2 sets; the check comes before any process group is joined
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert cli.main(train_arguments(inputs, "simvp", "ori", tmp_path / "run", params=path)) == 2
    error = capsys.readouterr().err
    assert "train.batch_size 5 is not divisible by the number of processes 2" in error
    assert not (tmp_path / "run").exists()
    assert not torch.distributed.is_initialized()


def test_world_size_one_under_torchrun_is_the_single_process_run(monkeypatch):
    from nuwa import distributed

    monkeypatch.setenv("WORLD_SIZE", "1")
    context = distributed.setup("cpu")
    assert context == distributed.SINGLE and not torch.distributed.is_initialized()
    assert distributed.shard_rows(4, distributed.Context(world_size=2, rank=1)) == slice(2, 4)
    with pytest.raises(ValueError, match="not divisible"):
        distributed.shard_rows(6, distributed.Context(world_size=4, rank=0))
