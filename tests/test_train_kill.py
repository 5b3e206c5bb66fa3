"""`nuwa train` killed with SIGKILL mid-run leaves no result behind, and its rerun resumes from
the last checkpoint to exactly the numbers of an uninterrupted run; a checkpoint also resumes
across processes (torchrun), to the single-process numbers up to rounding."""

from __future__ import annotations

import json
import math
import random
import re
import subprocess
import time

import pandas as pd
import pytest
import torch
import xarray as xr
import yaml

import nuwa.train
from conftest import TINY_PARAMS, tool_env
from nuwa import cli, grid
from nuwa.io import load_checkpoint

STEPS, CHECKPOINT_EVERY = 40, 2
KILL_SEED = 20240611
RESULTS = grid.RUN_FILES  # what a finished run holds


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("inputs")
    data, bank = directory / "data.nc", directory / "bank.nc"
    common = ["--params", str(TINY_PARAMS), "--dataset", "moving_glyphs", "--threads", "1"]
    assert cli.main(["ingest", *common, "--out", str(data)]) == 0
    assert cli.main(["bank", *common, "--variant", "ori", "--seed", "0", "--data", str(data), "--out", str(bank)]) == 0
    return data, bank


def test_sigkilled_training_resumes_to_the_uninterrupted_result(inputs, tmp_path):
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["train"].update(steps=STEPS, checkpoint_every=CHECKPOINT_EVERY, eval_every=5)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    common = ["--params", str(params_file), "--dataset", "moving_glyphs", "--threads", "1"]
    data, bank = inputs

    def command(out_dir):
        return ["nuwa", "train", *common, "--backbone", "simvp", "--variant", "ori", "--seed", "0", "--device", "cpu",
                "--data", str(data), "--bank", str(bank), "--out-dir", str(out_dir)]

    reference = tmp_path / "uninterrupted"
    subprocess.run(command(reference), env=tool_env(), capture_output=True, text=True, check=True, timeout=300)
    training_seconds = float(pd.read_csv(reference / "history.csv")["seconds"].iloc[-1])

    # the run to kill: SIGKILL at a random moment after its first checkpoint, within training
    out = tmp_path / "killed"
    checkpoint = out / "checkpoint.pt"
    delay = random.Random(KILL_SEED).uniform(0.05, 0.5) * training_seconds
    print(f"training takes {training_seconds:.2f} s; SIGKILL {delay:.3f} s after the first checkpoint")
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(command(out), env=tool_env(), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while not checkpoint.exists():
                assert process.poll() is None, "the run ended before writing a checkpoint"
                assert time.monotonic() < deadline, "no checkpoint after 120 s"
                time.sleep(0.002)
            time.sleep(delay)
            process.kill()  # SIGKILL: no clean-up code runs
        finally:
            process.kill()
            process.wait()
    assert process.returncode == -9, f"not killed mid-run (exit {process.returncode}, delay {delay:.3f} s)"
    assert checkpoint.exists()
    for name in RESULTS:  # a finished run's files are absent, not half-written
        assert not (out / name).exists(), name
    # a writer killed mid-write leaves at most a hidden temporary beside its destination;
    # plant one of each kind, as a kill inside a checkpoint or result write would leave it
    assert all(p.name.startswith(".") for p in out.glob("*.tmp"))
    for name in ("checkpoint.pt", "model.pt", "metrics.json"):
        (out / f".{name}.killed00.tmp").write_bytes(b"partial")
    killed_at = int(load_checkpoint(checkpoint)["state"]["step"])

    resumed = subprocess.run(command(out), env=tool_env(), capture_output=True, text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    match = re.search(r"resuming from \S+ at step (\d+) of (\d+)", resumed.stdout)
    assert match, resumed.stdout
    step = int(match.group(1))
    print(f"resumed at step {step} of {match.group(2)}")
    assert 0 < step < STEPS and step % CHECKPOINT_EVERY == 0 and step == killed_at

    assert sorted(p.name for p in out.iterdir()) == sorted(RESULTS)  # no checkpoint, no temporary left
    assert (out / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()
    weights, expected = (load_checkpoint(d / "model.pt")["state_dict"] for d in (out, reference))
    assert weights.keys() == expected.keys()
    for name in expected:
        assert torch.equal(weights[name], expected[name]), name
    history, expected_history = (pd.read_csv(d / "history.csv") for d in (out, reference))
    pd.testing.assert_frame_equal(history.drop(columns="seconds"), expected_history.drop(columns="seconds"))
    for name in ("examples.nc", "test_losses.nc"):
        with xr.open_dataset(out / name) as got, xr.open_dataset(reference / name) as want:
            xr.testing.assert_identical(got.load(), want.load())


def test_a_checkpoint_resumes_under_torchrun(inputs, tmp_path, monkeypatch):
    """Interrupted in one process after the checkpoint of step 3 of 6, finished by two (gloo)."""
    data, bank = inputs
    arguments = ["train", "--params", str(TINY_PARAMS), "--dataset", "moving_glyphs", "--backbone", "convlstm",
                 "--variant", "ori", "--seed", "0", "--threads", "1", "--device", "cpu", "--data", str(data), "--bank", str(bank)]
    reference, out = tmp_path / "uninterrupted", tmp_path / "resumed"
    assert cli.main([*arguments, "--out-dir", str(reference)]) == 0

    real_loss, calls = nuwa.train.training_loss, {"n": 0}

    def dying_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # after the checkpoint of step 3, before step 6's
            raise KeyboardInterrupt("killed")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(nuwa.train, "training_loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        cli.main([*arguments, "--out-dir", str(out)])
    monkeypatch.undo()
    assert (out / "checkpoint.pt").exists() and not (out / "metrics.json").exists()

    command = ["torchrun", "--standalone", "--nnodes", "1", "--nproc_per_node", "2", "-m", "nuwa", *arguments,
               "--out-dir", str(out)]
    result = subprocess.run(command, env=dict(tool_env(), OMP_NUM_THREADS="1"), capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"resuming from \S+ at step 3 of 6 \(checkpoint written by 1 process", result.stdout), \
        result.stdout
    got, want = (json.loads((d / "metrics.json").read_text()) for d in (out, reference))
    assert got["world_size"] == 2 and got["best_step"] == want["best_step"]
    for key in ("mse", "mae", "ssim", "psnr", "best_val_loss"):
        assert math.isclose(got[key], want[key], rel_tol=1e-5), key
    weights, expected = (load_checkpoint(d / "model.pt")["state_dict"] for d in (out, reference))
    for name in expected:
        assert torch.allclose(weights[name], expected[name], rtol=1e-4, atol=1e-6), name
    assert not (out / "checkpoint.pt").exists()
