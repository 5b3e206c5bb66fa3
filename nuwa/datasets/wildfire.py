"""Wildfire spread (FireSys): a stochastic cellular automaton after Alexandridis et al. (2008).

Each cell of the grid is in one of four states (:data:`UNBURNABLE`, :data:`FUEL`,
:data:`BURNING`, :data:`BURNT`). One step of the automaton is one output frame; the grid
spacing is ``CELL_SIZE`` metres.

Spread. During the step ``t -> t + 1`` every cell burning at ``t`` tries, independently,
to ignite each of its 8 neighbours that holds fuel, with probability::

    p = p0 (1 + p_veg) (1 + p_den) p_wind p_slope (1 - m)        (clipped to [0, 1])

* ``p_veg``, ``p_den``: vegetation type and density of the *target* cell, from two seeded
  smooth random fields mapped onto ``P_VEG_RANGE`` and ``P_DEN_RANGE`` (the ranges of the
  discrete classes of Alexandridis et al.).
* ``p_wind = exp(c1 V) exp(c2 V (cos(theta) - 1))`` with ``V`` the wind speed (m/s),
  ``theta`` the angle between the direction the wind blows towards and the direction of
  spread (source -> target); ``c1 = wind_coefficient``, ``c2 = wind_direction_coefficient``.
* ``p_slope = exp(a theta_s)`` with ``a = slope_coefficient`` (per degree) and ``theta_s =
  atan((E_target - E_source) / d)`` in degrees, ``d`` the distance between the cell
  centres (``CELL_SIZE`` or ``sqrt(2) CELL_SIZE``): positive uphill, so fire runs uphill.
* ``m``: fuel moisture in [0, 1], a seeded smooth field whose mean is ``moisture`` (it
  spans ``moisture * (1 +/- MOISTURE_VARIATION)``, clipped to [0, 1]).

A fuel cell ignites if at least one of its burning neighbours succeeds.

Burning. A cell burns for ``burn_duration`` consecutive frames, fuel-dependent:
``max(1, round(burn_steps * (0.5 + density)))`` with ``density`` in [0, 1] (denser fuel
burns longer), then becomes burnt. Its fire-front intensity while burning is
``peak * (1 - age / burn_duration)`` (``age`` = 0 on the first burning frame), with
``peak = INTENSITY_FLOOR + (1 - INTENSITY_FLOOR) * load`` and ``load`` in [0, 1] the
normalised fuel factor ``(1 + p_veg)(1 + p_den)``; every other cell has intensity 0. The
field to forecast is this intensity, in [0, 1].

Landscape. Elevation is a smooth random field spanning ``TERRAIN_RELIEF`` metres. The
lowest ``UNBURNABLE_FRACTION`` of the density field is unburnable (rock, water, roads);
those cells never change state.

Wind. Spatially uniform, with a speed ``wind_speed * (1 + GUST_FRACTION * g(t))`` (``g``
a mean of sinusoids with random periods, in [-1, 1]) and a direction that starts at a
random angle and turns slowly (one turn in a random period from ``ROTATION_PERIOD_RANGE``
frames, random sense) plus a meander of ``DIRECTION_SWING`` radians.

Ignitions and regrowth (so a long series keeps burning). At every step the number of new
random ignitions is Poisson(``ignition_rate``), placed on random fuel cells; moreover, when
fewer than ``MIN_BURNING`` cells burn after the step, fuel cells are ignited to make up the
difference. A burnt cell turns back into fuel after a recovery time drawn when it burns
out: ``recovery_factor / regrowth_rate * U(1 - RECOVERY_JITTER, 1 + RECOVERY_JITTER)``
steps (rounded up), where ``recovery_factor`` in [0.5, 1.5] is a smooth field (moist
ground recovers faster), so the mean rate is about ``regrowth_rate`` per step and a burn
scar regrows as a coherent patch rather than as salt-and-pepper noise. With
``regrowth_rate = 0`` nothing regrows. The run starts from an unburnt landscape with ``MIN_BURNING`` random ignitions;
``spinup`` frames are simulated and discarded before the first recorded frame.

Order within a step: spread draws (from the cells burning at ``t``); burning cells age and
burnt-out ones turn burnt; the newly ignited cells start burning with age 0; random
ignitions; last, burnt cells (of ``t``) that have recovered turn back to fuel. So every
cell follows fuel -> burning -> burnt -> fuel, one change per step at most.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from nuwa.datasets import field_array, register_dataset

if TYPE_CHECKING:
    import xarray as xr

UNBURNABLE, FUEL, BURNING, BURNT = 0, 1, 2, 3
STATE_NAMES = ("unburnable", "fuel", "burning", "burnt")
# (dy, dx): direction of spread from a source cell to its target neighbour (rows = y).
OFFSETS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))

CELL_SIZE = 30.0  # metres
TERRAIN_RELIEF = 150.0  # metres, elevation range of the landscape
TERRAIN_SCALE = 0.25  # correlation length of the terrain, fraction of min(height, width)
FUEL_SCALE = 0.12  # correlation length of vegetation / density / moisture fields, same unit
MIN_FIELD_SCALE = 2.0  # cells
P_VEG_RANGE = (-0.3, 0.4)
P_DEN_RANGE = (-0.4, 0.3)
UNBURNABLE_FRACTION = 0.06
MOISTURE_VARIATION = 0.5
INTENSITY_FLOOR = 0.5
MIN_BURNING = 1
RECOVERY_JITTER = 0.25
GUST_FRACTION = 0.3
GUST_PERIOD_RANGE = (20.0, 100.0)  # frames
N_GUST_MODES = 3
ROTATION_PERIOD_RANGE = (400.0, 1600.0)  # frames per full turn of the wind direction
DIRECTION_SWING = 0.3  # radians
SWING_PERIOD_RANGE = (50.0, 200.0)  # frames
CONFIG_KEYS = (
    "length",
    "height",
    "width",
    "p0",
    "wind_speed",
    "wind_coefficient",
    "wind_direction_coefficient",
    "slope_coefficient",
    "moisture",
    "ignition_rate",
    "regrowth_rate",
    "burn_steps",
    "spinup",
)
INTEGER_KEYS = ("length", "height", "width", "burn_steps", "spinup")


@dataclass(frozen=True, eq=False)
class Landscape:
    """Static maps of a run, each of shape ``(height, width)``."""

    burnable: np.ndarray  # bool
    p_veg: np.ndarray  # vegetation-type term, P_VEG_RANGE (0 where unburnable)
    p_den: np.ndarray  # vegetation-density term, P_DEN_RANGE (0 where unburnable)
    moisture: np.ndarray  # fuel moisture in [0, 1]
    elevation: np.ndarray  # metres
    burn_duration: np.ndarray  # int, frames a cell burns (>= 1)
    peak_intensity: np.ndarray  # intensity on the first burning frame, in [INTENSITY_FLOOR, 1]
    recovery_factor: np.ndarray  # relative regrowth time of a burnt cell, in [0.5, 1.5]

    @classmethod
    def uniform(cls, height: int, width: int, burn_steps: int, elevation: np.ndarray | None = None,
                moisture: float = 0.0) -> Landscape:
        """Everywhere burnable, neutral vegetation (p_veg = p_den = 0), flat unless ``elevation``."""
        zeros = np.zeros((height, width))
        return cls(
            burnable=np.ones((height, width), dtype=bool),
            p_veg=zeros,
            p_den=zeros,
            moisture=np.full((height, width), float(moisture)),
            elevation=zeros if elevation is None else np.asarray(elevation, dtype=float),
            burn_duration=np.full((height, width), max(1, int(burn_steps)), dtype=np.int64),
            peak_intensity=np.ones((height, width)),
            recovery_factor=np.ones((height, width)),
        )


@dataclass(frozen=True, eq=False)
class Wind:
    """Spatially uniform wind per step: speed (m/s) and the direction it blows towards
    (radians, counter-clockwise from +x with +y = increasing row), each of shape ``(n_steps,)``."""

    speed: np.ndarray
    direction: np.ndarray

    @classmethod
    def constant(cls, n_steps: int, speed: float, direction: float) -> Wind:
        return cls(np.full(n_steps, float(speed)), np.full(n_steps, float(direction)))


@dataclass
class WildfireRun:
    """Result of :func:`simulate`; recorded frame ``i`` is the state after ``recorded_frames[i]`` steps."""

    state: np.ndarray  # (n_recorded, height, width) int8: UNBURNABLE / FUEL / BURNING / BURNT
    age: np.ndarray  # (n_recorded, height, width) int: frames a burning cell has burnt (0 elsewhere)
    intensity: np.ndarray  # (n_recorded, height, width) float64 in [0, 1]
    recorded_frames: np.ndarray  # (n_recorded,)
    n_burning: np.ndarray  # (n_steps + 1,) burning cells at every frame
    spread_ignitions: np.ndarray  # (n_steps,) cells ignited by neighbours during each step
    random_ignitions: np.ndarray  # (n_steps,) cells ignited at random during each step (+ top-ups)


def smooth_field(height: int, width: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Seeded Gaussian-filtered white noise (correlation length ``scale`` cells), rank-mapped to [0, 1].

    Generated on a grid padded by ``3 * scale`` cells on each side and cropped, so the field is
    not periodic. Values are the ranks of the cells scaled to [0, 1] (a uniform marginal).
    """
    scale = max(float(scale), MIN_FIELD_SCALE)
    pad = math.ceil(3 * scale)
    big_h, big_w = height + 2 * pad, width + 2 * pad
    noise = rng.standard_normal((big_h, big_w))
    ky = np.fft.fftfreq(big_h)[:, None]
    kx = np.fft.rfftfreq(big_w)[None, :]
    kernel = np.exp(-2 * (np.pi * scale) ** 2 * (kx**2 + ky**2))
    field = np.fft.irfft2(np.fft.rfft2(noise) * kernel, s=(big_h, big_w))[pad:pad + height, pad:pad + width]
    ranks = np.argsort(np.argsort(field, axis=None), kind="stable").reshape(height, width)
    return ranks / max(height * width - 1, 1)


