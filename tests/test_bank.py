import numpy as np
import pytest

from bank_reference import generate_bank, plain_mask, window_generator
from nuwa.bank import (BANK_METHODS, IMPORTANCE_METHODS, INTERVENTION_STREAM, MASK_STREAM, MATCHED_STREAM,
                       NEIGHBOUR_OFFSETS, LazyWindows, WindowStreams, distrixplorer, empty_bank_dataset, from_patches,
                       gaussian_step_probability, history_weights, inverted_causal_mask, load_importance,
                       matched_donors, random_masks, to_patches, window_draws, write_bank)
from nuwa.io import DataFileError
from nuwa.saliency import causal_mask

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


SETTINGS = dict(environment_ratio=0.25, copies=2, chunk_size=256, sigma=2.0, history=2, history_decay=0.5,
                exclude_causal_neighbours=True)
FLAGS = ("sampled", "intervened", "changed", "causal")


def _write(path, x, sources, *, method="random", seed=0, importance=None, std=None, dataset="toy", variant="v",
           patch_size=2, **settings):
    std = np.ones(x.shape[2], np.float32) if std is None else std
    return write_bank(path, LazyWindows(lambda a, b: x[a:b], x.shape), sources, method=method,
                      settings=dict(SETTINGS, **settings), patch_size=patch_size, seed=seed, importance=importance,
                      channels=[str(c) for c in range(x.shape[2])], units="1", std=std, dataset_name=dataset,
                      variant=variant, desc="")


def _read(path):
    import xarray as xr

    with xr.open_dataset(path) as bank:
        return bank.load()


def test_window_draws_depend_on_the_window_and_copy_not_on_the_others_drawn_with_it():
    streams = WindowStreams(3, INTERVENTION_STREAM, "toy")
    sources = np.array([0, 5, 9, 12, 40])
    whole = window_draws(streams, 1, sources, (6, 4, 4), sigma=3.0)
    part = window_draws(streams, 1, sources[2:4], (6, 4, 4), sigma=3.0)
    for name in ("sampled", "weights", "mix"):
        assert getattr(whole, name)[2:4].tobytes() == getattr(part, name).tobytes()
    other_copy = window_draws(streams, 0, sources, (6, 4, 4), sigma=3.0)
    assert not np.array_equal(other_copy.mix, whole.mix)
    # the documented stream: a fresh Philox per window gives the same draws
    rng = window_generator(3, "bank", "toy", 1, 12)
    sampled = rng.random(6) < gaussian_step_probability(6, 3.0)
    assert np.array_equal(whole.sampled[3], sampled)
    k = int(sampled.sum())
    np.testing.assert_array_equal(whole.weights[3][sampled].reshape(-1), rng.random(k * 16 * 8, dtype=np.float32))
    assert not whole.weights[3][~sampled].any() and not whole.mix[3][~sampled].any()


@pytest.mark.parametrize("method", BANK_METHODS)
def test_bank_bytes_do_not_depend_on_chunk_size(tmp_path, method):
    # rows of 4 x 64 x 64 float32 (64 KiB): blocks of 32 rows at chunk_size 32, one block of 80 at 1000,
    # cutting through the copies (40 windows each) differently
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4, 1, 64, 64)).astype(np.float32)
    importance = rng.random((40, 4, 8, 8)).astype(np.float32)
    sources = np.arange(40) * 3 + 1
    banks = {}
    for chunk in (1, 32, 1000):
        _write(tmp_path / f"bank{chunk}.nc", x, sources, method=method, importance=importance, patch_size=8,
               chunk_size=chunk)
        banks[chunk] = _read(tmp_path / f"bank{chunk}.nc")
    for chunk in (32, 1000):
        for name in ("augmented", *FLAGS):
            assert banks[chunk][name].values.tobytes() == banks[1][name].values.tobytes(), (chunk, name)
        assert banks[chunk].attrs == banks[1].attrs
    assert (tmp_path / "bank32.nc").read_bytes() == (tmp_path / "bank1000.nc").read_bytes()
    assert banks[1]["intervened"].values.any()


