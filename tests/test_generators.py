"""Tests of the synthetic dataset generators: moving glyphs and pollutant dispersion."""

from __future__ import annotations

import time

import numpy as np
import pytest

from nuwa.datasets import get_dataset
from nuwa.datasets import moving_glyphs, pollutant

GLYPH_CONFIG = {
    "length": 60,
    "height": 48,
    "width": 40,
    "glyphs": 2,
    "glyph_size": 20,
    "max_speed": 2.5,
    "respawn_every": 10,
}
POLLUTANT_CONFIG = {
    "length": 40,
    "height": 24,
    "width": 20,
    "sources": 3,
    "emission_rate": 1.0,
    "diffusivity": 0.3,
    "wind_speed": 1.2,
    "decay_rate": 0.05,
    "spinup": 10,
}
CASES = [
    ("moving_glyphs", GLYPH_CONFIG, "intensity", "1", "glyph intensity"),
    ("pollutant", POLLUTANT_CONFIG, "concentration", "kg m-2", "pollutant concentration"),
]


@pytest.mark.parametrize(("kind", "config", "channel", "units", "long_name"), CASES)
def test_output_contract(kind, config, channel, units, long_name):
    data = get_dataset(kind)(config, seed=0)
    assert data.dims == ("time", "channel", "y", "x")
    assert data.shape == (config["length"], 1, config["height"], config["width"])
    assert data.dtype == np.float32
    assert list(data["channel"].values) == [channel]
    assert np.array_equal(data["time"].values, np.arange(config["length"]))
    assert data.name
    assert data.attrs["units"] == units
    assert data.attrs["long_name"] == long_name
    for key, value in config.items():  # every setting is recorded
        assert data.attrs[key] == value
    for key, value in data.attrs.items():  # NetCDF-safe: numbers and strings only
        assert isinstance(value, (str, int, float, np.integer, np.floating)), key
        assert not isinstance(value, (bool, np.bool_)), key
    assert np.isfinite(data.values).all()


@pytest.mark.parametrize(("kind", "config"), [(case[0], case[1]) for case in CASES])
def test_seed_determines_output(kind, config):
    generate = get_dataset(kind)
    first, again, other = generate(config, seed=3), generate(config, seed=3), generate(config, seed=4)
    assert np.array_equal(first.values, again.values)
    assert first.attrs == again.attrs
    assert not np.array_equal(first.values, other.values)


@pytest.mark.parametrize(("kind", "config"), [(case[0], case[1]) for case in CASES])
def test_missing_config_key_is_an_error(kind, config):
    incomplete = dict(config)
    del incomplete["length"]
    with pytest.raises(KeyError, match="length"):
        get_dataset(kind)(incomplete, seed=0)


# --- moving glyphs -----------------------------------------------------------------------


def test_glyph_values_in_unit_range_and_not_empty():
    values = moving_glyphs.generate(GLYPH_CONFIG, seed=1).values
    assert values.min() >= 0 and values.max() <= 1
    assert (values.reshape(len(values), -1).max(axis=1) > 0.9).all()  # every frame shows ink


def test_digit_bitmaps_are_distinct():
    bitmaps = moving_glyphs.glyph_bitmaps(28).astype(float)
    assert bitmaps.shape == (10, 28, 28)
    assert bitmaps.min() >= 0 and bitmaps.max() <= 1
    ink = bitmaps.sum(axis=(1, 2))
    assert (ink > 0.05 * 28 * 28).all()
    assert ink[1] < ink[8]  # a '1' has much less ink than an '8'
    differences = np.abs(bitmaps[:, None] - bitmaps[None]).sum(axis=(2, 3))
    off_diagonal = differences[~np.eye(10, dtype=bool)]
    assert off_diagonal.min() > 0.1 * ink.min()
    # Holes stay empty (even-odd fill): the centre of a '0' is background.
    assert bitmaps[0, 14, 14] < 0.1 and bitmaps[8, 14, 14] > 0.5