def make_landscape(height: int, width: int, burn_steps: int, moisture: float, rng: np.random.Generator) -> Landscape:
    """Draw the static maps (see the module docstring)."""
    fuel_scale = FUEL_SCALE * min(height, width)
    vegetation = smooth_field(height, width, fuel_scale, rng)
    density_rank = smooth_field(height, width, fuel_scale, rng)
    wetness = smooth_field(height, width, fuel_scale, rng)
    terrain = smooth_field(height, width, TERRAIN_SCALE * min(height, width), rng)

    burnable = density_rank >= UNBURNABLE_FRACTION
    density = np.clip((density_rank - UNBURNABLE_FRACTION) / (1 - UNBURNABLE_FRACTION), 0, 1)
    p_veg = np.where(burnable, P_VEG_RANGE[0] + (P_VEG_RANGE[1] - P_VEG_RANGE[0]) * vegetation, 0.0)
    p_den = np.where(burnable, P_DEN_RANGE[0] + (P_DEN_RANGE[1] - P_DEN_RANGE[0]) * density, 0.0)
    factor = (1 + p_veg) * (1 + p_den)
    low, high = (1 + P_VEG_RANGE[0]) * (1 + P_DEN_RANGE[0]), (1 + P_VEG_RANGE[1]) * (1 + P_DEN_RANGE[1])
    load = np.clip((factor - low) / (high - low), 0, 1)
    duration = np.maximum(1, np.rint(burn_steps * (0.5 + density))).astype(np.int64)
    return Landscape(
        burnable=burnable,
        p_veg=p_veg,
        p_den=p_den,
        moisture=np.clip(moisture * (1 + MOISTURE_VARIATION * (2 * wetness - 1)), 0, 1),
        elevation=TERRAIN_RELIEF * terrain,
        burn_duration=np.where(burnable, duration, 0),
        peak_intensity=np.where(burnable, INTENSITY_FLOOR + (1 - INTENSITY_FLOOR) * load, 0.0),
        recovery_factor=1.5 - wetness,
    )


