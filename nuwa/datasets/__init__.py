"""Dataset registry: each entry turns a params entry into a raw field.

A dataset module registers a generator (or reader) with :func:`register_dataset`; the
generator takes the dataset's params entry (a dict) and a seed and returns an
``xarray.DataArray`` with dims ``(time, channel, y, x)``, float32, carrying CF-style
``units`` and ``long_name`` attributes (plus any simulator settings worth recording).
``config_schema`` is the JSON schema of the keys the generator reads; nuwa.config checks a
params entry against it (with the keys common to every dataset) before any job starts.
Splitting and normalisation are common to all datasets and live in :mod:`nuwa.ingest`.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable

import numpy as np
import xarray as xr

Generator = Callable[[dict, int], xr.DataArray]
_REGISTRY: dict[str, Generator] = {}
_SCHEMAS: dict[str, dict] = {}

# keys every dataset entry has (their types are checked by the main params schema)
COMMON_KEYS = ("kind", "height", "width", "input_frames", "output_frames", "window_stride",
               "patch_size", "split", "csi_thresholds", "seed")


FRAME_TIME_ATTRS = {"long_name": "frame index after spin-up", "units": "frame"}


def field_array(values: np.ndarray, *, name: str, channels, attrs: dict,
                time_attrs: dict = FRAME_TIME_ATTRS) -> xr.DataArray:
    """A generator's result: float32 ``(time, channel, y, x)`` with integer time steps.

    ``attrs`` carries ``units`` and ``long_name`` plus every setting worth recording; grid
    coordinates are added by ingest.
    """
    return xr.DataArray(
        np.asarray(values, dtype=np.float32),
        dims=("time", "channel", "y", "x"),
        coords={"time": ("time", np.arange(values.shape[0]), dict(time_attrs)), "channel": list(channels)},
        name=name,
        attrs=attrs,
    )


def register_dataset(name: str, config_schema: dict | None = None) -> Callable[[Generator], Generator]:
    """Register ``fn(config, seed) -> DataArray`` under ``name``.

    ``config_schema`` maps each kind-specific key to its JSON schema; all are required.
    """

    def decorator(fn: Generator) -> Generator:
        if name in _REGISTRY:
            raise ValueError(f"dataset kind {name!r} registered twice")
        _REGISTRY[name] = fn
        _SCHEMAS[name] = dict(config_schema or {})
        return fn

    return decorator


def _load_all() -> None:
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


def dataset_kinds() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_dataset(kind: str) -> Generator:
    _load_all()
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise KeyError(f"unknown dataset kind {kind!r}; registered kinds: {', '.join(sorted(_REGISTRY))}") from None


def dataset_config_schema(kind: str) -> dict:
    """JSON schema of a whole params entry of this kind: common keys plus the kind's own."""
    get_dataset(kind)
    own = _SCHEMAS[kind]
    properties = {key: {} for key in COMMON_KEYS} | own
    return {"type": "object", "additionalProperties": False, "properties": properties, "required": sorted(own)}
