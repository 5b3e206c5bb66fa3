"""Tests of the wildfire (FireSys) cellular-automaton generator."""

from __future__ import annotations

import time

import numpy as np
import pytest

from nuwa.datasets import dataset_config_schema, get_dataset, wildfire
from nuwa.datasets.wildfire import BURNING, BURNT, FUEL, UNBURNABLE

CONFIG = {
    "length": 60,
    "height": 24,
    "width": 20,
    "p0": 0.58,
    "wind_speed": 5.0,
    "wind_coefficient": 0.045,
    "wind_direction_coefficient": 0.131,
    "slope_coefficient": 0.078,
    "moisture": 0.3,
    "ignition_rate": 0.1,
    "regrowth_rate": 0.01,
    "burn_steps": 4,
    "spinup": 20,
}
SIZE, CENTRE = 41, 20  # grid of the single-ignition spread experiments


def _single_ignition(landscape, steps, speed=0.0, direction=0.0, seed=0, p0=0.3, slope_coefficient=0.078):
    """Spread from one central ignition: no random ignitions, no regrowth (p0 low enough that the
    front does not advance one cell every step, which would hide any asymmetry)."""
    state = np.where(landscape.burnable, FUEL, UNBURNABLE).astype(np.int8)
    state[CENTRE, CENTRE] = BURNING
    return wildfire.simulate(
        landscape, state, steps, wildfire.Wind.constant(steps, speed, direction), p0=p0,
        wind_coefficient=0.045, wind_direction_coefficient=0.131, slope_coefficient=slope_coefficient,
        ignition_rate=0.0, regrowth_rate=0.0, rng=np.random.default_rng(seed), min_burning=0,
    )


def _extents(state):
    """Reach of the fire (burning or burnt cells) from the centre: (east, west, north, south) in cells."""
    rows, cols = np.nonzero((state == BURNING) | (state == BURNT))
    return np.array([cols.max() - CENTRE, CENTRE - cols.min(), rows.max() - CENTRE, CENTRE - rows.min()])


def _mean_extents(landscape, steps=15, seeds=range(8), **kwargs):
    return np.mean([_extents(_single_ignition(landscape, steps, seed=seed, **kwargs).state[-1]) for seed in seeds],
                   axis=0)


def test_output_contract():
    data = get_dataset("wildfire")(CONFIG, seed=0)
    assert data.dims == ("time", "channel", "y", "x")
    assert data.shape == (CONFIG["length"], 1, CONFIG["height"], CONFIG["width"])
    assert data.dtype == np.float32
    assert list(data["channel"].values) == ["intensity"]
    assert np.array_equal(data["time"].values, np.arange(CONFIG["length"]))
    assert data.name == "intensity"
    assert data.attrs["units"] == "1" and data.attrs["long_name"] == "fire-front intensity"
    for key, value in CONFIG.items():
        assert data.attrs[key] == value
    for key, value in data.attrs.items():
        assert isinstance(value, (str, int, float, np.integer, np.floating)), key
        assert not isinstance(value, (bool, np.bool_)), key
    assert np.isfinite(data.values).all()
    assert data.values.min() >= 0 and data.values.max() <= 1 and data.values.max() > 0.5


def test_config_schema_keys_and_missing_key():
    schema = dataset_config_schema("wildfire")
    expected = {"length", "p0", "wind_speed", "wind_coefficient", "wind_direction_coefficient",
                "slope_coefficient", "moisture", "ignition_rate", "regrowth_rate", "burn_steps", "spinup"}
    assert set(schema["required"]) == expected | {"split"}
    for key in expected - {"length", "spinup"}:
        assert "minimum" in schema["properties"][key] or "exclusiveMinimum" in schema["properties"][key], key
        assert "maximum" in schema["properties"][key], key
    incomplete = dict(CONFIG)
    del incomplete["p0"]
    with pytest.raises(KeyError, match="p0"):
        wildfire.generate(incomplete, seed=0)


def test_intensity_is_positive_exactly_on_burning_cells_and_decays():
    run, _, _ = wildfire.simulate_config(CONFIG, seed=2)
    burning = run.state == BURNING
    assert burning.any()
    assert (run.intensity[burning] > 0).all() and (run.intensity[~burning] == 0).all()
    assert run.intensity.max() <= 1
    # Intensity falls with burn age: a cell's intensity on consecutive burning frames decreases.
    both = burning[1:] & burning[:-1]
    assert (run.intensity[1:][both] < run.intensity[:-1][both]).all()
    data = wildfire.generate(CONFIG, seed=2)
    assert np.array_equal(data.values[:, 0], run.intensity.astype(np.float32))


def test_seed_determines_output():
    first, again, other = (wildfire.generate(CONFIG, seed=s) for s in (3, 3, 4))
    assert np.array_equal(first.values, again.values)
    assert first.attrs == again.attrs
    assert not np.array_equal(first.values, other.values)


def test_fire_runs_downwind():
    landscape = wildfire.Landscape.uniform(SIZE, SIZE, burn_steps=3)
    east, west, north, south = _mean_extents(landscape, speed=8.0, direction=0.0)  # wind blows east
    assert east > west + 6 and east > 2 * west
    assert abs(north - south) < 2.5  # across the wind: symmetric
    # Wind towards +y (north = increasing row) turns the asymmetry by 90 degrees.
    east, west, north, south = _mean_extents(landscape, speed=8.0, direction=np.pi / 2)
    assert north > south + 6 and abs(east - west) < 2.5
    # No wind: roughly the same reach in every direction.
    calm = _mean_extents(landscape, speed=0.0)
    assert calm.max() - calm.min() < 2
    assert calm.min() > 0.5 * 15  # and the fire does spread