def make_wind(n_steps: int, wind_speed: float, rng: np.random.Generator) -> Wind:
    """Slowly varying uniform wind for steps ``0..n_steps-1`` (see the module docstring)."""
    t = np.arange(n_steps, dtype=float) + 0.5
    gust_freq = 2 * np.pi / rng.uniform(*GUST_PERIOD_RANGE, size=N_GUST_MODES)
    gust_phase = rng.uniform(0, 2 * np.pi, size=N_GUST_MODES)
    gust = np.sin(t[:, None] * gust_freq + gust_phase).mean(axis=1)
    rotation = rng.choice([-1.0, 1.0]) * 2 * np.pi / rng.uniform(*ROTATION_PERIOD_RANGE)
    swing_freq = 2 * np.pi / rng.uniform(*SWING_PERIOD_RANGE)
    swing_phase = rng.uniform(0, 2 * np.pi)
    direction = rng.uniform(0, 2 * np.pi) + rotation * t + DIRECTION_SWING * np.sin(swing_freq * t + swing_phase)
    return Wind(speed=wind_speed * (1 + GUST_FRACTION * gust), direction=np.mod(direction, 2 * np.pi))


def static_spread_factors(landscape: Landscape, p0: float, slope_coefficient: float,
                          cell_size: float = CELL_SIZE) -> np.ndarray:
    """``p0 (1 + p_veg)(1 + p_den) p_slope (1 - m)`` for each offset and target cell, ``(8, H, W)``.

    Entry ``[k, i, j]`` is for spread into cell ``(i, j)`` from ``(i - dy, j - dx)``; the wind
    factor (uniform in space) multiplies it at each step.
    """
    height, width = landscape.burnable.shape
    base = p0 * (1 + landscape.p_veg) * (1 + landscape.p_den) * (1 - landscape.moisture)
    base = np.where(landscape.burnable, base, 0.0)
    elevation = np.pad(landscape.elevation, 1, mode="edge")
    factors = np.empty((len(OFFSETS), height, width))
    for k, (dy, dx) in enumerate(OFFSETS):
        source = elevation[1 - dy:1 - dy + height, 1 - dx:1 - dx + width]
        rise = landscape.elevation - source
        slope_deg = np.degrees(np.arctan(rise / (cell_size * math.hypot(dy, dx))))
        factors[k] = base * np.exp(slope_coefficient * slope_deg)
    return factors