def test_same_seed_same_bank_bytes_different_seed_or_dataset_different(tmp_path):
    rng = np.random.default_rng(5)
    x = _inputs(rng, n=10)
    sources = np.arange(10) * 3
    for name, seed, dataset in (("a", 7, "toy"), ("b", 7, "toy"), ("c", 8, "toy"), ("d", 7, "other")):
        _write(tmp_path / f"{name}.nc", x, sources, seed=seed, dataset=dataset)
    assert (tmp_path / "a.nc").read_bytes() == (tmp_path / "b.nc").read_bytes()
    first, seed8, other = (_read(tmp_path / f"{name}.nc") for name in "acd")
    assert first.attrs["seed"] == 7 and seed8.attrs["seed"] == 8
    for bank in (seed8, other):
        assert not np.array_equal(first["augmented"].values, bank["augmented"].values)
        assert not np.array_equal(first["causal"].values, bank["causal"].values)
    np.testing.assert_array_equal(first["source_index"], np.tile(sources, 2))
    # random masks: fresh per copy, floor(0.25 * 16) environmental patches per step
    assert not np.array_equal(first["causal"].values[:10], first["causal"].values[10:])
    assert ((first["causal"].values == 0).sum(axis=(2, 3)) == 4).all()
    importance = rng.random((10, 5, 4, 4)).astype(np.float32)
    _write(tmp_path / "s.nc", x, sources, method="saliency", seed=7, importance=importance)
    salient = _read(tmp_path / "s.nc")  # saliency masks: the same for both copies
    np.testing.assert_array_equal(salient["causal"].values[:10], salient["causal"].values[10:])


def test_saliency_and_random_banks_of_a_seed_share_their_draws(tmp_path):
    """The +Nuwa and random banks of one seed draw the same steps, weights and lambdas: given the
    same mask (importance = the random control's own uniforms) they are the same bank."""
    rng = np.random.default_rng(1)
    x = _inputs(rng, n=6)
    sources = np.arange(6) + 2
    control = WindowStreams(4, MASK_STREAM, "toy")
    importance = np.stack([window_generator(4, "random-mask", "toy", 0, s).random((5, 16)) for s in sources])
    importance = importance.reshape(6, 5, 4, 4)
    np.testing.assert_array_equal(random_masks(control, 0, sources, (5, 4, 4), 0.25),
                                  causal_mask(importance.reshape(6, 5, 16), 0.25).reshape(6, 5, 4, 4))
    _write(tmp_path / "random.nc", x, sources, method="random", seed=4, copies=1, variant="random")
    _write(tmp_path / "nuwa.nc", x, sources, method="saliency", seed=4, copies=1, variant="nuwa",
           importance=importance)
    _write(tmp_path / "other.nc", x, sources, method="saliency", seed=4, copies=1, variant="nuwa",
           importance=rng.random((6, 5, 4, 4)))
    random_bank, nuwa_bank, other = (_read(tmp_path / f"{n}.nc") for n in ("random", "nuwa", "other"))
    for name in ("augmented", *FLAGS):
        assert random_bank[name].values.tobytes() == nuwa_bank[name].values.tobytes(), name
    # another mask: the same sampled steps, other patches changed
    np.testing.assert_array_equal(other["sampled"].values, random_bank["sampled"].values)
    assert not np.array_equal(other["changed"].values, random_bank["changed"].values)


def test_intervened_says_whether_the_bytes_changed_not_whether_the_step_was_sampled(tmp_path):
    # one environmental patch per step (rho = 1/16 of 4 x 4), the centre-ish (1, 1), every
    # neighbour causal: at step 0 it has no source (no history, causal neighbours excluded) and
    # stays; later steps take its history. Window 0 is all zeros: mixing changes nothing.
    rng = np.random.default_rng(2)
    x = _inputs(rng, n=3)
    x[0] = 0.0
    importance = np.ones((3, 5, 4, 4), np.float32)
    importance[:, :, 1, 1] = 0.0
    _write(tmp_path / "bank.nc", x, np.arange(3), method="saliency", importance=importance, copies=1,
           environment_ratio=1 / 16, sigma=1e6)
    bank = _read(tmp_path / "bank.nc")
    sampled, intervened, changed = (bank[name].values for name in ("sampled", "intervened", "changed"))
    assert sampled.dtype == intervened.dtype == changed.dtype == np.int8
    assert (sampled == 1).all()  # sigma huge: every step drawn
    assert (intervened[0] == 0).all() and not changed[0].any()  # zeros mixed with zeros
    assert (intervened[1:, 0] == 0).all() and (intervened[1:, 1:] == 1).all()
    expected = np.zeros_like(changed)
    expected[1:, 1:, 1, 1] = 1
    np.testing.assert_array_equal(changed, expected)
    # the flags are the bytes: recomputed from the file against the input
    differ = to_patches(bank["augmented"].values, 2) != to_patches(x, 2)
    np.testing.assert_array_equal(changed, differ.any(axis=(4, 5, 6)))


