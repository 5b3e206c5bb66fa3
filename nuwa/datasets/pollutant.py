"""Pollutant dispersion (PD): 2D advection-diffusion-decay of point-source emissions.

Equation, for a concentration ``c(x, y, t)`` in a time-varying wind ``(u, v)``::

    dc/dt + div(u c) = D lap(c) + S - k c

Units: the grid spacing is one cell (dx = dy = 1) and the time unit is one output frame,
so ``diffusivity`` D is in cells^2/frame, ``wind_speed`` in cells/frame, ``decay_rate`` k
per frame, and ``emission_rate`` is mass per frame per source. Mass in a cell is ``c * dx
* dy``, i.e. ``c`` itself; the mass unit is arbitrary (reported as "kg m-2").

Discretisation: finite volumes on a staggered Arakawa C grid. ``c`` lives at cell centres,
``u`` on the ``width + 1`` x-faces of each row and ``v`` on the ``height + 1`` y-faces of
each column (row index = y, increasing upward in the flow sense: positive ``v`` moves
mass to higher rows). Every face carries one flux, added to the cell on one side and
taken from the other, so mass is conserved exactly up to sources, decay and the fluxes
through the outer boundary; :func:`simulate` reports that budget for each frame.

* Advection: first-order upwind (donor cell) face fluxes ``F = max(u, 0) c_left +
  min(u, 0) c_right``.
* Diffusion: central face fluxes ``F = -D (c_right - c_left) / dx``.
* Time: explicit (forward) Euler with ``n`` equal substeps per output frame.
* Boundaries (open): outflow leaves through the upwind flux of the boundary cell; where
  the wind blows inward it brings clean air (c = 0 outside), so no pollutant flows in;
  the diffusive flux across the outer boundary is zero.

Step size. The classical limits are the 2D upwind CFL condition
``(max|u| dt / dx + max|v| dt / dy) <= 1`` and the explicit diffusion condition
``dt <= dx^2 / (4 D)`` (for dx = dy). Because all three processes act at once, the step
used here enforces their *sum* cell by cell, which implies both classical conditions::

    dt * [ (max(u_east, 0) - min(u_west, 0)) / dx + (max(v_north, 0) - min(v_south, 0)) / dy
           + 2 D (1/dx^2 + 1/dy^2) + k ] <= SAFETY  (< 1)

With it every update is ``c_new = c (1 - dt * rate) + (non-negative inflows)``, so the
concentration stays non-negative. The number of substeps per frame is the smallest
integer meeting this bound, but at least ``MIN_SUBSTEPS``. With no wind and no sources the
mass therefore decays as ``(1 - k / n) ** n`` per frame (close to ``exp(-k)``).

Wind (see :func:`make_wind`): a spatially uniform mean wind whose direction rotates slowly
(a random period in ``ROTATION_PERIOD_RANGE`` frames, random sense) and whose speed
fluctuates smoothly by up to ``GUST_FRACTION`` of ``wind_speed`` (sum of sinusoids with
random periods and phases), plus an eddy perturbation from a stream function psi (a few
travelling Fourier modes, total speed at most ``EDDY_FRACTION * wind_speed``) sampled at
cell corners: ``u = d psi / dy`` and ``v = -d psi / dx`` as corner differences, so the
discrete divergence of every cell is zero exactly. The wind is evaluated at the middle of
each output interval and held fixed over its substeps.

Sources: ``sources`` distinct cells drawn at random, each emitting the constant
``emission_rate``. The series starts from clean air and ``spinup`` frames are simulated
and discarded before the first recorded frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from nuwa.datasets import field_array, register_dataset

if TYPE_CHECKING:
    import xarray as xr

SAFETY = 0.9  # fraction of the positivity limit used for the time step
MIN_SUBSTEPS = 4  # at least this many explicit steps per output frame
GUST_FRACTION = 0.3  # wind speed varies within (1 +/- GUST_FRACTION) * wind_speed
GUST_PERIOD_RANGE = (20.0, 100.0)  # frames, periods of the speed fluctuations
N_GUST_MODES = 3
ROTATION_PERIOD_RANGE = (200.0, 800.0)  # frames per full turn of the mean wind direction
EDDY_FRACTION = 0.5  # eddy speed at most this fraction of wind_speed
N_EDDY_MODES = 4
EDDY_WAVELENGTH_RANGE = (0.3, 1.0)  # fraction of min(height, width)
MIN_EDDY_WAVELENGTH = 4.0  # cells; shorter modes would be unresolved
EDDY_PERIOD_RANGE = (40.0, 160.0)  # frames, period of each travelling eddy mode
CONFIG_KEYS = (
    "length",
    "height",
    "width",
    "sources",
    "emission_rate",
    "diffusivity",
    "wind_speed",
    "decay_rate",
    "spinup",
)

# Face velocities at time t (frames): u of shape (height, width + 1), v of shape (height + 1, width).
WindFunction = Callable[[float], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True, eq=False)  # eq=False: array fields make == ambiguous
class WindField:
    """Seeded, smoothly varying, exactly divergence-free wind on the C-grid faces."""

    height: int
    width: int
    wind_speed: float
    initial_direction: float  # radians, counter-clockwise from +x
    rotation_rate: float  # radians per frame (signed)
    gust_frequencies: np.ndarray  # radians per frame
    gust_phases: np.ndarray
    eddy_wavevectors: np.ndarray  # (N_EDDY_MODES, 2) radians per cell, (kx, ky)
    eddy_amplitudes: np.ndarray  # stream-function amplitude, cells^2/frame
    eddy_frequencies: np.ndarray  # radians per frame (signed)
    eddy_phases: np.ndarray

    def mean_wind(self, t: float) -> tuple[float, float]:
        """Spatially uniform wind ``(u, v)`` at time ``t``, cells/frame."""
        gust = np.mean(np.sin(self.gust_frequencies * t + self.gust_phases))  # in [-1, 1]
        speed = self.wind_speed * (1 + GUST_FRACTION * gust)
        direction = self.initial_direction + self.rotation_rate * t
        return speed * math.cos(direction), speed * math.sin(direction)

    def stream_function(self, t: float) -> np.ndarray:
        """Eddy stream function at the cell corners, shape ``(height + 1, width + 1)``."""
        corner_y = np.arange(self.height + 1, dtype=float)[:, None, None]
        corner_x = np.arange(self.width + 1, dtype=float)[None, :, None]
        kx, ky = self.eddy_wavevectors[:, 0], self.eddy_wavevectors[:, 1]
        phase = kx * corner_x + ky * corner_y - self.eddy_frequencies * t + self.eddy_phases
        return (self.eddy_amplitudes * np.sin(phase)).sum(axis=-1)

    def faces(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Face velocities ``u`` (height, width + 1) and ``v`` (height + 1, width) at time ``t``."""
        mean_u, mean_v = self.mean_wind(t)
        psi = self.stream_function(t)
        # Corner differences of one psi: the divergence of every cell telescopes to zero.
        u = mean_u + (psi[1:, :] - psi[:-1, :])
        v = mean_v - (psi[:, 1:] - psi[:, :-1])
        return u, v