def wind_factors(speed: float, direction: float, wind_coefficient: float,
                 wind_direction_coefficient: float) -> np.ndarray:
    """``p_wind`` for each of the 8 spread directions, shape ``(8,)``."""
    spread_angle = np.array([math.atan2(dy, dx) for dy, dx in OFFSETS])
    cos_theta = np.cos(spread_angle - direction)
    return np.exp(wind_coefficient * speed) * np.exp(wind_direction_coefficient * speed * (cos_theta - 1))


def _ignite_random(state: np.ndarray, age: np.ndarray, count: int, rng: np.random.Generator) -> int:
    if count <= 0:
        return 0
    candidates = np.flatnonzero(state == FUEL)
    count = min(count, len(candidates))
    if count == 0:
        return 0
    cells = rng.choice(candidates, size=count, replace=False)
    state.flat[cells] = BURNING
    age.flat[cells] = 0
    return count


def simulate(
    landscape: Landscape,
    initial_state: np.ndarray,
    n_steps: int,
    wind: Wind,
    p0: float,
    wind_coefficient: float,
    wind_direction_coefficient: float,
    slope_coefficient: float,
    ignition_rate: float,
    regrowth_rate: float,
    rng: np.random.Generator,
    record_from: int = 0,
    min_burning: int = MIN_BURNING,
    cell_size: float = CELL_SIZE,
) -> WildfireRun:
    """Run ``n_steps`` steps of the automaton from ``initial_state`` (burning cells start at age 0)
    and keep frames ``record_from..n_steps``. ``wind`` must cover at least ``n_steps`` steps."""
    if not 0 <= record_from <= n_steps:
        raise ValueError(f"record_from must be in [0, {n_steps}], got {record_from}")
    if len(wind.speed) < n_steps or len(wind.direction) < n_steps:
        raise ValueError("wind must cover every step")
    if p0 < 0 or ignition_rate < 0 or not 0 <= regrowth_rate <= 1:
        raise ValueError("p0 and ignition_rate must be non-negative and regrowth_rate in [0, 1]")
    height, width = landscape.burnable.shape
    state = np.array(initial_state, dtype=np.int8)
    if state.shape != (height, width):
        raise ValueError(f"initial_state must have shape {(height, width)}")
    if np.any((state == UNBURNABLE) != ~landscape.burnable):
        raise ValueError("initial_state must be UNBURNABLE exactly where the landscape is unburnable")
    age = np.zeros((height, width), dtype=np.int64)
    since_burnt = np.zeros((height, width), dtype=np.int64)  # steps a burnt cell has been burnt
    regrow_at = np.full((height, width), np.iinfo(np.int64).max)  # its recovery time
    mean_recovery = landscape.recovery_factor / regrowth_rate if regrowth_rate > 0 else None
    duration = landscape.burn_duration
    static = static_spread_factors(landscape, p0, slope_coefficient, cell_size)

    n_recorded = n_steps + 1 - record_from
    states = np.empty((n_recorded, height, width), dtype=np.int8)
    ages = np.empty((n_recorded, height, width), dtype=np.int64)
    n_burning = np.empty(n_steps + 1, dtype=np.int64)
    spread_ignitions = np.zeros(n_steps, dtype=np.int64)
    random_ignitions = np.zeros(n_steps, dtype=np.int64)
    padded = np.zeros((height + 2, width + 2), dtype=bool)
    sources = np.empty((len(OFFSETS), height, width), dtype=bool)

    n_burning[0] = np.count_nonzero(state == BURNING)
    if record_from == 0:
        states[0], ages[0] = state, age
    for step in range(n_steps):
        burning = state == BURNING
        padded[1:-1, 1:-1] = burning
        for k, (dy, dx) in enumerate(OFFSETS):
            sources[k] = padded[1 - dy:1 - dy + height, 1 - dx:1 - dx + width]
        p = np.minimum(static * wind_factors(wind.speed[step], wind.direction[step], wind_coefficient,
                                             wind_direction_coefficient)[:, None, None], 1.0)
        draws = rng.random(static.shape)
        ignited = (state == FUEL) & np.any(sources & (draws < p), axis=0)

        burnt_before = state == BURNT
        age[burning] += 1
        burnt_out = burning & (age >= duration)
        state[burnt_out] = BURNT
        age[burnt_out] = 0
        since_burnt[burnt_out] = 0
        if mean_recovery is not None:
            jitter = rng.uniform(1 - RECOVERY_JITTER, 1 + RECOVERY_JITTER, size=np.count_nonzero(burnt_out))
            regrow_at[burnt_out] = np.ceil(mean_recovery[burnt_out] * jitter)
        state[ignited] = BURNING
        age[ignited] = 0
        spread_ignitions[step] = np.count_nonzero(ignited)

        extra = int(rng.poisson(ignition_rate)) if ignition_rate > 0 else 0
        random_ignitions[step] = _ignite_random(state, age, extra, rng)
        shortfall = min_burning - np.count_nonzero(state == BURNING)
        random_ignitions[step] += _ignite_random(state, age, shortfall, rng)
        since_burnt[burnt_before] += 1  # last: a cell regrown now cannot burn before the next step
        state[burnt_before & (since_burnt >= regrow_at)] = FUEL

        n_burning[step + 1] = np.count_nonzero(state == BURNING)
        if step + 1 >= record_from:
            states[step + 1 - record_from], ages[step + 1 - record_from] = state, age

    return WildfireRun(
        state=states,
        age=ages,
        intensity=fire_intensity(states, ages, landscape),
        recorded_frames=np.arange(record_from, n_steps + 1),
        n_burning=n_burning,
        spread_ignitions=spread_ignitions,
        random_ignitions=random_ignitions,
    )


