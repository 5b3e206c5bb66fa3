"""Moving-MNIST-like bouncing digit glyphs, generated as one continuous time series.

Each of ``glyphs`` digits (0-9) is a ``glyph_size`` x ``glyph_size`` bitmap that moves with
a constant velocity and reflects off the frame borders; a frame is the pixel-wise maximum
of the glyph bitmaps placed at their (integer, rounded) positions, so values lie in [0, 1].

Glyphs are rendered from DejaVu Sans, the font matplotlib ships, by point sampling the
outline (``TextPath``, curves flattened to polygons, even-odd rule so the holes of 0, 4, 6,
8, 9 stay empty) on a ``SUPERSAMPLE`` x ``SUPERSAMPLE`` grid per pixel; the fraction of
samples inside gives anti-aliased intensities. No network and no files outside matplotlib.

Randomness (all from ``numpy.random.default_rng(seed)``): each glyph's digit, start
position (uniform over the positions that keep it fully inside the frame) and velocity
(uniform direction, speed uniform in ``[MIN_SPEED_FRACTION, 1] * max_speed`` pixels/frame).
Motion is a reflected straight line, evaluated in closed form for all frames at once.

Variety over long series: every ``respawn_every`` frames (0 = never) one glyph, chosen
round-robin, switches to a different digit; its position and velocity are kept so the
motion stays continuous.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from nuwa.datasets import field_array, register_dataset

if TYPE_CHECKING:
    import xarray as xr

FONT_FAMILY = "DejaVu Sans"
SUPERSAMPLE = 4  # samples per pixel side when rasterising a glyph outline
GLYPH_MARGIN = 0.1  # fraction of the box left empty on each side of the tallest digit
MIN_SPEED_FRACTION = 0.5  # speeds are drawn from [MIN_SPEED_FRACTION, 1] * max_speed
CONFIG_KEYS = ("length", "height", "width", "glyphs", "glyph_size", "max_speed", "respawn_every")


@lru_cache(maxsize=None)
def _digit_outlines() -> tuple[tuple[np.ndarray, ...], ...]:
    """Polygons (font units, y up) of the digits 0-9 in DejaVu Sans."""
    from matplotlib.font_manager import FontProperties, findfont
    from matplotlib.textpath import TextPath

    # fallback_to_default=False: fail loudly rather than silently rendering another font.
    font = FontProperties(fname=findfont(FontProperties(family=FONT_FAMILY), fallback_to_default=False))
    return tuple(
        tuple(TextPath((0, 0), str(digit), size=1, prop=font).to_polygons(closed_only=True)) for digit in range(10)
    )


@lru_cache(maxsize=None)
def glyph_bitmaps(size: int) -> np.ndarray:
    """Anti-aliased bitmaps of the digits 0-9, shape ``(10, size, size)``, float32 in [0, 1].

    All digits share one scale (the tallest digit fills the box minus ``GLYPH_MARGIN``) and
    are centred in the box, so they look like one typeface rather than each one stretched.
    """
    from matplotlib.path import Path

    if size < 1:
        raise ValueError(f"glyph size must be positive, got {size}")
    outlines = _digit_outlines()
    lows = np.array([np.concatenate(polys).min(axis=0) for polys in outlines])
    highs = np.array([np.concatenate(polys).max(axis=0) for polys in outlines])
    scale = size * (1 - 2 * GLYPH_MARGIN) / (highs - lows).max()

    # Sample points at sub-pixel centres, in pixel units with row 0 at the top.
    offsets = (np.arange(size * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    sample_x, sample_row = np.meshgrid(offsets, offsets)
    bitmaps = np.empty((10, size, size), dtype=np.float32)
    for digit, polys in enumerate(outlines):
        centre = (lows[digit] + highs[digit]) / 2
        # Map pixel coordinates back to font units (flip y: font y points up).
        font_points = np.column_stack(
            [
                (sample_x.ravel() - size / 2) / scale + centre[0],
                (size / 2 - sample_row.ravel()) / scale + centre[1],
            ]
        )
        inside = np.zeros(len(font_points), dtype=bool)
        for poly in polys:  # even-odd rule: inner contours (holes) toggle back to outside
            inside ^= Path(poly).contains_points(font_points)
        coverage = inside.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))
        bitmaps[digit] = coverage
    bitmaps.setflags(write=False)  # cached: callers must not modify it
    return bitmaps


def _reflect(position: np.ndarray, upper: float) -> np.ndarray:
    """Fold an unbounded straight-line coordinate into [0, upper] as if bouncing off the walls."""
    if upper == 0:
        return np.zeros_like(position)
    folded = np.mod(position, 2 * upper)
    return upper - np.abs(folded - upper)


def glyph_tracks(
    length: int,
    height: int,
    width: int,
    glyphs: int,
    glyph_size: int,
    max_speed: float,
    respawn_every: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-left pixel positions and digits of every glyph in every frame.

    Returns ``(rows, cols, digits)``, each int array of shape ``(length, glyphs)``; rows lie
    in ``[0, height - glyph_size]`` and cols in ``[0, width - glyph_size]``.
    """
    row_max, col_max = height - glyph_size, width - glyph_size
    digits0 = rng.integers(0, 10, size=glyphs)
    row0 = rng.uniform(0, row_max, size=glyphs)
    col0 = rng.uniform(0, col_max, size=glyphs)
    speed = rng.uniform(MIN_SPEED_FRACTION, 1.0, size=glyphs) * max_speed
    heading = rng.uniform(0, 2 * np.pi, size=glyphs)

    t = np.arange(length)[:, None]
    rows = np.rint(_reflect(row0 + speed * np.sin(heading) * t, row_max)).astype(np.int64)
    cols = np.rint(_reflect(col0 + speed * np.cos(heading) * t, col_max)).astype(np.int64)

    digits = np.broadcast_to(digits0, (length, glyphs)).copy()
    if respawn_every > 0:
        for n, frame in enumerate(range(respawn_every, length, respawn_every)):
            glyph = n % glyphs
            # A shift of 1..9 (mod 10) guarantees the new digit differs from the old one.
            new_digit = (digits[frame, glyph] + rng.integers(1, 10)) % 10
            digits[frame:, glyph] = new_digit
    return rows, cols, digits