def make_wind(height: int, width: int, wind_speed: float, rng: np.random.Generator) -> WindField:
    """Draw a :class:`WindField` (see the module docstring for its form)."""
    gust_periods = rng.uniform(*GUST_PERIOD_RANGE, size=N_GUST_MODES)
    rotation_period = rng.uniform(*ROTATION_PERIOD_RANGE)
    rotation_sense = rng.choice([-1.0, 1.0])
    wavelengths = np.maximum(
        rng.uniform(*EDDY_WAVELENGTH_RANGE, size=N_EDDY_MODES) * min(height, width), MIN_EDDY_WAVELENGTH
    )
    wavenumbers = 2 * np.pi / wavelengths
    orientations = rng.uniform(0, 2 * np.pi, size=N_EDDY_MODES)
    eddy_periods = rng.uniform(*EDDY_PERIOD_RANGE, size=N_EDDY_MODES) * rng.choice([-1.0, 1.0], size=N_EDDY_MODES)
    return WindField(
        height=height,
        width=width,
        wind_speed=wind_speed,
        initial_direction=rng.uniform(0, 2 * np.pi),
        rotation_rate=rotation_sense * 2 * np.pi / rotation_period,
        gust_frequencies=2 * np.pi / gust_periods,
        gust_phases=rng.uniform(0, 2 * np.pi, size=N_GUST_MODES),
        eddy_wavevectors=np.column_stack([np.cos(orientations), np.sin(orientations)]) * wavenumbers[:, None],
        # A mode's velocity amplitude is amplitude * |k|; split the eddy speed evenly over modes.
        eddy_amplitudes=EDDY_FRACTION * wind_speed / (N_EDDY_MODES * wavenumbers),
        eddy_frequencies=2 * np.pi / eddy_periods,
        eddy_phases=rng.uniform(0, 2 * np.pi, size=N_EDDY_MODES),
    )


