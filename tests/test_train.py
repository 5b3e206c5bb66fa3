"""Training: a killed run resumes from its checkpoint and ends where an uninterrupted run ends."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from conftest import TINY_PARAMS, killed_at_loss_call
import nuwa.loader as loader_module
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
    _, history, metrics, _, losses = train_module.train_cell(tiny_series, **arguments)

    checkpoint = tmp_path / "checkpoint.pt"
    # killed after the checkpoint of step 3, before step 6's
    killed_at_loss_call(monkeypatch, 5, lambda: train_module.train_cell(tiny_series, checkpoint_path=checkpoint,
                                                                        **arguments))
    assert checkpoint.exists()
    _, resumed_history, resumed_metrics, _, resumed_losses = train_module.train_cell(
        tiny_series, checkpoint_path=checkpoint, **arguments)
    for key in ("mse", "mae", "ssim", "psnr", "best_step", "best_val_loss"):
        assert resumed_metrics[key] == metrics[key], key
    np.testing.assert_array_equal(resumed_history["train_loss"].to_numpy(), history["train_loss"].to_numpy())
    xr.testing.assert_identical(resumed_losses, losses)  # every test window's losses, not only their means
    assert float(losses["mse"].mean()) == pytest.approx(metrics["mse"], rel=1e-12)
    assert {key: losses.attrs[key] for key in ("dataset", "backbone", "variant", "seed", "window_stride")} == \
        {"dataset": "moving_glyphs", "backbone": backbone, "variant": "ori", "seed": 0, "window_stride": 2}


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
    assert set(saved) == {"model", "optimiser", "scheduler", "generator", "rows", "rng", "world_size", "state"}
    assert set(saved["rows"]) == {"originals", "bank"}
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


class EagerPool:
    """The training pool as it was before the bank was read per batch: every window in memory."""

    def __init__(self, train, bank_inputs=None, bank_sources=None, input_factor=1):
        self.train = train
        originals = torch.stack([train.normalised[s:s + train.input_frames] for s in train.starts])
        sources = np.asarray(train.starts)
        if bank_inputs is not None and len(bank_inputs):
            bank_inputs = np.asarray(bank_inputs)
            augmented = torch.from_numpy(train.series.normalise(bank_inputs.reshape(-1, *bank_inputs.shape[2:])))
            originals = torch.cat([originals, augmented.reshape(bank_inputs.shape)])
            sources = np.concatenate([sources, bank_sources])
        self.inputs, self.sources = originals, sources

    def __len__(self):
        return len(self.sources)

    def batch(self, rows, pin_memory=False, nogil=False):
        return self.inputs[rows], self.train.targets_normalised(self.sources[rows.numpy()])


@pytest.fixture
def bank_files(tiny_params, tiny_series, tmp_path):
    """The random variant's bank of the tiny dataset as `nuwa bank` writes it (augmented contiguous,
    read with positioned reads), the same bank as banks were written before (zlib chunks, read
    through h5py), and its values in memory (xarray)."""
    import xarray as xr

    from nuwa import cli
    from nuwa.windows import select_dataset

    data = tmp_path / "glyphs.nc"  # written by tiny_series
    common = ["--params", str(TINY_PARAMS), "--dataset", "moving_glyphs", "--threads", "1", "--data", str(data)]
    assert cli.main(["bank", *common, "--variant", "random", "--seed", "0", "--out", str(tmp_path / "bank.nc")]) == 0
    assert cli.main(["bank", *common, "--variant", "ori", "--seed", "0", "--out", str(tmp_path / "ori.nc")]) == 0
    train = select_dataset(tiny_series, tiny_params["datasets"]["moving_glyphs"], "train")
    with xr.open_dataset(tmp_path / "bank.nc") as written:
        written = written.load()
    values, sources, copies = (written[name].values for name in ("augmented", "source_index", "copy"))
    # the same values as banks were stored before: zlib-compressed chunks of a few rows
    written.to_netcdf(tmp_path / "bank_chunked.nc", engine="netcdf4",
                      encoding={"augmented": {"zlib": True, "complevel": 4, "contiguous": False,
                                              "chunksizes": (4, *values.shape[1:])}})
    return {"contiguous": tmp_path / "bank.nc", "chunked": tmp_path / "bank_chunked.nc", "ori": tmp_path / "ori.nc",
            "values": values, "sources": sources, "copies": copies, "train": train}


@pytest.mark.parametrize("layout", ["contiguous", "chunked", "array"])
def test_lazy_pool_batches_equal_the_eager_pool_byte_for_byte(bank_files, layout):
    import contextlib

    import h5py

    from nuwa.io import NetCDFRows

    train = bank_files["train"]
    if layout != "array":
        with h5py.File(bank_files[layout]) as handle:
            assert (handle["augmented"].chunks is None) == (layout == "contiguous")
            assert (handle["augmented"].compression is None) == (layout == "contiguous")
    eager = EagerPool(train, bank_files["values"], bank_files["sources"])
    with (contextlib.nullcontext(bank_files["values"].copy()) if layout == "array"
          else NetCDFRows(bank_files[layout], "augmented")) as rows:
        assert layout == "array" or rows.contiguous == (layout == "contiguous")
        lazy = loader_module.TrainingPool(train, rows, bank_files["sources"])
        assert len(lazy) == len(eager) == 2 * len(train)
        n = len(train)
        generator = torch.Generator().manual_seed(0)
        cases = [torch.randint(len(lazy), (16,), generator=generator) for _ in range(20)]
        cases += [torch.tensor([n, n, 0, 2 * n - 1, 0, n + 3]),  # repeats, both ends, mixed
                  torch.arange(n), torch.arange(n, 2 * n).flip(0), torch.tensor([n + 1])]
        for batch_rows in cases:
            (lazy_inputs, lazy_targets), (eager_inputs, eager_targets) = lazy.batch(batch_rows), eager.batch(batch_rows)
            assert lazy_inputs.dtype == eager_inputs.dtype == torch.float32
            assert lazy_inputs.shape == eager_inputs.shape
            assert lazy_inputs.numpy().tobytes() == eager_inputs.numpy().tobytes()
            assert lazy_targets.numpy().tobytes() == eager_targets.numpy().tobytes()
        # nothing was copied up front: the pool holds the reader and 1-D indices, no window
        assert lazy.bank is rows
        assert all(np.ndim(v) <= 1 for k, v in vars(lazy).items()
                   if isinstance(v, (np.ndarray, torch.Tensor)) and k != "bank")


@pytest.mark.parametrize("bank", ["contiguous", "none"])
def test_batches_built_without_the_gil_equal_the_numpy_path_byte_for_byte(bank_files, bank):
    """The compiled batch (bank rows read with pread, normalised in place, windows and targets
    copied, all in one nogil call) gives the numpy path's bytes; a chunked bank falls back."""
    from nuwa import batchkernel
    from nuwa.io import NetCDFRows

    if not batchkernel.available():
        pytest.skip("no pread in the C library here")
    train = bank_files["train"]
    with NetCDFRows(bank_files["contiguous"], "augmented") as rows:
        pool = (loader_module.TrainingPool(train, rows, bank_files["sources"]) if bank == "contiguous"
                else loader_module.TrainingPool(train))
        assert pool._compiled_batches()
        n = len(train)
        generator = torch.Generator().manual_seed(3)
        cases = [torch.randint(len(pool), (16,), generator=generator) for _ in range(20)]
        cases += [torch.arange(len(pool)).flip(0), torch.tensor([0, len(pool) - 1, 0]), torch.tensor([n - 1])]
        for batch_rows in cases:
            expected, compiled = pool.batch(batch_rows), pool.batch(batch_rows, nogil=True)
            for want, got in zip(expected, compiled):
                assert got.shape == want.shape and got.dtype == torch.float32
                assert got.numpy().tobytes() == want.numpy().tobytes()
    with NetCDFRows(bank_files["chunked"], "augmented") as rows:
        assert not loader_module.TrainingPool(train, rows, bank_files["sources"])._compiled_batches()