def test_strength_attributes_equal_a_numpy_computation(tmp_path):
    rng = np.random.default_rng(3)
    x = _inputs(rng, n=7)
    std = np.array([2.0, 0.5], np.float32)
    result = _write(tmp_path / "bank.nc", x, np.arange(7) * 2, seed=3, std=std, sigma=3.0)
    bank = _read(tmp_path / "bank.nc")
    augmented, original = bank["augmented"].values.astype(np.float64), np.tile(x, (2, 1, 1, 1, 1)).astype(np.float64)
    mean_abs = (np.abs(augmented - original) / std.astype(np.float64)[None, None, :, None, None]).mean()
    cells = (to_patches(augmented, 2) != to_patches(original, 2)).any(axis=(4, 5, 6))
    assert 0 < cells.mean() < 1 and mean_abs > 0
    assert bank.attrs["changed_cell_fraction"] == result["changed_cell_fraction"] == cells.mean()
    np.testing.assert_allclose([bank.attrs["mean_abs_change_std"], result["mean_abs_change_std"]], mean_abs,
                               rtol=1e-6)
    assert result["rows"] == 14 and bank.attrs["seed"] == 3 and "chunk_size" not in bank.attrs
    np.testing.assert_array_equal(bank["changed"].values, cells)
    np.testing.assert_array_equal(bank["intervened"].values, cells.any(axis=(2, 3)))


def test_empty_banks_have_the_same_variables_and_attributes(tmp_path):
    from types import SimpleNamespace

    from nuwa.bank import BANK_CONTIGUOUS
    from nuwa.io import write_netcdf

    x = _inputs(np.random.default_rng(4), n=3)
    _write(tmp_path / "full.nc", x, np.arange(3))
    _write(tmp_path / "none.nc", x[:0], np.arange(0))
    series = SimpleNamespace(field=np.zeros((20, 2, 8, 8), np.float32), attrs={})
    write_netcdf(empty_bank_dataset(series, {"input_frames": 5, "patch_size": 2}, "toy", "ori", seed=9),
                 tmp_path / "ori.nc", contiguous=BANK_CONTIGUOUS)
    full, none, ori = (_read(tmp_path / f"{n}.nc") for n in ("full", "none", "ori"))
    assert set(full.variables) == set(none.variables) == set(ori.variables)
    for bank in (none, ori):
        assert bank.sizes["bank_sample"] == 0
        assert bank.attrs["changed_cell_fraction"] == bank.attrs["mean_abs_change_std"] == 0.0
        for name in (*FLAGS, "augmented"):
            assert bank[name].dims == full[name].dims and bank[name].dtype == full[name].dtype
    assert ori.attrs["seed"] == 9 and ori.attrs["method"] == "none"
    assert {"seed", "changed_cell_fraction", "mean_abs_change_std"} <= set(full.attrs)


def _saliency_file(path, starts, importance):
    import xarray as xr

    from nuwa.io import write_netcdf

    dims = ("sample", "step", "patch_y", "patch_x")
    write_netcdf(xr.Dataset({"importance": (dims, importance)}, coords={"sample": np.asarray(starts)}), path)
    return path


def test_load_importance_returns_the_importance_of_the_training_windows(tmp_path):
    importance = np.random.default_rng(0).random((4, 5, 2, 3)).astype(np.float32)
    path = _saliency_file(tmp_path / "saliency.nc", [0, 2, 4, 6], importance)
    np.testing.assert_array_equal(load_importance(path, np.array([0, 2, 4, 6]), (5, 2, 3)), importance)