def test_glyphs_move_and_stay_inside():
    config = dict(GLYPH_CONFIG, glyphs=1, respawn_every=0, length=200)
    values = moving_glyphs.generate(config, seed=2).values[:, 0]
    assert (np.abs(np.diff(values, axis=0)).sum(axis=(1, 2)) > 0).mean() > 0.5
    # One glyph, never clipped: every frame holds exactly the ink of its digit bitmap.
    ink = values.sum(axis=(1, 2))
    bitmap_ink = moving_glyphs.glyph_bitmaps(config["glyph_size"]).sum(axis=(1, 2))
    assert np.allclose(ink, ink[0]) and np.isclose(ink[0], bitmap_ink, rtol=1e-5).any()


def test_glyph_tracks_bounce_within_bounds():
    rng = np.random.default_rng(5)
    rows, cols, digits = moving_glyphs.glyph_tracks(500, 40, 30, 3, 12, 3.0, 0, rng)
    assert rows.min() >= 0 and rows.max() <= 40 - 12
    assert cols.min() >= 0 and cols.max() <= 30 - 12
    # Over 500 frames at >= 1.5 px/frame every glyph reaches both walls of at least one axis.
    for glyph in range(3):
        touches_rows = rows[:, glyph].min() == 0 and rows[:, glyph].max() == 28
        touches_cols = cols[:, glyph].min() == 0 and cols[:, glyph].max() == 18
        assert touches_rows or touches_cols
    # Steps never exceed max_speed (+1 for rounding): no teleporting.
    steps = np.hypot(np.diff(rows, axis=0), np.diff(cols, axis=0))
    assert steps.max() <= 3.0 + np.sqrt(2)
    assert (digits == digits[0]).all()


def test_respawn_changes_one_digit_round_robin():
    rng = np.random.default_rng(6)
    _, _, digits = moving_glyphs.glyph_tracks(100, 40, 40, 3, 10, 1.0, 7, rng)
    changes = np.argwhere(digits[1:] != digits[:-1])
    assert np.array_equal(changes[:, 0] + 1, np.arange(7, 100, 7))
    assert np.array_equal(changes[:, 1], np.arange(len(changes)) % 3)


def test_glyph_generation_is_fast():
    config = dict(GLYPH_CONFIG, length=2000, height=64, width=64, glyphs=3, glyph_size=28, max_speed=3.0)
    start = time.perf_counter()
    moving_glyphs.generate(config, seed=0)
    assert time.perf_counter() - start < 5.0


# --- pollutant dispersion ---------------------------------------------------------------


def _uniform_wind(height, width, u, v):
    faces = (np.full((height, width + 1), float(u)), np.full((height + 1, width), float(v)))
    return lambda t: faces


def _blob(height, width, row, col, radius):
    rows, cols = np.mgrid[:height, :width]
    return np.exp(-((rows - row) ** 2 + (cols - col) ** 2) / (2 * radius**2))


def _centre_of_mass(field):
    rows, cols = np.mgrid[: field.shape[0], : field.shape[1]]
    return np.array([(rows * field).sum(), (cols * field).sum()]) / field.sum()


def test_pollutant_mass_budget_closes_every_frame():
    run, _ = pollutant.simulate_config(POLLUTANT_CONFIG, seed=7)
    residual = np.diff(run.mass) - (run.emitted - run.decayed - run.outflow)
    assert np.abs(residual).max() < 1e-10 * run.mass.max()
    # Each term matters: the plume is developed and mass is emitted, decays and leaves.
    assert run.mass[POLLUTANT_CONFIG["spinup"]] > 0
    assert np.allclose(run.emitted, POLLUTANT_CONFIG["sources"] * POLLUTANT_CONFIG["emission_rate"])
    assert (run.decayed > 0).all() and run.outflow[-10:].sum() > 0
    # The generated array is the recorded part of the same run.
    data = pollutant.generate(POLLUTANT_CONFIG, seed=7)
    assert np.array_equal(data.values[:, 0], run.concentration.astype(np.float32))
    assert np.allclose(data.values[:, 0].sum(axis=(1, 2)), run.mass[POLLUTANT_CONFIG["spinup"]:], rtol=1e-5)