def test_a_bank_file_cut_short_is_an_error_naming_it_on_the_compiled_path(bank_files, tmp_path):
    import shutil

    from nuwa import batchkernel
    from nuwa.io import DataFileError, NetCDFRows

    if not batchkernel.available():
        pytest.skip("no pread in the C library here")
    train = bank_files["train"]
    copy = tmp_path / "bank_copy.nc"
    shutil.copy(bank_files["contiguous"], copy)
    with NetCDFRows(copy, "augmented") as rows:
        pool = loader_module.TrainingPool(train, rows, bank_files["sources"])
        last = len(pool) - 1
        with open(copy, "r+b") as handle:  # the file shrinks under the open reader
            handle.truncate(rows.offset + (len(rows) - 1) * rows.row_bytes + 10)
        with pytest.raises(DataFileError, match=r"bank_copy.nc: file ends inside variable 'augmented'"):
            pool.batch(torch.tensor([0, last]), nogil=True)


def test_training_from_the_bank_file_gives_the_eager_pool_metrics(tiny_params, tiny_series, bank_files, monkeypatch):
    from nuwa.io import NetCDFRows

    arguments = dict(dataset_name="moving_glyphs", dataset_config=tiny_params["datasets"]["moving_glyphs"],
                     backbone_name="simvp", backbone_config=tiny_params["backbones"]["simvp"], variant="random",
                     train_config=dict(tiny_params["train"], steps=4), seed=0, bank_sources=bank_files["sources"],
                     bank_copies=bank_files["copies"], mix_fraction=0.5)
    with NetCDFRows(bank_files["contiguous"], "augmented") as rows:
        _, history, metrics, _, _ = train_module.train_cell(tiny_series, bank_inputs=rows, **arguments)
    monkeypatch.setattr(train_module, "TrainingPool", EagerPool)
    _, eager_history, eager_metrics, _, _ = train_module.train_cell(tiny_series, bank_inputs=bank_files["values"],
                                                                    **arguments)
    assert metrics["bank_samples"] == len(bank_files["sources"]) > 0
    assert metrics == eager_metrics
    pd_columns = ["train_loss", "val_loss", "learning_rate"]
    assert history[pd_columns].to_numpy().tobytes() == eager_history[pd_columns].to_numpy().tobytes()


