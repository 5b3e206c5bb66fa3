import numpy as np
import pytest

from nuwa.bank import (NEIGHBOUR_OFFSETS, distrixplorer, from_patches, gaussian_step_probability, generate_bank,
                       history_weights, to_patches)

KNOBS = dict(patch_size=2, sigma=2.0, history=2, history_decay=0.5, exclude_causal_neighbours=True)


def _inputs(rng, n=6, t=5, c=2, h=8, w=8):
    return rng.normal(size=(n, t, c, h, w)).astype(np.float32) * 3 + 10


def _mask(rng, n=6, t=5, gy=4, gx=4, environmental=0.4):
    return (rng.random((n, t, gy, gx)) >= environmental).astype(np.int8)


def test_patch_roundtrip():
    x = np.arange(2 * 3 * 2 * 6 * 4, dtype=np.float32).reshape(2, 3, 2, 6, 4)
    patches = to_patches(x, 2)
    assert patches.shape == (2, 3, 3, 2, 2, 2, 2)
    np.testing.assert_array_equal(patches[1, 2, 1, 0, 1], x[1, 2, 1, 2:4, 0:2])
    np.testing.assert_array_equal(from_patches(patches), x)


def test_causal_patches_are_bit_identical():
    rng = np.random.default_rng(0)
    x, mask = _inputs(rng), _mask(rng)
    augmented, intervened = distrixplorer(x, mask, np.random.default_rng(1), **KNOBS)
    before, after = to_patches(x, 2), to_patches(augmented, 2)
    causal = mask == 1
    assert np.array_equal(before[causal], after[causal])
    # steps not intervened are untouched entirely
    assert np.array_equal(before[~intervened], after[~intervened])
    # and something environmental did change
    changed = (~causal) & intervened[:, :, None, None]
    assert changed.any() and not np.array_equal(before[changed], after[changed])


@pytest.mark.parametrize("exclude", [True, False])
def test_intervened_values_lie_within_their_sources(exclude):
    rng = np.random.default_rng(2)
    x, mask = _inputs(rng), _mask(rng)
    knobs = dict(KNOBS, exclude_causal_neighbours=exclude, sigma=50.0)
    augmented, intervened = distrixplorer(x, mask, np.random.default_rng(3), **knobs)
    before, after = to_patches(x, 2), to_patches(augmented, 2)
    n, t, gy, gx = mask.shape
    checked = 0
    for i in range(n):
        for s in range(t):
            if not intervened[i, s]:
                continue
            for py in range(gy):
                for px in range(gx):
                    if mask[i, s, py, px]:
                        continue
                    sources = []
                    for dy, dx in NEIGHBOUR_OFFSETS:
                        qy, qx = py + dy, px + dx
                        if 0 <= qy < gy and 0 <= qx < gx and (not exclude or mask[i, s, qy, qx] == 0):
                            sources.append(before[i, s, qy, qx])
                    sources += [before[i, s - k, py, px] for k in range(1, knobs["history"] + 1) if s - k >= 0]
                    if not sources:
                        np.testing.assert_array_equal(after[i, s, py, px], before[i, s, py, px])
                        continue
                    stack = np.stack(sources)
                    tolerance = 1e-5 * np.abs(stack).max()
                    assert (after[i, s, py, px] >= stack.min(0) - tolerance).all()
                    assert (after[i, s, py, px] <= stack.max(0) + tolerance).all()
                    checked += 1
    assert checked > 50


def test_no_temporal_term_at_the_first_step():
    # step 0's neighbours hold 5, every later step holds 100: a temporal term at t=0 (e.g. a
    # wrap-around to the last step) would pull the value away from 5
    x = np.full((4, 3, 1, 6, 6), 100.0, dtype=np.float32)
    x[:, 0] = 5.0
    x[:, 0, :, 2:4, 2:4] = -7.0  # the environmental centre patch
    mask = np.ones((4, 3, 3, 3), dtype=np.int8)
    mask[:, :, 1, 1] = 0
    augmented, intervened = distrixplorer(x, mask, np.random.default_rng(0), patch_size=2, sigma=1e6, history=2,
                                          history_decay=0.5, exclude_causal_neighbours=False)
    assert intervened.all()  # sigma huge: every step intervened
    np.testing.assert_allclose(augmented[:, 0, :, 2:4, 2:4], 5.0, rtol=1e-6)
    # with causal neighbours excluded and all neighbours causal, t=0 has no source: unchanged
    augmented, _ = distrixplorer(x, mask, np.random.default_rng(0), patch_size=2, sigma=1e6, history=2,
                                 history_decay=0.5, exclude_causal_neighbours=True)
    np.testing.assert_array_equal(augmented[:, 0, :, 2:4, 2:4], -7.0)
    # ... and at t=1 the temporal history (step 0 = -7) is used alone
    np.testing.assert_allclose(augmented[:, 1, :, 2:4, 2:4], -7.0, rtol=1e-6)