@pytest.mark.parametrize("problem", ["missing", "no importance", "samples", "shape", "nan"])
def test_load_importance_refuses_a_stale_or_bad_saliency_file(tmp_path, problem):
    import xarray as xr

    from nuwa.io import write_netcdf

    importance = np.random.default_rng(0).random((4, 5, 2, 3)).astype(np.float32)
    starts, patches, path = [0, 2, 4, 6], (5, 2, 3), tmp_path / "saliency.nc"
    if problem == "no importance":
        write_netcdf(xr.Dataset({"causal": (("sample",), np.ones(4, np.int8))}, coords={"sample": starts}), path)
    elif problem != "missing":
        if problem == "nan":
            importance[1, 2, 0, 1] = np.nan
        _saliency_file(path, [0, 2, 4, 7] if problem == "samples" else starts, importance)
        if problem == "shape":
            patches = (5, 3, 2)
    with pytest.raises(DataFileError, match="rerun the saliency stage") as error:
        load_importance(path, np.array(starts), patches)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("method", BANK_METHODS)
def test_streamed_bank_equals_the_reference(tmp_path, method):
    rng = np.random.default_rng(8)
    x = _inputs(rng, n=5)
    std = np.array([1.5, 3.0], np.float32)
    importance = rng.random((5, 5, 4, 4)).astype(np.float32)
    importance[1, 2] = 0.5  # a step of equal importances: ties broken by patch order
    importance[3, 1, :2] = 0.25  # and ties within a step
    result = _write(tmp_path / f"{method}.nc", x, np.arange(5) * 4, method=method, seed=2, importance=importance,
                    std=std)
    expected = generate_bank(x, np.arange(5) * 4, method=method, settings=SETTINGS, patch_size=2, seed=2,
                             dataset_name="toy", importance=importance, std=std)
    bank = _read(tmp_path / f"{method}.nc")
    for name in ("augmented", "source_index", "copy", *FLAGS):
        assert bank[name].values.tobytes() == expected[name].tobytes(), (method, name)
    assert result["changed_cell_fraction"] == expected["changed_cell_fraction"]
    np.testing.assert_allclose(result["mean_abs_change_std"], expected["mean_abs_change_std"], rtol=1e-6)
    assert bank.attrs["method"] == method and bank["intervened"].values.any()


def test_bank_methods_and_the_methods_that_read_the_importance():
    assert BANK_METHODS == ("saliency", "random", "random_matched", "saliency_inverted")
    assert IMPORTANCE_METHODS == ("saliency", "random_matched", "saliency_inverted")


@pytest.mark.parametrize("method", ["bogus", "none", *IMPORTANCE_METHODS])
def test_an_unknown_method_or_a_missing_importance_is_refused(tmp_path, method):
    x = _inputs(np.random.default_rng(0), n=3)
    message = "bank method must be one of" if method in ("bogus", "none") else "importance shape None"
    with pytest.raises(ValueError, match=message):
        _write(tmp_path / "bank.nc", x, np.arange(3), method=method)
    assert not (tmp_path / "bank.nc").exists()


def _distinct_saliency(rng, n, t=5, gy=4, gx=4, ratio=0.25):
    """Importances whose saliency masks differ between any two windows at every step."""
    importance = rng.random((n, t, gy, gx)).astype(np.float32)
    salient = np.stack([plain_mask(row, ratio) for row in importance])
    for step in range(t):
        assert len({salient[i, step].tobytes() for i in range(n)}) == n
    return importance, salient


def test_random_matched_takes_at_each_step_another_windows_saliency_mask(tmp_path):
    rng = np.random.default_rng(11)
    n, copies = 7, 3
    x = _inputs(rng, n=n)
    importance, salient = _distinct_saliency(rng, n)
    _write(tmp_path / "matched.nc", x, np.arange(n) * 2 + 1, method="random_matched", importance=importance,
           copies=copies, seed=5)
    causal = _read(tmp_path / "matched.nc")["causal"].values
    # the same number of environmental patches per step as saliency's
    np.testing.assert_array_equal((causal == 0).sum(axis=(2, 3)),
                                  np.tile((salient == 0).sum(axis=(2, 3)), (copies, 1)))
    donors = np.empty(causal.shape[:2], dtype=np.int64)
    for row in range(copies * n):
        for step in range(causal.shape[1]):
            same = [j for j in range(n) if np.array_equal(salient[j, step], causal[row, step])]
            assert len(same) == 1 and same[0] != row % n, (row, step, same)
            donors[row, step] = same[0]
    # the donors vary: over windows, steps and copies (a fresh draw per copy)
    assert len(set(donors.ravel().tolist())) == n
    assert not np.array_equal(donors[:n], donors[n:2 * n])
    assert not (donors == donors[:, :1]).all()
    # the documented draw: row r takes the floor(u (N-1))-th of the other rows, u from its own stream
    streams = WindowStreams(5, MATCHED_STREAM, "toy")
    for copy in range(copies):
        np.testing.assert_array_equal(matched_donors(streams, copy, np.arange(n) * 2 + 1, np.arange(n), n, 5),
                                      donors[copy * n:(copy + 1) * n])