def test_an_empty_bank_file_adds_nothing_to_the_pool(bank_files):
    from nuwa.io import NetCDFRows

    train = bank_files["train"]
    with NetCDFRows(bank_files["ori"], "augmented") as rows:
        assert len(rows) == 0 and rows[np.zeros(0, dtype=np.int64)].shape == (0, *rows.shape[1:])
        pool = loader_module.TrainingPool(train, rows, np.zeros(0, dtype=np.int64))
        assert len(pool) == len(train)
        inputs, _ = pool.batch(torch.tensor([0, len(train) - 1]))
        assert inputs.shape == (2, train.input_frames, 1, 16, 16)


def test_a_stale_bank_is_refused_with_a_clear_error(bank_files):
    from nuwa.io import NetCDFRows

    train = bank_files["train"]
    with NetCDFRows(bank_files["contiguous"], "augmented") as rows:
        sources = bank_files["sources"].copy()
        sources[3] = int(train.starts.max()) + 1000  # not a training window
        with pytest.raises(ValueError, match="source window is not a training window .*stale"):
            loader_module.TrainingPool(train, rows, sources)
        with pytest.raises(ValueError, match="do not match this dataset's training windows.*stale"):
            loader_module.TrainingPool(train, rows, bank_files["sources"][:-1])
    with pytest.raises(ValueError, match="do not match this dataset's training windows"):
        loader_module.TrainingPool(train, bank_files["values"][:, :, :, :8], bank_files["sources"])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def test_the_read_ahead_stream_gives_next_batchs_batches_and_resumes_from_its_state(bank_files, device):
    """The prefetching stream hands out exactly the serial loader's batches, in order, also for a
    process's share of each batch (on a GPU: built in pinned memory, copied on a side stream); a
    stream started from `rows_state()` (what a checkpoint saves, one batch having been read
    ahead) continues with the next batch not yet handed out."""
    from nuwa.io import NetCDFRows

    def host_bytes(tensor):
        assert tensor.device.type == device
        return tensor.cpu().numpy().tobytes()

    def sampler(pool):
        return loader_module.PairedRows.seeded(pool, 7, "stream", bank_copies=bank_files["copies"], mix_fraction=0.5)

    train = bank_files["train"]
    with NetCDFRows(bank_files["contiguous"], "augmented") as rows:
        pool = loader_module.TrainingPool(train, rows, bank_files["sources"])
        for my_rows in (slice(None), slice(2, 4)):
            serial_rows = sampler(pool)
            serial = [loader_module.next_batch(pool, serial_rows, 6, my_rows) for _ in range(8)]
            with loader_module.BatchStream(pool, sampler(pool), 6, my_rows, device) as stream:
                for step in range(8):
                    if step == 5:
                        saved = stream.rows_state()
                    inputs, targets = next(stream)
                    assert host_bytes(inputs) == serial[step][0].numpy().tobytes(), step
                    assert host_bytes(targets) == serial[step][1].numpy().tobytes(), step
            resumed_rows = loader_module.PairedRows.seeded(pool, 99, "other", bank_copies=bank_files["copies"],
                                                           mix_fraction=0.5)
            resumed_rows.set_state(saved)
            with loader_module.BatchStream(pool, resumed_rows, 6, my_rows, device, prefetch=False) as resumed:
                for step in range(5, 8):
                    inputs, _ = next(resumed)
                    assert host_bytes(inputs) == serial[step][0].numpy().tobytes(), step


def cell_arguments(tiny_params, **train):
    return dict(dataset_name="moving_glyphs", dataset_config=tiny_params["datasets"]["moving_glyphs"],
                backbone_name="simvp", backbone_config=tiny_params["backbones"]["simvp"], variant="nuwa",
                train_config=dict(tiny_params["train"], **train), seed=0)