def test_history_weights_decay_and_normalise():
    weights = history_weights(4, 2, 0.5)
    np.testing.assert_array_equal(weights[0], [0, 0])
    np.testing.assert_allclose(weights[1], [1, 0])
    np.testing.assert_allclose(weights[3], [0.5 / 0.75, 0.25 / 0.75])


def test_intervention_frequency_follows_gaussian_decay():
    frames, sigma, draws = 6, 1.5, 20000
    x = np.zeros((draws, frames, 1, 2, 2), dtype=np.float32)
    mask = np.zeros((draws, frames, 1, 1), dtype=np.int8)
    _, intervened = distrixplorer(x, mask, np.random.default_rng(4), patch_size=2, sigma=sigma, history=1,
                                  history_decay=0.5, exclude_causal_neighbours=True)
    expected = gaussian_step_probability(frames, sigma)
    assert expected[-1] == 1.0 and expected[0] < 0.01
    observed = intervened.mean(axis=0)
    standard_error = np.sqrt(expected * (1 - expected) / draws) + 1e-9
    assert (np.abs(observed - expected) <= 5 * standard_error + 1e-3).all(), (observed, expected)


def test_same_seed_same_bank_different_seed_different():
    rng = np.random.default_rng(5)
    x = _inputs(rng, n=10)
    importance = rng.random((10, 5, 4, 4)).astype(np.float32)
    settings = dict(environment_ratio=0.25, copies=2, chunk_size=3, sigma=2.0, history=2, history_decay=0.5,
                    exclude_causal_neighbours=True)
    sources = np.arange(10) * 3
    first = generate_bank(x, sources, method="saliency", settings=settings, patch_size=2,
                          rng=np.random.default_rng(7), importance=importance)
    second = generate_bank(x, sources, method="saliency", settings=settings, patch_size=2,
                           rng=np.random.default_rng(7), importance=importance)
    third = generate_bank(x, sources, method="saliency", settings=settings, patch_size=2,
                          rng=np.random.default_rng(8), importance=importance)
    for key in first:
        assert first[key].tobytes() == second[key].tobytes()
    assert first["augmented"].tobytes() != third["augmented"].tobytes()
    np.testing.assert_array_equal(first["source_index"], np.tile(sources, 2))
    # saliency masks: the same for both copies; random masks: fresh per copy
    np.testing.assert_array_equal(first["causal"][:10], first["causal"][10:])
    random_bank = generate_bank(x, sources, method="random", settings=settings, patch_size=2,
                                rng=np.random.default_rng(7))
    assert not np.array_equal(random_bank["causal"][:10], random_bank["causal"][10:])
    assert ((random_bank["causal"] == 0).sum(axis=(2, 3)) == 4).all()  # floor(0.25 * 16)


def test_same_seed_same_bank_file_bytes(tmp_path):
    from nuwa.bank import bank_dataset
    from nuwa.io import write_netcdf

    rng = np.random.default_rng(6)
    x = _inputs(rng, n=4)
    settings = dict(environment_ratio=0.25, copies=1, chunk_size=4, sigma=2.0, history=2, history_decay=0.5,
                    exclude_causal_neighbours=True)
    paths = []
    for attempt in range(2):
        bank = generate_bank(x, np.arange(4), method="random", settings=settings, patch_size=2,
                             rng=np.random.default_rng(11))
        dataset = bank_dataset(bank, channels=["a", "b"], units="1", method="random", settings=settings, patch_size=2,
                               dataset_name="toy", variant="random")
        paths.append(tmp_path / f"bank{attempt}.nc")
        write_netcdf(dataset, paths[-1])
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_nuwa_bank_streams_a_contiguous_bank_with_the_same_bytes_every_time(tmp_path):
    """`nuwa bank` writes through write_bank: `augmented` contiguous and uncompressed (training reads
    its rows from the file), readable by xarray, and the same bytes from the same params."""
    import h5py
    import xarray as xr

    from conftest import TINY_PARAMS
    from nuwa import cli

    common = ["--params", str(TINY_PARAMS), "--dataset", "moving_glyphs", "--threads", "1"]
    assert cli.main(["ingest", *common, "--out", str(tmp_path / "data.nc")]) == 0
    paths = [tmp_path / f"bank{i}.nc" for i in range(2)]
    for path in paths:
        assert cli.main(["bank", *common, "--variant", "random", "--data", str(tmp_path / "data.nc"),
                         "--out", str(path)]) == 0
    assert paths[0].read_bytes() == paths[1].read_bytes()
    with h5py.File(paths[0]) as handle:
        assert handle["augmented"].chunks is None and handle["augmented"].compression is None
        assert handle["augmented"].id.get_offset() is not None
    with xr.open_dataset(paths[0]) as bank:
        assert bank["augmented"].dims == ("bank_sample", "step", "channel", "y", "x")
        assert bank.sizes["bank_sample"] > 0 and np.isfinite(bank["augmented"].values).all()
        assert bank.attrs["method"] == "random"