def test_matched_donors_are_uniform_over_the_other_windows():
    streams = WindowStreams(0, MATCHED_STREAM, "toy")
    frames, windows = 30000, 4
    donors = matched_donors(streams, 0, np.array([3, 8, 9, 20]), np.arange(windows), windows, frames)
    for row in range(windows):
        assert not (donors[row] == row).any()
        counts = np.bincount(donors[row], minlength=windows)
        others = np.delete(counts, row) / frames
        assert (np.abs(others - 1 / 3) < 5 * np.sqrt(2 / 9 / frames)).all(), (row, counts)
    # a block of rows draws what the same rows draw among all (streams per window, not per block)
    np.testing.assert_array_equal(matched_donors(streams, 0, np.array([9, 20]), np.array([2, 3]), windows, frames),
                                  donors[2:])


def test_random_matched_with_one_training_window_takes_its_own_mask(tmp_path):
    """One training window has no other window's mask to take: it takes its own, and the
    random_matched bank is the saliency bank."""
    rng = np.random.default_rng(12)
    x = _inputs(rng, n=1)
    importance = rng.random((1, 5, 4, 4)).astype(np.float32)
    for method in ("saliency", "random_matched"):
        _write(tmp_path / f"{method}.nc", x, np.array([6]), method=method, importance=importance, seed=1)
    salient, matched = _read(tmp_path / "saliency.nc"), _read(tmp_path / "random_matched.nc")
    for name in ("augmented", *FLAGS):
        assert matched[name].values.tobytes() == salient[name].values.tobytes(), name
    assert matched["intervened"].values.any()
    np.testing.assert_array_equal(matched_donors(WindowStreams(1, MATCHED_STREAM, "toy"), 0, [6], [0], 1, 5), 0)


def test_saliency_inverted_marks_the_most_important_patches(tmp_path):
    # 2 x 3 patches (L = 6), rho = 0.5: 3 environmental patches per step
    importance = np.array([[[0.1, 0.9, 0.5], [0.8, 0.2, 0.7]],  # most important: 1, 3, 5
                           [[0.5, 0.9, 0.9], [0.9, 0.1, 0.2]],  # 1, 2, 3 (a three-way tie, all taken)
                           [[0.9, 0.1, 0.9], [0.9, 0.9, 0.0]],  # four tie at 0.9: the first three, 0, 2, 3
                           [[0.3, 0.3, 0.3], [0.3, 0.3, 0.3]],  # all equal: patch order, 0, 1, 2
                           [[0.0, -0.0, 0.0], [1.0, 0.0, -0.0]]],  # 3, then zeros of either sign by order: 0, 1
                          dtype=np.float32)
    environmental = [{1, 3, 5}, {1, 2, 3}, {0, 2, 3}, {0, 1, 2}, {0, 1, 3}]
    expected = np.ones((5, 6), np.int8)
    for step, patches in enumerate(environmental):
        expected[step, sorted(patches)] = 0
    expected = expected.reshape(5, 2, 3)
    np.testing.assert_array_equal(inverted_causal_mask(importance.reshape(5, 6), 0.5).reshape(5, 2, 3), expected)
    np.testing.assert_array_equal(plain_mask(importance, 0.5, most=True), expected)
    # through the bank: 4 x 6 pixel windows of 2 x 2 patches
    x = _inputs(np.random.default_rng(13), n=2, h=4, w=6)
    _write(tmp_path / "inverted.nc", x, np.arange(2), method="saliency_inverted",
           importance=np.stack([importance, importance[::-1]]), environment_ratio=0.5, copies=2)
    causal = _read(tmp_path / "inverted.nc")["causal"].values
    np.testing.assert_array_equal(causal, np.stack([expected, expected[::-1]] * 2))


