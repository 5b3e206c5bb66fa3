"""The super-resolution task (nuwa.superres, the paper's Table 2): inputs block-averaged by an
integer factor, targets at full resolution, through the loader, training, evaluation and the
baselines; factor 1 is forecasting, byte for byte as before."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from conftest import killed_at_loss_call
import nuwa.loader as loader_module
import nuwa.train as train_module
from nuwa.baselines import normalised_forecaster
from nuwa.evaluate import evaluate_forecaster, examples_dataset
from nuwa.io import DataFileError, NetCDFRows, load_checkpoint, write_netcdf
from nuwa.superres import coarsen, upsample_nearest
from nuwa.windows import SeriesData, select_dataset
from test_paired import banks, cell_arguments, series, tiny_params_module  # noqa: F401

FACTOR = 2


# -- coarsen -----------------------------------------------------------------------------------

def test_coarsen_is_the_block_mean_worked_by_hand():
    values = np.array([[1, 2, 3, 4, 5, 6],
                       [7, 8, 9, 10, 11, 12],
                       [0, 0, 1, 1, -2, 2],
                       [0, 4, 1, 1, 6, -2]], dtype=np.float32)[None, None]  # (1, 1, 4, 6)
    # blocks: (1+2+7+8)/4, (3+4+9+10)/4, (5+6+11+12)/4; (0+0+0+4)/4, (1+1+1+1)/4, (-2+2+6-2)/4
    expected = np.array([[4.5, 6.5, 8.5], [1.0, 1.0, 1.0]], dtype=np.float32)[None, None]
    coarse = coarsen(values, 2)
    assert coarse.dtype == np.float32 and coarse.shape == (1, 1, 2, 3)
    np.testing.assert_array_equal(coarse, expected)
    tensor = coarsen(torch.from_numpy(values), 2)
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32
    np.testing.assert_array_equal(tensor.numpy(), expected)
    assert coarsen(values, 1) is values  # forecasting: the values themselves, no copy
    # the whole 4 x 4 frame as one block: (1+2+3+4 + 7+8+9+10 + 0+0+1+1 + 0+4+1+1) / 16; float64 stays float64
    np.testing.assert_array_equal(coarsen(values[..., :4, :4].astype(np.float64), 4), [[[[52 / 16]]]])
    assert coarsen(values.astype(np.float64), 2).dtype == np.float64


def test_coarsen_gives_the_same_bits_for_numpy_and_torch_and_inverts_nearest_upsampling():
    rng = np.random.default_rng(0)
    values = (rng.standard_normal((3, 4, 2, 24, 36)) * 1e3 + 7).astype(np.float32)
    for factor in (2, 3, 4, 12):
        from_numpy = coarsen(values, factor)
        from_torch = coarsen(torch.from_numpy(values), factor).numpy()
        assert from_numpy.shape == (3, 4, 2, 24 // factor, 36 // factor)
        assert from_numpy.tobytes() == from_torch.tobytes()
        np.testing.assert_allclose(from_numpy, values.reshape(3, 4, 2, 24 // factor, factor, 36 // factor, factor)
                                   .mean(axis=(4, 6), dtype=np.float64), rtol=1e-6, atol=1e-4)
        # the block-constant field has the coarse field as its block means, exactly
        assert coarsen(upsample_nearest(from_numpy, factor), factor).tobytes() == from_numpy.tobytes()
        assert upsample_nearest(torch.from_numpy(from_numpy), factor).numpy().tobytes() == \
            upsample_nearest(from_numpy, factor).tobytes()


def test_coarsening_normalised_values_is_normalising_coarsened_physical_values():
    """The block mean commutes with the per-channel affine normalisation: the loader coarsens the
    normalised windows it holds, and that is the coarse physical field, normalised."""
    rng = np.random.default_rng(1)
    channels = 3
    physical = (rng.gamma(2.0, 3.0, (5, channels, 8, 12)) + np.array([0.0, 50.0, -20.0])[:, None, None]).astype(
        np.float32)
    mean, std = physical.mean(axis=(0, 2, 3)), physical.std(axis=(0, 2, 3))
    series = SeriesData(field=physical, split=np.zeros(5, np.int8), mean=mean.astype(np.float32),
                        std=std.astype(np.float32), data_range=1.0, name="x", attrs={})
    for factor in (2, 4):
        coarse_of_normalised = coarsen(series.normalise(physical), factor)
        normalised_of_coarse = series.normalise(coarsen(physical, factor))
        np.testing.assert_allclose(coarse_of_normalised, normalised_of_coarse, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(series.denormalise(coarse_of_normalised), coarsen(physical, factor),
                                   rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("factor,message", [
    (3, r"values of shape \(2, 1, 16, 16\): input_factor 3 does not divide the frame size 16 x 16"),
    (32, r"input_factor 32 does not divide the frame size 16 x 16"),
    (0, r"input_factor 0: expected an integer >= 1"),
    (1.5, r"input_factor 1.5: expected an integer >= 1"),
    (True, r"input_factor True: expected an integer >= 1"),
])
def test_a_factor_that_is_not_a_divisor_of_the_frame_is_a_clear_error(factor, message):
    with pytest.raises(ValueError, match=message):
        coarsen(np.zeros((2, 1, 16, 16), dtype=np.float32), factor)
    with pytest.raises(ValueError, match=message.split(": ", 1)[-1] if factor == 3 else message):
        coarsen(torch.zeros((2, 1, 16, 16)), factor)


def test_a_factor_that_does_not_divide_the_dataset_is_refused_before_any_work(banks, series, tiny_params_module):
    train = banks["train"]
    with pytest.raises(ValueError, match=r"field '\w+': input_factor 3 does not divide the frame size 16 x 16"):
        loader_module.TrainingPool(train, input_factor=3)
    with pytest.raises(ValueError, match=r"dataset 'moving_glyphs': input_factor 3 does not divide the frame size "
                                         r"16 x 16"):
        train_module.train_cell(series, input_factor=3, **cell_arguments(tiny_params_module, banks, "ori"))
    test = select_dataset(series, tiny_params_module["datasets"]["moving_glyphs"], "test")
    with pytest.raises(ValueError, match=r"input_factor 5 does not divide the frame size 16 x 16"):
        evaluate_forecaster(lambda inputs: inputs, test, [], input_factor=5)
    with pytest.raises(ValueError, match=r"baseline 'persistence': input_factor 3 does not divide"):
        normalised_forecaster("persistence", series, 4, input_factor=3)


# -- the training pool ---------------------------------------------------------------------------

def test_pool_batches_have_coarse_inputs_and_full_resolution_targets(banks):
    train = banks["train"]
    values, sources, copies = banks["nuwa"]
    full = loader_module.TrainingPool(train, values, sources)
    coarse = loader_module.TrainingPool(train, values, sources, input_factor=FACTOR)
    n = len(train)
    height, width = train.series.field.shape[-2:]
    generator = torch.Generator().manual_seed(0)
    cases = [torch.randint(len(full), (8,), generator=generator) for _ in range(5)]
    cases += [torch.arange(n)[:6], torch.arange(n, len(full))[:6], torch.tensor([0, n, n, 2 * n - 1, 0])]
    for rows in cases:
        full_inputs, full_targets = full.batch(rows)
        inputs, targets = coarse.batch(rows)
        assert inputs.shape == (len(rows), train.input_frames, 1, height // FACTOR, width // FACTOR)
        assert inputs.dtype == torch.float32 and inputs.is_contiguous()
        assert targets.shape == (len(rows), train.output_frames, 1, height, width)
        assert targets.numpy().tobytes() == full_targets.numpy().tobytes()
        assert inputs.numpy().tobytes() == coarsen(full_inputs.numpy(), FACTOR).tobytes()
    # an original window's coarse inputs are the coarse normalised series; a bank row's are its
    # augmented (full-resolution) window, normalised, then coarsened: the bank itself stays fine
    first_bank_row = n + int(np.flatnonzero(sources == train.starts[3])[0])
    inputs, _ = coarse.batch(torch.tensor([3, first_bank_row]))
    start = int(train.starts[3])
    np.testing.assert_array_equal(inputs[0].numpy(),
                                  coarsen(train.normalised.numpy()[start:start + train.input_frames], FACTOR))
    bank_window = train.series.normalise(values[first_bank_row - n])
    np.testing.assert_array_equal(inputs[1].numpy(), coarsen(bank_window, FACTOR))
    assert coarse.window_shape == full.window_shape  # the bank's rows are checked at full resolution


def test_mixup_batches_are_mixed_at_full_resolution_then_coarsened(banks):
    train = banks["train"]
    full = loader_module.TrainingPool(train)
    coarse = loader_module.TrainingPool(train, input_factor=FACTOR)
    mixed = loader_module.MixedRows(torch.tensor([0, 3, 5, 7]), torch.tensor([1, 2, 5, 0]),
                                    torch.tensor([1.0, 0.25, 0.5, 0.9], dtype=torch.float64))
    full_inputs, full_targets = full.batch(mixed)
    inputs, targets = coarse.batch(mixed)
    assert inputs.numpy().tobytes() == coarsen(full_inputs.numpy(), FACTOR).tobytes()
    assert targets.numpy().tobytes() == full_targets.numpy().tobytes()
    # mixing and the block mean are both linear: mixing coarse windows gives the same, to rounding
    plain, partners = coarse.batch(mixed.rows)[0].numpy(), coarse.batch(mixed.partners)[0].numpy()
    weights = mixed.weights.numpy().astype(np.float32).reshape(-1, 1, 1, 1, 1)
    np.testing.assert_allclose(inputs.numpy(), weights * plain + (1 - weights) * partners, rtol=1e-5, atol=1e-5)


@pytest.fixture
def contiguous_bank(banks, tmp_path):
    """The +Nuwa bank as `nuwa bank` stores it (augmented contiguous: the compiled path's pread)."""
    values, sources, copies = banks["nuwa"]
    path = tmp_path / "bank.nc"
    write_netcdf(xr.Dataset({"augmented": (("bank_sample", "step", "channel", "y", "x"), values),
                             "source_index": ("bank_sample", sources), "copy": ("bank_sample", copies)}),
                 path, contiguous=("augmented",))
    with NetCDFRows(path, "augmented") as rows:
        assert rows.contiguous
        yield rows, sources


def test_the_compiled_batch_is_coarsened_to_the_numpy_paths_bytes(banks, contiguous_bank):
    from nuwa import batchkernel

    if not batchkernel.available():
        pytest.skip("no pread in the C library here")
    rows, sources = contiguous_bank
    train = banks["train"]
    pool = loader_module.TrainingPool(train, rows, sources, input_factor=FACTOR)
    assert pool._compiled_batches()
    generator = torch.Generator().manual_seed(4)
    cases = [torch.randint(len(pool), (8,), generator=generator) for _ in range(6)]
    cases += [torch.tensor([0, len(pool) - 1, len(train)])]
    for batch_rows in cases:
        expected, compiled = pool.batch(batch_rows), pool.batch(batch_rows, nogil=True)
        assert compiled[0].shape[-2:] == (8, 8) and compiled[1].shape[-2:] == (16, 16)
        for want, got in zip(expected, compiled):
            assert got.numpy().tobytes() == want.numpy().tobytes()
    mixed = loader_module.MixedRows(torch.tensor([0, 3]), torch.tensor([1, 2]),
                                    torch.tensor([0.5, 1.0], dtype=torch.float64))
    plain = loader_module.TrainingPool(train, input_factor=FACTOR)
    for want, got in zip(plain.batch(mixed), plain.batch(mixed, nogil=True)):
        assert got.numpy().tobytes() == want.numpy().tobytes()


def test_factor_one_gives_the_batches_of_a_pool_built_without_it(banks, contiguous_bank):
    train = banks["train"]
    values, sources, _ = banks["nuwa"]
    rows_file, _ = contiguous_bank
    generator = torch.Generator().manual_seed(2)
    cases = [torch.randint(2 * len(train), (8,), generator=generator) for _ in range(4)]
    mixed = loader_module.MixedRows(torch.tensor([0, 3, 5]), torch.tensor([1, 2, 5]),
                                    torch.tensor([1.0, 0.25, 0.5], dtype=torch.float64))
    for bank in (values, rows_file):
        before, now = (loader_module.TrainingPool(train, bank, sources),
                       loader_module.TrainingPool(train, bank, sources, input_factor=1))
        for batch_rows in cases:
            for nogil in (False, True):
                for want, got in zip(before.batch(batch_rows, nogil=nogil), now.batch(batch_rows, nogil=nogil)):
                    assert got.shape == want.shape and got.numpy().tobytes() == want.numpy().tobytes()
    before, now = loader_module.TrainingPool(train), loader_module.TrainingPool(train, input_factor=1)
    for want, got in zip(before.batch(mixed), now.batch(mixed)):
        assert got.numpy().tobytes() == want.numpy().tobytes()


# -- training and evaluation ---------------------------------------------------------------------

@pytest.mark.parametrize("backbone,variant", [("simvp", "nuwa"), ("convlstm", "ori")])
def test_a_super_resolution_cell_predicts_full_resolution_frames(tiny_params_module, banks, series, backbone,
                                                                  variant, tmp_path):
    """convlstm also feeds full-resolution targets to its coarse grid (scheduled sampling)."""
    arguments = cell_arguments(tiny_params_module, banks, variant, backbone=backbone, steps=4)
    model, history, metrics, examples, losses = train_module.train_cell(series, input_factor=FACTOR, **arguments)
    config = tiny_params_module["datasets"]["moving_glyphs"]
    height, width = config["height"], config["width"]
    t_in, t_out = config["input_frames"], config["output_frames"]
    with torch.no_grad():
        out = model(torch.zeros(2, t_in, 1, height // FACTOR, width // FACTOR))
    assert out.shape == (2, t_out, 1, height, width)
    assert metrics["input_factor"] == FACTOR
    for key in ("mse", "mae", "ssim", "psnr", "best_val_loss"):
        assert np.isfinite(metrics[key]), key
    assert np.isfinite(history["train_loss"]).all()
    assert examples["inputs"].shape[-2:] == (height // FACTOR, width // FACTOR)
    assert examples["truth"].shape[-2:] == examples["prediction"].shape[-2:] == (height, width)
    assert losses.sizes["lead"] == t_out and np.isfinite(losses["mse"].values).all()
    assert float(losses["mse"].mean()) == pytest.approx(metrics["mse"], rel=1e-9)
    written = examples_dataset(examples, series, {"dataset": "moving_glyphs"})
    assert written["inputs"].dims == ("example", "input_step", "channel", "input_y", "input_x")
    assert written["truth"].dims == ("example", "lead", "channel", "y", "x")
    assert written.attrs["input_factor"] == FACTOR
    write_netcdf(written, tmp_path / "examples.nc")
    with xr.open_dataset(tmp_path / "examples.nc") as reread:
        assert reread.sizes["input_y"] == height // FACTOR and reread.sizes["y"] == height
    # the example's inputs are the test window's physical field, block-averaged
    start = int(examples["source_index"][0])
    np.testing.assert_allclose(examples["inputs"][0], coarsen(series.field[start:start + t_in], FACTOR),
                               rtol=1e-5, atol=1e-4)


def test_a_forecasting_cell_reports_factor_one_and_keeps_its_examples_dims(tiny_params_module, banks, series):
    _, _, metrics, examples, _ = train_module.train_cell(series, **cell_arguments(tiny_params_module, banks, "ori",
                                                                                  steps=3))
    assert metrics["input_factor"] == 1
    written = examples_dataset(examples, series, {})
    assert written["inputs"].dims == ("example", "input_step", "channel", "y", "x")
    assert "input_factor" not in written.attrs


def test_a_killed_super_resolution_run_resumes_to_the_same_result(tiny_params_module, banks, series, tmp_path,
                                                                  monkeypatch):
    arguments = cell_arguments(tiny_params_module, banks, "nuwa", steps=8)
    arguments["train_config"].update(eval_every=2, checkpoint_every=3)
    _, history, metrics, _, _ = train_module.train_cell(series, input_factor=FACTOR, **arguments)
    checkpoint = tmp_path / "checkpoint.pt"
    killed_at_loss_call(monkeypatch, 5, lambda: train_module.train_cell(series, checkpoint_path=checkpoint,
                                                                        input_factor=FACTOR, **arguments))
    assert load_checkpoint(checkpoint)["input_factor"] == FACTOR
    # the checkpoint of another task is refused by name, before any weight is loaded
    with pytest.raises(DataFileError, match=r"checkpoint.pt: a checkpoint of input_factor 2, this cell has "
                                            r"input_factor 1 .*delete it"):
        train_module.train_cell(series, checkpoint_path=checkpoint, **arguments)
    _, resumed_history, resumed_metrics, _, _ = train_module.train_cell(series, checkpoint_path=checkpoint,
                                                                         input_factor=FACTOR, **arguments)
    assert resumed_metrics == metrics
    np.testing.assert_array_equal(resumed_history["train_loss"].to_numpy(), history["train_loss"].to_numpy())


def test_persistence_with_a_factor_is_the_last_coarse_frame_upsampled(tiny_params_module, series):
    config = tiny_params_module["datasets"]["moving_glyphs"]
    test = select_dataset(series, config, "test")
    t_in, t_out = config["input_frames"], config["output_frames"]
    forecaster = normalised_forecaster("persistence", series, t_out, input_factor=FACTOR)
    metrics, examples, losses = evaluate_forecaster(forecaster, test, config["csi_thresholds"], batch_size=4,
                                                    example_count=len(test), input_factor=FACTOR,
                                                    fss_scales=(1, 5))
    assert np.isfinite(metrics["mse"]) and metrics["test_windows"] == len(test)
    assert losses.sizes["window"] == len(test) and losses.sizes["lead"] == t_out
    assert float(losses["mse"].mean()) == pytest.approx(metrics["mse"], rel=1e-9)
    assert examples["prediction"].shape == (len(test), t_out, 1, 16, 16)
    assert examples["inputs"].shape == (len(test), t_in, 1, 8, 8)
    expected = upsample_nearest(coarsen(series.field[test.starts + t_in - 1], FACTOR), FACTOR)  # (N, C, H, W)
    for lead in range(t_out):
        np.testing.assert_allclose(examples["prediction"][:, lead], expected, rtol=1e-5, atol=1e-4)
    # another forecast than full-resolution persistence (not necessarily a worse one: on moving
    # glyphs the blurred frame scores the lower MSE, as smooth forecasts do)
    full, _, _ = evaluate_forecaster(normalised_forecaster("persistence", series, t_out), test,
                                     config["csi_thresholds"])
    assert metrics["mse"] != full["mse"]
    # optical flow on the coarse field, upsampled the same way
    flow = normalised_forecaster("optical_flow", series, t_out, input_factor=FACTOR)
    flow_metrics, flow_examples, _ = evaluate_forecaster(flow, test, config["csi_thresholds"], example_count=2,
                                                         input_factor=FACTOR)
    assert np.isfinite(flow_metrics["mse"]) and len(flow.record) == len(test)
    prediction = flow_examples["prediction"]
    assert prediction.shape == (2, t_out, 1, 16, 16)
    blocks = prediction.reshape(2, t_out, 1, 8, FACTOR, 8, FACTOR)
    assert (blocks == blocks[:, :, :, :, :1, :, :1]).all()  # block-constant: nearest neighbour