def test_fire_runs_uphill():
    cols = np.broadcast_to(np.arange(SIZE, dtype=float), (SIZE, SIZE))
    tilted = 0.3 * wildfire.CELL_SIZE * cols  # rises eastward, about 17 degrees
    landscape = wildfire.Landscape.uniform(SIZE, SIZE, burn_steps=3, elevation=tilted)
    east, west, north, south = _mean_extents(landscape)  # no wind
    assert east > west + 4 and abs(north - south) < 2
    flat = _mean_extents(wildfire.Landscape.uniform(SIZE, SIZE, burn_steps=3))
    assert east > flat[0] and west < flat[1] - 3
    # The slope coefficient controls the effect: with a = 0 the tilted plane behaves as a flat one.
    east0, west0, _, _ = _mean_extents(landscape, slope_coefficient=0.0)
    assert abs(east0 - west0) < 2


def _burning_runs(burning_cell):
    """Lengths of the complete runs of True (not touching either end) of a 1-D boolean series."""
    edges = np.diff(np.concatenate([[0], burning_cell.astype(int), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    complete = (starts > 0) & (ends < len(burning_cell))
    return (ends - starts)[complete]


@pytest.mark.parametrize("burn_steps", [1, 3, 6])
def test_cells_burn_for_their_burn_duration(burn_steps):
    config = dict(CONFIG, burn_steps=burn_steps, length=150, regrowth_rate=0.05)
    run, landscape, _ = wildfire.simulate_config(config, seed=5)
    duration = landscape.burn_duration
    assert duration[landscape.burnable].min() >= max(1, round(0.5 * burn_steps))
    assert duration[landscape.burnable].max() <= round(1.5 * burn_steps)
    checked = 0
    for row, col in zip(*np.nonzero(landscape.burnable)):
        runs = _burning_runs(run.state[:, row, col] == BURNING)
        assert (runs == duration[row, col]).all(), (row, col)
        checked += len(runs)
    assert checked > 50
    # Allowed transitions only: fuel -> burning -> burnt -> fuel; burning never reverts to fuel.
    before, after = run.state[:-1], run.state[1:]
    assert not ((before == BURNING) & (after == FUEL)).any()
    assert not ((before == BURNT) & (after == BURNING)).any()
    assert not ((before == FUEL) & (after == BURNT)).any()
    assert ((before == BURNING) & (after == BURNT)).any() and ((before == BURNT) & (after == FUEL)).any()


def test_unburnable_cells_never_burn():
    run, landscape, _ = wildfire.simulate_config(dict(CONFIG, length=200), seed=1)
    assert 0 < (~landscape.burnable).sum() < landscape.burnable.size
    assert (run.state[:, ~landscape.burnable] == UNBURNABLE).all()
    assert (run.state[:, landscape.burnable] != UNBURNABLE).all()
    assert (run.intensity[:, ~landscape.burnable] == 0).all()
    # A one-cell-wide unburnable line is a firebreak even for diagonal spread and a strong wind.
    base = wildfire.Landscape.uniform(SIZE, SIZE, burn_steps=2)
    burnable = base.burnable.copy()
    burnable[:, CENTRE + 3] = False
    walled = wildfire.Landscape(**{**vars(base), "burnable": burnable})
    for seed in range(3):
        final = _single_ignition(walled, 40, speed=10.0, direction=0.0, seed=seed, p0=0.58).state[-1]
        assert (final[:, CENTRE + 3] == UNBURNABLE).all()
        assert (final[:, CENTRE + 4:] == FUEL).all()
        assert (final[:, CENTRE + 2] != FUEL).sum() > SIZE // 2  # the fire did reach the wall


def test_long_series_keeps_burning():
    config = dict(CONFIG, length=1500, height=32, width=32, spinup=200)
    run, _, _ = wildfire.simulate_config(config, seed=0)
    burning = (run.state == BURNING).reshape(len(run.state), -1).sum(axis=1)
    assert (burning > 0).all()  # at least MIN_BURNING every frame
    assert (burning >= 5).mean() > 0.5  # mostly real fires, not just the top-up ignition
    assert burning.mean() < 0.3 * 32 * 32  # and the grid is not one blaze
    late = run.state[-300:]
    assert (late == FUEL).mean() > 0.1  # fuel regrows, so the fire never runs out
    assert run.spread_ignitions[-300:].sum() > 10 * run.random_ignitions[-300:].sum()  # fires spread


def test_wind_varies_slowly():
    wind = wildfire.make_wind(1000, 5.0, np.random.default_rng(0))
    assert 0.7 * 5.0 - 1e-9 <= wind.speed.min() < wind.speed.max() <= 1.3 * 5.0 + 1e-9
    turn = np.angle(np.exp(1j * np.diff(wind.direction)))
    assert np.abs(turn).max() < 0.06  # slowly varying: at most 2 pi / 400 + 0.3 * 2 pi / 50 ~ 0.053 per frame
    total = np.abs(np.angle(np.exp(1j * (wind.direction[-1] - wind.direction[0]))))
    assert total > 0.3 or np.abs(np.cumsum(turn)).max() > 0.3  # but it does turn


def test_wildfire_generation_is_fast():
    config = dict(CONFIG, length=1500, height=32, width=32, spinup=200)
    start = time.perf_counter()
    wildfire.generate(config, seed=0)
    assert time.perf_counter() - start < 5.0