def fire_intensity(state: np.ndarray, age: np.ndarray, landscape: Landscape) -> np.ndarray:
    """Fire-front intensity in [0, 1]: ``peak * (1 - age / burn_duration)`` on burning cells, else 0."""
    duration = np.maximum(landscape.burn_duration, 1)
    value = landscape.peak_intensity * (1 - age / duration)
    return np.where(state == BURNING, np.clip(value, 0, 1), 0.0)


def initial_state(landscape: Landscape, ignitions: int, rng: np.random.Generator) -> np.ndarray:
    """Unburnt landscape with ``ignitions`` random burning fuel cells."""
    state = np.where(landscape.burnable, FUEL, UNBURNABLE).astype(np.int8)
    _ignite_random(state, np.zeros(state.shape, dtype=np.int64), ignitions, rng)
    return state


def _read_config(config: dict) -> dict:
    missing = [key for key in CONFIG_KEYS if key not in config]
    if missing:
        raise KeyError(f"wildfire config is missing {', '.join(missing)}")
    settings = {key: int(config[key]) if key in INTEGER_KEYS else float(config[key]) for key in CONFIG_KEYS}
    if settings["length"] < 1 or settings["height"] < 1 or settings["width"] < 1 or settings["spinup"] < 0:
        raise ValueError("wildfire needs length, height, width >= 1 and spinup >= 0")
    if settings["burn_steps"] < 1:
        raise ValueError(f"wildfire burn_steps must be >= 1, got {settings['burn_steps']}")
    for key in ("p0", "wind_speed", "wind_coefficient", "wind_direction_coefficient", "slope_coefficient",
                "ignition_rate"):
        if settings[key] < 0:
            raise ValueError(f"wildfire {key} must be non-negative, got {settings[key]}")
    for key in ("moisture", "regrowth_rate"):
        if not 0 <= settings[key] <= 1:
            raise ValueError(f"wildfire {key} must be in [0, 1], got {settings[key]}")
    return settings