@pytest.mark.parametrize("ratio", [0.29, 0.5, 0.75])
def test_saliency_inverted_has_exactly_floor_rho_l_environmental_patches_even_with_ties(ratio):
    from nuwa.saliency import causal_mask, environment_count

    rng = np.random.default_rng(14)
    importance = rng.integers(0, 3, size=(4, 6, 100)).astype(np.float32)  # ties everywhere
    importance[0] = 0.0  # and steps of all-equal importance
    count = environment_count(100, ratio)
    inverted = inverted_causal_mask(importance, ratio)
    assert ((inverted == 0).sum(axis=-1) == count).all()
    # every environmental patch is at least as important as every causal one of its step
    low = np.where(inverted == 0, importance, np.inf).min(axis=-1)
    high = np.where(inverted == 1, importance, -np.inf).max(axis=-1)
    assert (low >= high).all()
    # a step of equal importances: the first patches, as saliency's mask
    np.testing.assert_array_equal(inverted[0], causal_mask(importance[0], ratio))
    assert (inverted[0][:, :count] == 0).all()


def test_all_bank_methods_of_a_seed_share_the_intervention_draws(tmp_path):
    """Every method's bank of one seed samples the same steps; only the masks differ."""
    rng = np.random.default_rng(15)
    x = _inputs(rng, n=6)
    importance = rng.random((6, 5, 4, 4)).astype(np.float32)
    banks = {}
    for method in BANK_METHODS:
        _write(tmp_path / f"{method}.nc", x, np.arange(6) + 3, method=method, importance=importance, seed=9,
               variant=method)
        banks[method] = _read(tmp_path / f"{method}.nc")
    for method in BANK_METHODS[1:]:
        np.testing.assert_array_equal(banks[method]["sampled"].values, banks["saliency"]["sampled"].values)
    causal = {method: bank["causal"].values for method, bank in banks.items()}
    for i, first in enumerate(BANK_METHODS):
        for second in BANK_METHODS[i + 1:]:
            assert not np.array_equal(causal[first], causal[second]), (first, second)
    # and every method has floor(rho L) = 4 environmental patches in every step
    for method in BANK_METHODS:
        assert ((causal[method] == 0).sum(axis=(2, 3)) == 4).all(), method


def test_the_new_controls_given_the_saliency_mask_are_the_saliency_bank(tmp_path):
    """The draws are shared: random_matched with every window's importance the same (so any other
    window's mask is its own) and saliency_inverted of the negated importance give the saliency
    bank, byte for byte."""
    rng = np.random.default_rng(16)
    x = _inputs(rng, n=6)
    importance = np.repeat(rng.random((1, 5, 4, 4)).astype(np.float32), 6, axis=0)
    runs = {"saliency": importance, "random_matched": importance, "saliency_inverted": -importance}
    for method, values in runs.items():
        _write(tmp_path / f"{method}.nc", x, np.arange(6) * 5, method=method, importance=values, seed=3)
    salient = _read(tmp_path / "saliency.nc")
    assert salient["intervened"].values.any()
    for method in ("random_matched", "saliency_inverted"):
        bank = _read(tmp_path / f"{method}.nc")
        for name in ("augmented", *FLAGS):
            assert bank[name].values.tobytes() == salient[name].values.tobytes(), (method, name)


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
        assert cli.main(["bank", *common, "--variant", "random", "--seed", "0", "--data", str(tmp_path / "data.nc"),
                         "--out", str(path)]) == 0
    assert paths[0].read_bytes() == paths[1].read_bytes()
    with h5py.File(paths[0]) as handle:
        assert handle["augmented"].chunks is None and handle["augmented"].compression is None
        assert handle["augmented"].id.get_offset() is not None
    with xr.open_dataset(paths[0]) as bank:
        assert bank["augmented"].dims == ("bank_sample", "step", "channel", "y", "x")
        assert bank.sizes["bank_sample"] > 0 and np.isfinite(bank["augmented"].values).all()
        assert bank.attrs["method"] == "random" and bank.attrs["seed"] == 0
        assert {"sampled", "intervened", "changed", "causal"} <= set(bank.variables)
        assert 0 < bank.attrs["changed_cell_fraction"] < 1 and bank.attrs["mean_abs_change_std"] > 0