def test_a_nan_training_loss_stops_the_cell_naming_stage_cell_and_step(tiny_params, tiny_series, tmp_path,
                                                                      monkeypatch):
    from nuwa.errors import DivergedError

    real_loss, calls = train_module.training_loss, {"n": 0}

    def poisoned_loss(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(train_module, "training_loss", poisoned_loss)
    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(DivergedError, match=r"^train moving_glyphs/simvp/nuwa/seed0: training loss is nan at step 5 "
                                            r"\(diverged\); nothing written$"):
        train_module.train_cell(tiny_series, checkpoint_path=checkpoint, **cell_arguments(tiny_params, steps=8))
    assert issubclass(DivergedError, ValueError)  # the CLI prints it as one line, exit 2


def test_a_huge_learning_rate_diverges_with_a_clear_error(tiny_params, tiny_series):
    from nuwa.errors import DivergedError

    with pytest.raises(DivergedError, match=r"train moving_glyphs/simvp/nuwa/seed0: (training|validation) loss is "
                                            r"(nan|inf) at step \d+ \(diverged\)"):
        train_module.train_cell(tiny_series, **cell_arguments(tiny_params, steps=40, learning_rate=1e6, eval_every=1))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_validation_loss_never_picks_the_untrained_model(tiny_params, tiny_series, monkeypatch, value):
    """Before, NaN < inf was false: no step was ever best, the untrained weights were evaluated with
    best_step 0 and metrics.json held Infinity."""
    from nuwa.errors import DivergedError

    monkeypatch.setattr(train_module, "validation_loss", lambda *args, **kwargs: value)
    with pytest.raises(DivergedError, match=rf"train moving_glyphs/simvp/nuwa/seed0: validation loss is {value} "
                                            r"at step 3 \(diverged\); nothing written"):
        train_module.train_cell(tiny_series, **cell_arguments(tiny_params, steps=6, eval_every=3))
    monkeypatch.undo()
    metrics = train_module.train_cell(tiny_series, **cell_arguments(tiny_params, steps=6, eval_every=3))[2]
    assert metrics["best_step"] in (3, 6) and np.isfinite(metrics["best_val_loss"])


def test_validation_windows_span_the_whole_split():
    chosen = train_module.validation_windows(100, 8)
    assert len(chosen) == 8 and chosen[0] == 0 and chosen[-1] == 99
    assert np.all(np.diff(chosen) > 0) and np.all(np.diff(chosen) >= 13)  # spread, not the split's start
    np.testing.assert_array_equal(train_module.validation_windows(5, 8), np.arange(5))
    np.testing.assert_array_equal(train_module.validation_windows(8, 8), np.arange(8))
    assert len(train_module.validation_windows(9, 8)) == 8
    np.testing.assert_array_equal(train_module.validation_windows(100, 8), chosen)  # the same for every cell


def test_validation_scores_the_spread_subset(tiny_params, tiny_series):
    from nuwa.windows import select_dataset

    val = select_dataset(tiny_series, tiny_params["datasets"]["moving_glyphs"], "val")
    batch_size, batches = 2, 2
    assert len(val) > batch_size * batches  # the tiny split is larger than the budget
    chosen = train_module.validation_windows(len(val), batch_size * batches)
    assert chosen[0] == 0 and chosen[-1] == len(val) - 1

    class Zero(torch.nn.Module):
        def forward(self, inputs):
            return torch.zeros(inputs.shape[0], val.output_frames, *inputs.shape[2:])

    targets = torch.stack([val[int(i)][2] for i in chosen])
    expected = float(torch.sum(targets ** 2)) / targets.numel()
    assert train_module.validation_loss(Zero(), val, batch_size, batches) == pytest.approx(expected, rel=1e-6)


def test_model_payload_is_what_model_pt_holds(tiny_params, tmp_path):
    from nuwa.io import load_checkpoint, save_checkpoint

    backbone = tiny_params["backbones"]["simvp"]
    model = train_module.build_model(backbone, tiny_params["datasets"]["moving_glyphs"], 1)
    payload = train_module.model_payload(model, backbone, "moving_glyphs", "nuwa", 2)
    assert set(payload) == {"state_dict", "backbone", "dataset", "variant", "seed"}
    assert (payload["dataset"], payload["variant"], payload["seed"]) == ("moving_glyphs", "nuwa", 2)
    assert payload["backbone"] == backbone and payload["backbone"] is not backbone
    save_checkpoint(payload, tmp_path / "model.pt")
    loaded = load_checkpoint(tmp_path / "model.pt")
    assert all(torch.equal(loaded["state_dict"][k], v) for k, v in model.state_dict().items())