@dataclass
class PollutantRun:
    """Result of :func:`simulate`; frame ``t`` is the state after ``t`` output intervals.

    The budget arrays have one entry per interval ``t -> t + 1`` and satisfy
    ``mass[t + 1] - mass[t] == emitted[t] - decayed[t] - outflow[t]`` up to round-off.
    """

    concentration: np.ndarray  # (n_recorded, height, width) float64, frames record_from..n_frames
    recorded_frames: np.ndarray  # (n_recorded,) frame indices of ``concentration``
    mass: np.ndarray  # (n_frames + 1,) total mass at every frame
    emitted: np.ndarray  # (n_frames,) mass added by the sources during each interval
    decayed: np.ndarray  # (n_frames,) mass removed by decay during each interval
    outflow: np.ndarray  # (n_frames,) net mass leaving through the outer boundary
    substeps: np.ndarray  # (n_frames,) explicit steps used for each interval


def stable_substeps(
    u: np.ndarray, v: np.ndarray, diffusivity: float, decay_rate: float, min_substeps: int = MIN_SUBSTEPS
) -> int:
    """Substeps per frame so that every cell keeps ``dt * (outflow + diffusion + decay rate) <= SAFETY``."""
    outgoing = (
        np.maximum(u[:, 1:], 0) - np.minimum(u[:, :-1], 0) + np.maximum(v[1:, :], 0) - np.minimum(v[:-1, :], 0)
    )
    max_rate = outgoing.max() + 4 * diffusivity + decay_rate  # 2 D (1/dx^2 + 1/dy^2) with dx = dy = 1
    return max(min_substeps, math.ceil(max_rate / SAFETY))


def simulate(
    initial: np.ndarray,
    n_frames: int,
    wind: WindFunction,
    emission: np.ndarray,
    diffusivity: float,
    decay_rate: float,
    record_from: int = 0,
    min_substeps: int = MIN_SUBSTEPS,
) -> PollutantRun:
    """Integrate ``n_frames`` output intervals from ``initial`` and keep frames ``record_from..n_frames``.

    ``emission`` is the source term in mass per frame per cell (shape of ``initial``);
    ``wind(t)`` gives the face velocities, evaluated at each interval's midpoint.
    """
    if diffusivity < 0 or decay_rate < 0 or np.any(emission < 0):
        raise ValueError("diffusivity, decay_rate and emission must be non-negative")
    if not 0 <= record_from <= n_frames:
        raise ValueError(f"record_from must be in [0, {n_frames}], got {record_from}")
    height, width = initial.shape
    c = np.array(initial, dtype=np.float64)
    emission = np.asarray(emission, dtype=np.float64)
    total_emission = emission.sum()

    concentration = np.empty((n_frames + 1 - record_from, height, width))
    mass = np.empty(n_frames + 1)
    emitted, decayed, outflow = np.zeros(n_frames), np.zeros(n_frames), np.zeros(n_frames)
    substeps = np.empty(n_frames, dtype=np.int64)
    flux_x = np.zeros((height, width + 1))
    flux_y = np.zeros((height + 1, width))

    mass[0] = c.sum()
    if record_from == 0:
        concentration[0] = c
    for frame in range(n_frames):
        u, v = wind(frame + 0.5)
        u_pos, u_neg = np.maximum(u, 0), np.minimum(u, 0)
        v_pos, v_neg = np.maximum(v, 0), np.minimum(v, 0)
        n_sub = stable_substeps(u, v, diffusivity, decay_rate, min_substeps)
        dt = 1.0 / n_sub
        for _ in range(n_sub):
            # Interior faces: donor-cell advection + central diffusion.
            flux_x[:, 1:-1] = (
                u_pos[:, 1:-1] * c[:, :-1] + u_neg[:, 1:-1] * c[:, 1:] - diffusivity * (c[:, 1:] - c[:, :-1])
            )
            flux_y[1:-1, :] = (
                v_pos[1:-1, :] * c[:-1, :] + v_neg[1:-1, :] * c[1:, :] - diffusivity * (c[1:, :] - c[:-1, :])
            )
            # Boundary faces: only outflow from the boundary cell; inflow is clean air, no diffusion.
            flux_x[:, 0] = u_neg[:, 0] * c[:, 0]
            flux_x[:, -1] = u_pos[:, -1] * c[:, -1]
            flux_y[0, :] = v_neg[0, :] * c[0, :]
            flux_y[-1, :] = v_pos[-1, :] * c[-1, :]

            boundary_out = flux_x[:, -1].sum() - flux_x[:, 0].sum() + flux_y[-1, :].sum() - flux_y[0, :].sum()
            decay_now = decay_rate * c.sum()
            tendency = -(flux_x[:, 1:] - flux_x[:, :-1]) - (flux_y[1:, :] - flux_y[:-1, :]) + emission - decay_rate * c
            c = c + dt * tendency

            emitted[frame] += dt * total_emission
            decayed[frame] += dt * decay_now
            outflow[frame] += dt * boundary_out
        substeps[frame] = n_sub
        mass[frame + 1] = c.sum()
        if frame + 1 >= record_from:
            concentration[frame + 1 - record_from] = c

    return PollutantRun(
        concentration=concentration,
        recorded_frames=np.arange(record_from, n_frames + 1),
        mass=mass,
        emitted=emitted,
        decayed=decayed,
        outflow=outflow,
        substeps=substeps,
    )


