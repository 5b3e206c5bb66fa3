"""Backbone registry: one file per backbone, one name each.

Every backbone maps ``(B, T_in, C, H, W) -> (B, T_out, C, H*scale, W*scale)``.
A backbone module registers a builder with :func:`register_backbone`; the builder takes
``in_shape=(T_in, C, H, W)``, ``out_frames``, ``scale`` and the backbone's hyperparameters
(a size preset name ``size`` plus keyword overrides) and returns an ``nn.Module``.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # torch is imported by the backbone modules, not here: listing kinds stays light
    from torch import nn

Builder = Callable[..., "nn.Module"]
_REGISTRY: dict[str, Builder] = {}


def register_backbone(name: str) -> Callable[[Builder], Builder]:
    def decorator(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return decorator


def _module_names() -> list[str]:
    return [module.name for module in pkgutil.iter_modules(__path__) if not module.name.startswith("_")]


def _load_all() -> None:
    for name in _module_names():
        importlib.import_module(f"{__name__}.{name}")


def backbone_kinds() -> list[str]:
    """Names of the backbones, without importing them (torch): each file registers the one
    backbone it is named after (a test checks it), plus any registered at run time."""
    return sorted(set(_module_names()) | set(_REGISTRY))


def create_backbone(kind: str, *, in_shape: tuple[int, int, int, int], out_frames: int, scale: int = 1,
                    **hparams) -> nn.Module:
    # each file registers the backbone it is named after: import just that one (a SimVP job
    # then never imports timm), or every file for a kind registered under another name
    if kind in _module_names():
        importlib.import_module(f"{__name__}.{kind}")
    if kind not in _REGISTRY:
        _load_all()
    try:
        builder = _REGISTRY[kind]
    except KeyError:
        raise KeyError(f"unknown backbone kind {kind!r}; registered kinds: {', '.join(sorted(_REGISTRY))}") from None
    return builder(in_shape=tuple(in_shape), out_frames=int(out_frames), scale=int(scale), **hparams)