def render_frames(
    bitmaps: np.ndarray, rows: np.ndarray, cols: np.ndarray, digits: np.ndarray, height: int, width: int
) -> np.ndarray:
    """Pixel-wise max of the glyph bitmaps at the given positions, shape ``(length, height, width)``."""
    length, glyphs = rows.shape
    size = bitmaps.shape[-1]
    frames = np.zeros((length, height, width), dtype=np.float32)
    frame_index = np.arange(length)[:, None, None]
    offsets = np.arange(size)
    for glyph in range(glyphs):  # vectorised over frames; one glyph never overlaps itself
        row_index = (rows[:, glyph, None] + offsets)[:, :, None]
        col_index = (cols[:, glyph, None] + offsets)[:, None, :]
        patch = frames[frame_index, row_index, col_index]
        frames[frame_index, row_index, col_index] = np.maximum(patch, bitmaps[digits[:, glyph]])
    return frames


def _read_config(config: dict) -> dict:
    missing = [key for key in CONFIG_KEYS if key not in config]
    if missing:
        raise KeyError(f"moving_glyphs config is missing {', '.join(missing)}")
    settings = {key: int(config[key]) for key in CONFIG_KEYS if key != "max_speed"}
    settings["max_speed"] = float(config["max_speed"])
    if settings["length"] < 1 or settings["glyphs"] < 1 or settings["glyph_size"] < 1:
        raise ValueError("moving_glyphs needs length, glyphs and glyph_size >= 1")
    if settings["glyph_size"] > min(settings["height"], settings["width"]):
        raise ValueError(
            f"glyph_size {settings['glyph_size']} does not fit a {settings['height']}x{settings['width']} frame"
        )
    if settings["max_speed"] < 0 or settings["respawn_every"] < 0:
        raise ValueError("moving_glyphs needs max_speed >= 0 and respawn_every >= 0")
    return settings


@register_dataset("moving_glyphs", config_schema={
    "length": {"type": "integer", "minimum": 2},
    "glyphs": {"type": "integer", "minimum": 1},
    "glyph_size": {"type": "integer", "minimum": 4},
    "max_speed": {"type": "number", "minimum": 0},
    "respawn_every": {"type": "integer", "minimum": 0},
})
def generate(config: dict, seed: int) -> xr.DataArray:
    """Bouncing-glyph series, dims ``(time, channel, y, x)``, float32 in [0, 1]."""
    settings = _read_config(config)
    rng = np.random.default_rng(seed)
    rows, cols, digits = glyph_tracks(
        settings["length"],
        settings["height"],
        settings["width"],
        settings["glyphs"],
        settings["glyph_size"],
        settings["max_speed"],
        settings["respawn_every"],
        rng,
    )
    frames = render_frames(
        glyph_bitmaps(settings["glyph_size"]), rows, cols, digits, settings["height"], settings["width"]
    )
    return field_array(
        frames[:, None],
        name="intensity",
        channels=["intensity"],
        time_attrs={"long_name": "frame index", "units": "frame"},
        attrs={
            "units": "1",
            "long_name": "glyph intensity",
            "generator": "moving_glyphs",
            "seed": int(seed),
            **settings,
            "font": FONT_FAMILY,
            "supersample": SUPERSAMPLE,
            "glyph_margin": GLYPH_MARGIN,
            "min_speed_fraction": MIN_SPEED_FRACTION,
        },
    )
