"""Backbone registry: one file per backbone, one name each.

Every backbone maps ``(B, T_in, C, H, W) -> (B, T_out, C, H*scale, W*scale)``.
A backbone module registers a builder with :func:`register_backbone`; the builder takes
``in_shape=(T_in, C, H, W)``, ``out_frames``, ``scale`` and the backbone's hyperparameters
(a size preset name ``size`` plus keyword overrides) and returns an ``nn.Module``.

Its presets and the checks its builder makes first live in the torch-free
``nuwa.backbones._specs.<kind>`` (:func:`backbone_spec`): ``nuwa validate`` checks every
params entry with them, and :func:`build_on_meta` builds a backbone without memory for the
checks that only its modules' constructors make.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # torch is imported by the backbone modules, not here: listing kinds stays light
    from torch import nn

Builder = Callable[..., "nn.Module"]
_REGISTRY: dict[str, Builder] = {}

# keys of a params.yaml `backbones` entry that the pipeline reads itself (`size` is the builder's
# preset name): every other key overrides one of the preset's hyperparameters
ENTRY_KEYS = ("kind", "size", "init_from_upstream", "gpus")


def register_backbone(name: str) -> Callable[[Builder], Builder]:
    def decorator(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return decorator


def _module_names() -> list[str]:  # _blocks and _specs are not backbones
    return [module.name for module in pkgutil.iter_modules(__path__) if not module.name.startswith("_")]


def _load_all() -> None:
    for name in _module_names():
        importlib.import_module(f"{__name__}.{name}")


def backbone_kinds() -> list[str]:
    """Names of the backbones, without importing them (torch): each file registers the one
    backbone it is named after (a test checks it), plus any registered at run time."""
    return sorted(set(_module_names()) | set(_REGISTRY))


def _builder(kind: str) -> Builder:
    # each file registers the backbone it is named after: import just that one (a SimVP job
    # then never imports timm), or every file for a kind registered under another name
    if kind in _module_names():
        importlib.import_module(f"{__name__}.{kind}")
    if kind not in _REGISTRY:
        _load_all()
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise KeyError(f"unknown backbone kind {kind!r}; registered kinds: {', '.join(sorted(_REGISTRY))}") from None


def create_backbone(kind: str, *, in_shape: tuple[int, int, int, int], out_frames: int, scale: int = 1,
                    **hparams) -> nn.Module:
    builder = _builder(kind)
    return builder(in_shape=tuple(in_shape), out_frames=int(out_frames), scale=int(scale), **hparams)


def backbone_spec(kind: str) -> ModuleType | None:
    """``nuwa.backbones._specs.<kind>`` (torch-free): ``PRESETS`` (size name -> hyperparameters;
    their keys are the overrides a params entry may name) and ``check(hp, in_shape, out_frames,
    scale)``, which raises ValueError where the builder would; ``check_upstream(hp, pretrain)``
    where the backbone can start from the upstream ViT's weights. None for a kind without one
    (registered at run time)."""
    name = f"{__name__}._specs.{kind}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        return None


class ModelTooLarge(ValueError):
    """A model that :func:`build_on_meta` stopped building: over its parameter or module limit."""


def build_on_meta(kind: str, *, in_shape: tuple[int, int, int, int], out_frames: int, scale: int = 1,
                  max_parameters: int | None = None, max_modules: int | None = None,
                  **hparams) -> tuple[nn.Module, int]:
    """``(model, parameter count)`` of the backbone built on torch's meta device: every check
    of the builder and of its modules' constructors runs, no weight is allocated and no random
    draw is made (the CPU generator's state is restored). The build stops with
    :class:`ModelTooLarge` as soon as it registers more than ``max_parameters`` parameters or
    ``max_modules`` modules, so a huge width or depth costs no more than the limit."""
    import torch
    from torch.nn.modules import module as torch_module

    counts = {"parameters": 0, "modules": 0}

    def on_parameter(module, name, parameter):
        if parameter is not None:
            counts["parameters"] += parameter.numel()
            if max_parameters is not None and counts["parameters"] > max_parameters:
                raise ModelTooLarge(f"more than {max_parameters:,} parameters")

    def on_module(module, name, submodule):
        if submodule is not None:
            counts["modules"] += 1
            if max_modules is not None and counts["modules"] > max_modules:
                raise ModelTooLarge(f"more than {max_modules:,} modules")

    builder = _builder(kind)
    handles = [torch_module.register_module_parameter_registration_hook(on_parameter),
               torch_module.register_module_module_registration_hook(on_module)]
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            model = builder(in_shape=tuple(in_shape), out_frames=int(out_frames), scale=int(scale), **hparams)
    finally:
        for handle in handles:
            handle.remove()
    return model, sum(parameter.numel() for parameter in model.parameters())
