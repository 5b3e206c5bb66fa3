"""Training: a killed run resumes from its checkpoint and ends where an uninterrupted run ends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nuwa.train as train_module
from nuwa.ingest import ingest
from nuwa.io import write_netcdf
from nuwa.windows import load_series


@pytest.fixture
def tiny_series(tiny_params, tmp_path):
    config = tiny_params["datasets"]["moving_glyphs"]
    path = tmp_path / "glyphs.nc"
    write_netcdf(ingest("moving_glyphs", config), path)
    return load_series(path)


@pytest.mark.parametrize("backbone", ["simvp", "convlstm"])
def test_killed_training_resumes_to_the_same_result(tiny_params, tiny_series, tmp_path, monkeypatch, backbone):
    train_config = dict(tiny_params["train"], steps=8, eval_every=2, checkpoint_every=3)
    arguments = dict(dataset_name="moving_glyphs", dataset_config=tiny_params["datasets"]["moving_glyphs"],
                     backbone_name=backbone, backbone_config=tiny_params["backbones"][backbone], variant="ori",
                     train_config=train_config, seed=0)
    _, history, metrics, _ = train_module.train_cell(tiny_series, **arguments)

    checkpoint = tmp_path / "checkpoint.pt"
    real_loss, calls = train_module.training_loss, {"n": 0}

    def dying_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # after the checkpoint of step 3, before step 6's
            raise KeyboardInterrupt("killed")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_module, "training_loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        train_module.train_cell(tiny_series, checkpoint_path=checkpoint, **arguments)
    assert checkpoint.exists()
    monkeypatch.setattr(train_module, "training_loss", real_loss)
    _, resumed_history, resumed_metrics, _ = train_module.train_cell(tiny_series, checkpoint_path=checkpoint,
                                                                     **arguments)
    for key in ("mse", "mae", "ssim", "psnr", "best_step", "best_val_loss"):
        assert resumed_metrics[key] == metrics[key], key
    np.testing.assert_array_equal(resumed_history["train_loss"].to_numpy(), history["train_loss"].to_numpy())


def test_resume_changes_nothing_when_the_checkpoint_is_absent(tiny_params, tiny_series):
    arguments = dict(dataset_name="moving_glyphs", dataset_config=tiny_params["datasets"]["moving_glyphs"],
                     backbone_name="simvp", backbone_config=tiny_params["backbones"]["simvp"], variant="ori",
                     train_config=dict(tiny_params["train"], steps=4), seed=0)
    first = train_module.train_cell(tiny_series, **arguments)[2]
    second = train_module.train_cell(tiny_series, **arguments)[2]
    assert first["mse"] == second["mse"]
    torch.manual_seed(123)  # global RNG state must not leak into a cell: it seeds itself
    third = train_module.train_cell(tiny_series, **arguments)[2]
    assert third["mse"] == first["mse"]


def test_a_checkpoint_holds_everything_a_resumed_run_draws_from(tiny_params, tiny_series, tmp_path):
    import random

    from nuwa.io import load_checkpoint, save_checkpoint

    checkpoint = tmp_path / "checkpoint.pt"
    arguments = dict(dataset_name="moving_glyphs", dataset_config=tiny_params["datasets"]["moving_glyphs"],
                     backbone_name="convlstm", backbone_config=tiny_params["backbones"]["convlstm"], variant="ori",
                     train_config=dict(tiny_params["train"], steps=4, checkpoint_every=2), seed=0)
    train_module.train_cell(tiny_series, checkpoint_path=checkpoint, **arguments)
    saved = load_checkpoint(checkpoint)  # weights_only: tensors and plain containers
    assert set(saved) == {"model", "optimiser", "scheduler", "generator", "rng", "world_size", "state"}
    assert saved["world_size"] == 1 and len(saved["rng"]) == 1
    assert set(saved["rng"][0]) == {"torch", "numpy", "python"}  # and "cuda" on a GPU
    assert set(saved["state"]) == {"step", "history", "best_val", "best_step", "best_state", "seconds"}
    assert saved["state"]["step"] == 2 and len(saved["state"]["history"]) == 2

    # the global RNGs survive a save and a weights_only load
    cpu = torch.device("cpu")
    state = train_module.rng_state(cpu)
    draws = (torch.rand(3), np.random.random(3), [random.random() for _ in range(3)])
    save_checkpoint({"rng": [state]}, tmp_path / "rng.pt")
    train_module.set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"][0], cpu)
    assert torch.equal(torch.rand(3), draws[0])
    np.testing.assert_array_equal(np.random.random(3), draws[1])
    assert [random.random() for _ in range(3)] == draws[2]