def simulate_config(config: dict, seed: int) -> tuple[WildfireRun, Landscape, Wind]:
    """Run the automaton a config describes: ``spinup + length - 1`` steps, the last ``length``
    frames recorded. Returns the run, its landscape and its wind."""
    settings = _read_config(config)
    height, width = settings["height"], settings["width"]
    rng = np.random.default_rng(seed)
    landscape = make_landscape(height, width, settings["burn_steps"], settings["moisture"], rng)
    n_steps = settings["spinup"] + settings["length"] - 1
    wind = make_wind(n_steps, settings["wind_speed"], rng)
    run = simulate(
        landscape,
        initial_state(landscape, MIN_BURNING, rng),
        n_steps,
        wind,
        p0=settings["p0"],
        wind_coefficient=settings["wind_coefficient"],
        wind_direction_coefficient=settings["wind_direction_coefficient"],
        slope_coefficient=settings["slope_coefficient"],
        ignition_rate=settings["ignition_rate"],
        regrowth_rate=settings["regrowth_rate"],
        rng=rng,
        record_from=settings["spinup"],
    )
    return run, landscape, wind


@register_dataset("wildfire", config_schema={
    "length": {"type": "integer", "minimum": 2},
    "p0": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "wind_speed": {"type": "number", "minimum": 0, "maximum": 30},
    "wind_coefficient": {"type": "number", "minimum": 0, "maximum": 1},
    "wind_direction_coefficient": {"type": "number", "minimum": 0, "maximum": 1},
    "slope_coefficient": {"type": "number", "minimum": 0, "maximum": 0.5},
    "moisture": {"type": "number", "minimum": 0, "maximum": 1},
    "ignition_rate": {"type": "number", "minimum": 0, "maximum": 100},
    "regrowth_rate": {"type": "number", "minimum": 0, "maximum": 1},
    "burn_steps": {"type": "integer", "minimum": 1, "maximum": 100},
    "spinup": {"type": "integer", "minimum": 0},
})
def generate(config: dict, seed: int) -> xr.DataArray:
    """Fire-front intensity series, dims ``(time, channel, y, x)``, float32 in [0, 1]."""
    settings = _read_config(config)
    run, landscape, _ = simulate_config(config, seed)
    burning = run.state == BURNING
    return field_array(
        run.intensity[:, None],
        name="intensity",
        channels=["intensity"],
        attrs={
            "units": "1",
            "long_name": "fire-front intensity",
            "comment": "stochastic cellular automaton after Alexandridis et al. (2008); one step per frame",
            "generator": "wildfire",
            "seed": int(seed),
            **settings,
            "cell_size_m": CELL_SIZE,
            "terrain_relief_m": TERRAIN_RELIEF,
            "unburnable_fraction": float(np.mean(~landscape.burnable)),
            "moisture_variation": MOISTURE_VARIATION,
            "intensity_floor": INTENSITY_FLOOR,
            "recovery_jitter": RECOVERY_JITTER,
            "min_burning": MIN_BURNING,
            "gust_fraction": GUST_FRACTION,
            "direction_swing_rad": DIRECTION_SWING,
            "rotation_period_min": ROTATION_PERIOD_RANGE[0],
            "rotation_period_max": ROTATION_PERIOD_RANGE[1],
            "mean_burning_fraction": float(burning.mean()),
            "random_ignitions": int(run.random_ignitions[settings["spinup"]:].sum()),
        },
    )