def test_pollutant_stays_non_negative_in_strong_wind():
    config = dict(POLLUTANT_CONFIG, wind_speed=6.0, diffusivity=2.0, decay_rate=0.5)
    assert pollutant.generate(config, seed=1).values.min() >= 0
    # A rough initial field (many zeros next to large values) is the hardest case for positivity.
    rng = np.random.default_rng(0)
    initial = rng.exponential(size=(16, 16)) * (rng.random((16, 16)) < 0.3)
    wind = pollutant.make_wind(16, 16, 5.0, rng)
    run = pollutant.simulate(initial, 20, wind.faces, np.zeros((16, 16)), 1.5, 0.2)
    assert run.concentration.min() >= 0


def test_pollutant_decay_only():
    height, width, decay_rate = 16, 16, 0.1
    initial = _blob(height, width, 8, 8, 2.0)
    no_wind, no_sources = _uniform_wind(height, width, 0, 0), np.zeros((height, width))
    run = pollutant.simulate(initial, 12, no_wind, no_sources, 0.4, decay_rate)
    # Explicit Euler with n substeps: each frame multiplies the mass by (1 - k/n)^n.
    expected = initial.sum() * np.concatenate([[1.0], np.cumprod((1 - decay_rate / run.substeps) ** run.substeps)])
    assert np.allclose(run.mass, expected, rtol=1e-12)
    assert np.allclose(run.mass[-1], initial.sum() * np.exp(-decay_rate * 12), rtol=0.02)
    assert np.all(run.outflow == 0)


def test_pollutant_advection_moves_blob_downwind():
    height, width, frames = 32, 32, 10
    u, v = 0.8, -0.5  # east and towards lower rows
    initial = _blob(height, width, 20, 8, 1.5)
    run = pollutant.simulate(initial, frames, _uniform_wind(height, width, u, v), np.zeros((height, width)), 0.0, 0.0)
    shift = _centre_of_mass(run.concentration[-1]) - _centre_of_mass(initial)
    # Donor-cell advection moves the centre of mass exactly with a uniform wind (blob stays inside).
    assert np.allclose(shift, [v * frames, u * frames], atol=1e-3)
    assert np.isclose(run.mass[-1], initial.sum(), rtol=1e-6)


def test_pollutant_inflow_is_clean_air():
    height, width, u, v = 10, 12, 0.5, 0.25
    initial = np.ones((height, width))
    run = pollutant.simulate(initial, 4, _uniform_wind(height, width, u, v), np.zeros((height, width)), 0.0, 0.0)
    final = run.concentration[-1]
    # Upwind (west, south) edges are flushed by clean air; nothing exceeds the initial level.
    assert final[:, 0].max() < 0.5 and final[0, :].max() < 0.5
    assert final.max() <= 1 + 1e-12
    assert (np.diff(run.mass) < 0).all() and (run.outflow > 0).all()


def test_wind_is_divergence_free_and_varies():
    wind = pollutant.make_wind(20, 30, 1.5, np.random.default_rng(3))
    u, v = wind.faces(17.5)
    assert u.shape == (20, 31) and v.shape == (21, 30)
    divergence = (u[:, 1:] - u[:, :-1]) + (v[1:, :] - v[:-1, :])
    assert np.abs(divergence).max() < 1e-12
    assert np.std(u) > 0.01  # the eddies make the field non-uniform
    u_late, v_late = wind.faces(117.5)
    early_dir = np.arctan2(*wind.mean_wind(17.5)[::-1])
    late_dir = np.arctan2(*wind.mean_wind(117.5)[::-1])
    assert abs(np.angle(np.exp(1j * (late_dir - early_dir)))) > 0.2  # the mean wind rotates
    speeds = [np.hypot(*wind.mean_wind(t)) for t in range(200)]
    assert 0.7 * 1.5 - 1e-9 <= min(speeds) < max(speeds) <= 1.3 * 1.5 + 1e-9


def test_pollutant_generation_is_fast():
    config = dict(POLLUTANT_CONFIG, length=128, height=32, width=32, spinup=32)
    start = time.perf_counter()
    pollutant.generate(config, seed=0)
    assert time.perf_counter() - start < 5.0