def _read_config(config: dict) -> dict:
    missing = [key for key in CONFIG_KEYS if key not in config]
    if missing:
        raise KeyError(f"pollutant config is missing {', '.join(missing)}")
    integer_keys = ("length", "height", "width", "sources", "spinup")
    settings = {key: int(config[key]) if key in integer_keys else float(config[key]) for key in CONFIG_KEYS}
    if settings["length"] < 1 or settings["height"] < 1 or settings["width"] < 1 or settings["spinup"] < 0:
        raise ValueError("pollutant needs length, height, width >= 1 and spinup >= 0")
    if not 0 <= settings["sources"] <= settings["height"] * settings["width"]:
        raise ValueError(f"pollutant sources must be in [0, height * width], got {settings['sources']}")
    for key in ("emission_rate", "diffusivity", "wind_speed", "decay_rate"):
        if settings[key] < 0:
            raise ValueError(f"pollutant {key} must be non-negative, got {settings[key]}")
    return settings


def source_cells(height: int, width: int, sources: int, rng: np.random.Generator) -> np.ndarray:
    """Distinct random source cells as ``(row, col)`` pairs, shape ``(sources, 2)``."""
    flat = rng.choice(height * width, size=sources, replace=False)
    return np.column_stack(np.unravel_index(flat, (height, width)))


def simulate_config(config: dict, seed: int) -> tuple[PollutantRun, np.ndarray]:
    """Run the simulator a config describes; returns the run and the source cells.

    The run covers ``spinup + length - 1`` intervals from clean air and records the last
    ``length`` frames (its budget arrays cover the spin-up too).
    """
    settings = _read_config(config)
    height, width = settings["height"], settings["width"]
    rng = np.random.default_rng(seed)
    cells = source_cells(height, width, settings["sources"], rng)
    wind = make_wind(height, width, settings["wind_speed"], rng)
    emission = np.zeros((height, width))
    emission[cells[:, 0], cells[:, 1]] = settings["emission_rate"]  # cell area is 1
    run = simulate(
        initial=np.zeros((height, width)),
        n_frames=settings["spinup"] + settings["length"] - 1,
        wind=wind.faces,
        emission=emission,
        diffusivity=settings["diffusivity"],
        decay_rate=settings["decay_rate"],
        record_from=settings["spinup"],
    )
    return run, cells


@register_dataset("pollutant", config_schema={
    "length": {"type": "integer", "minimum": 2},
    "sources": {"type": "integer", "minimum": 1},
    "emission_rate": {"type": "number", "exclusiveMinimum": 0},
    "diffusivity": {"type": "number", "minimum": 0},
    "wind_speed": {"type": "number", "minimum": 0},
    "decay_rate": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
    "spinup": {"type": "integer", "minimum": 0},
})
def generate(config: dict, seed: int) -> xr.DataArray:
    """Pollutant-dispersion series, dims ``(time, channel, y, x)``, float32, non-negative."""
    settings = _read_config(config)
    run, cells = simulate_config(config, seed)
    return field_array(
        run.concentration[:, None],
        name="concentration",
        channels=["concentration"],
        attrs={
            "units": "kg m-2",
            "long_name": "pollutant concentration",
            "comment": "arbitrary mass per unit cell area; grid spacing 1 cell, time unit 1 frame",
            "generator": "pollutant",
            "scheme": "finite-volume Arakawa C grid, donor-cell advection, central diffusion, explicit Euler",
            "boundary": "open: upwind outflow, clean-air inflow, zero diffusive flux",
            "seed": int(seed),
            **settings,
            "source_cells": ";".join(f"{row},{col}" for row, col in cells),
            "safety": SAFETY,
            "min_substeps": MIN_SUBSTEPS,
            "gust_fraction": GUST_FRACTION,
            "eddy_fraction": EDDY_FRACTION,
            "n_eddy_modes": N_EDDY_MODES,
            "n_gust_modes": N_GUST_MODES,
            "rotation_period_min": ROTATION_PERIOD_RANGE[0],
            "rotation_period_max": ROTATION_PERIOD_RANGE[1],
            "substeps_min": int(run.substeps.min()) if len(run.substeps) else MIN_SUBSTEPS,
            "substeps_max": int(run.substeps.max()) if len(run.substeps) else MIN_SUBSTEPS,
        },
    )
