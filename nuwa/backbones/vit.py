"""SimVP with a ViT translator: OpenSTL's ``SimVP_Model(model_type='vit')``, on timm's ``Block``.

OpenSTL's ViT (and Swin) "models" are SimVP with transformer blocks as the translator.  Here the
encoder, decoder, skip handling and ``T_out``/``scale`` support are SimVP's own
(:class:`nuwa.backbones.simvp.SimVPBase`); only the translator differs:

* a 1x1 conv maps the time-merged latent ``(B, T_in*hid_S, h, w)`` to ``hid_T`` channels
  (identity when they are equal),
* ``N_T`` timm ``vision_transformer.Block`` s (pre-norm MHSA + MLP, ``num_heads`` heads,
  ``mlp_ratio``, ``qkv_bias=True``; built exactly as :class:`nuwa.upstream.UpstreamViT` builds its
  blocks) run over the ``h*w`` positions of the latent grid as tokens (row-major, as OpenSTL's
  ``ViTSubBlock`` flattens them; no position embedding, as in OpenSTL: the conv encoder's
  zero padding carries position),
* a final ``LayerNorm`` (the counterpart of the upstream ViT's ``norm``) and a 1x1 conv to
  ``T_out*hid_S`` channels.

Blocks are initialised like OpenSTL's sub-blocks (truncated normal, std 0.02, for linear
weights; zero biases; unit LayerNorms) and use OpenSTL's stochastic-depth ramp, linearly from
``min(0.01, drop_path)`` to ``drop_path``.

**Difference from OpenSTL's MidMetaNet.**  OpenSTL's ``N_T`` MetaBlocks run the first block at
``T_in*hid_S`` channels and change width with 1x1 "reduction" convs *after* the first and last
block.  Here the width change sits in 1x1 convs *before* the first and *after* the last block, so
every one of the ``N_T`` blocks runs at ``hid_T``.  That is what makes the upstream transfer
(:meth:`SimVPViT.load_upstream`) possible -- every translator block has the shapes of an upstream
block -- and keeps the head count independent of ``T_in``.  For the same parameter budget,
OpenSTL's ``N_T = 8`` (one ``T_in*hid_S``-wide block + seven ``hid_T``-wide blocks) corresponds to
``N_T = 7`` here; see the ``reference`` preset.

**Upstream transfer.**  ``hid_T`` is the translator's token width: set ``hid_T`` to the upstream
ViT's ``embed_dim``, ``N_T`` to its ``depth``, ``num_heads`` and ``mlp_ratio`` to its values, and
``model.load_upstream(payload)`` copies the upstream's ``blocks.{i}.*`` and ``norm.*`` into
``translator.blocks.{i}.*`` and ``translator.norm.*``.  The upstream's patch/position/step
embeddings and pixel head belong to its own patch grid and have no counterpart here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from . import register_backbone
from ._blocks import resolve_hparams
from ._specs.vit import PRESETS
from ._specs.vit import check as check_hparams
from ._specs.vit import check_transformer as validate_transformer_hparams  # noqa: F401  (swin imports it here)
from .simvp import SimVPBase


UPSTREAM_KIND = "upstream_vit"


def drop_path_rates(depth: int, drop_path: float) -> list[float]:
    """OpenSTL MidMetaNet's stochastic-depth ramp ``linspace(0.01, drop_path, depth)``, starting
    at ``drop_path`` itself when that is below 0.01 (so ``drop_path=0`` really means none)."""
    start = min(1e-2, drop_path)
    if depth == 1:
        return [drop_path]
    return [start + (drop_path - start) * i / (depth - 1) for i in range(depth)]


def openstl_init(module: nn.Module) -> None:
    """OpenSTL's ``_init_weights`` of ViTSubBlock/SwinSubBlock, for ``module.apply``."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class TransformerTranslator(nn.Module):
    """``(B, c_in, h, w) -> (B, c_out, h, w)`` through transformer blocks on the ``h x w`` grid.

    1x1 conv to ``width`` -> ``blocks`` -> LayerNorm -> 1x1 conv to ``c_out``.  The blocks see the
    grid positions as tokens: ``(B, h*w, width)`` for ViT blocks, or ``(B, h, w, width)`` with
    ``grid_tokens=True`` (timm's Swin blocks want the grid to cut windows from).
    """

    def __init__(
        self, in_channels: int, out_channels: int, width: int, blocks: Iterable[nn.Module], *, grid_tokens: bool
    ) -> None:
        super().__init__()
        self.grid_tokens = grid_tokens
        self.in_proj = nn.Conv2d(in_channels, width, 1) if in_channels != width else nn.Identity()
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(width)
        self.out_proj = nn.Conv2d(width, out_channels, 1) if out_channels != width else nn.Identity()
        self.blocks.apply(openstl_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch, _, h, w = z.shape
        x = self.in_proj(z).permute(0, 2, 3, 1)  # (B, h, w, D)
        if not self.grid_tokens:
            x = x.reshape(batch, h * w, -1)  # (B, h*w, D), row-major like OpenSTL's flatten(2)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x).reshape(batch, h, w, -1).permute(0, 3, 1, 2)
        return self.out_proj(x)


class SimVPViT(SimVPBase):
    """SimVP encoder/decoder around ``N_T`` timm ViT blocks; see the module docstring."""

    def __init__(
        self,
        in_shape: tuple[int, int, int, int],
        out_frames: int,
        scale: int,
        *,
        hid_S: int,
        hid_T: int,
        N_S: int,
        N_T: int,
        num_heads: int,
        mlp_ratio: float,
        drop: float,
        drop_path: float,
        spatio_kernel_enc: int,
        spatio_kernel_dec: int,
    ) -> None:
        def translator(c_in: int, c_out: int, grid: tuple[int, int]) -> TransformerTranslator:
            blocks = [
                Block(hid_T, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, proj_drop=drop, drop_path=rate)
                for rate in drop_path_rates(N_T, drop_path)
            ]
            return TransformerTranslator(c_in, c_out, hid_T, blocks, grid_tokens=False)

        super().__init__(
            in_shape,
            out_frames,
            scale,
            hid_S=hid_S,
            N_S=N_S,
            spatio_kernel_enc=spatio_kernel_enc,
            spatio_kernel_dec=spatio_kernel_dec,
            translator=translator,
        )
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio

    def load_upstream(self, payload: Mapping[str, Any]) -> list[str]:
        """Copy an upstream ViT's transformer blocks (and final norm) into the translator.

        ``payload`` is what :func:`nuwa.pretrain.checkpoint` writes (``kind == "upstream_vit"``).
        Upstream ``blocks.{i}.<name>`` goes to ``translator.blocks.{i}.<name>`` and ``norm.*`` to
        ``translator.norm.*``.  Everything is checked before anything is copied: a wrong
        ``kind``, a different depth or head count, a block tensor without a counterpart, or any
        shape mismatch raises ``ValueError`` (naming the tensor) and leaves the model untouched.
        Returns the loaded target names, in the upstream's order.
        """
        if not isinstance(payload, Mapping):
            raise ValueError(f"load_upstream: expected a checkpoint dict, got {type(payload).__name__}")
        if payload.get("kind") != UPSTREAM_KIND:
            raise ValueError(
                f"load_upstream: not an upstream ViT checkpoint (kind={payload.get('kind')!r}, expected {UPSTREAM_KIND!r})"
            )
        source = payload.get("state_dict")
        if not isinstance(source, Mapping):
            raise ValueError("load_upstream: checkpoint has no 'state_dict' mapping")
        config = payload.get("model_config") or {}

        targets = self.state_dict()
        transferable = [name for name in source if name.startswith("blocks.") or name.startswith("norm.")]
        target_names = [
            name for name in targets if name.startswith("translator.blocks.") or name.startswith("translator.norm.")
        ]
        source_depth = len({name.split(".")[1] for name in transferable if name.startswith("blocks.")})
        target_depth = len(self.translator.blocks)
        if source_depth != target_depth:
            unmatched = [name for name in transferable if "translator." + name not in targets]
            unmatched += [name for name in target_names if name[len("translator."):] not in source]
            raise ValueError(
                f"load_upstream: upstream depth {source_depth} != translator depth N_T={target_depth} "
                f"(first tensor without a counterpart: {unmatched[0]!r}); build with N_T={source_depth}"
            )
        if "num_heads" in config and int(config["num_heads"]) != self.num_heads:
            raise ValueError(
                f"load_upstream: upstream num_heads={config['num_heads']} != translator num_heads={self.num_heads}"
            )

        plan: list[tuple[str, torch.Tensor]] = []
        for name in transferable:
            target = "translator." + name
            if target not in targets:
                raise ValueError(f"load_upstream: upstream tensor {name!r} has no counterpart {target!r} in the translator")
            src, dst = source[name], targets[target]
            if tuple(src.shape) != tuple(dst.shape):
                raise ValueError(
                    f"load_upstream: shape mismatch for upstream {name!r} {tuple(src.shape)} -> {target!r} "
                    f"{tuple(dst.shape)} (translator width hid_T={self.translator.norm.normalized_shape[0]}, "
                    f"upstream embed_dim={config.get('embed_dim', '?')}, mlp_ratio {self.mlp_ratio} vs "
                    f"{config.get('mlp_ratio', '?')}); build with hid_T=embed_dim and the upstream's mlp_ratio"
                )
            plan.append((target, src))
        missing = [name for name in target_names if name not in {target for target, _ in plan}]
        if missing:
            raise ValueError(f"load_upstream: translator tensor {missing[0]!r} has no upstream counterpart")

        with torch.no_grad():
            for target, src in plan:
                targets[target].copy_(src)
        return [target for target, _ in plan]


@register_backbone("vit")
def build(
    *, in_shape: tuple[int, int, int, int], out_frames: int, scale: int = 1, size: str = "small", **overrides: Any
) -> SimVPViT:
    hp = resolve_hparams("vit", PRESETS, size, overrides)
    check_hparams(hp, in_shape, out_frames, scale)
    return SimVPViT(
        in_shape,
        out_frames,
        scale,
        hid_S=int(hp["hid_S"]),
        hid_T=int(hp["hid_T"]),
        N_S=int(hp["N_S"]),
        N_T=int(hp["N_T"]),
        num_heads=int(hp["num_heads"]),
        mlp_ratio=float(hp["mlp_ratio"]),
        drop=float(hp["drop"]),
        drop_path=float(hp["drop_path"]),
        spatio_kernel_enc=int(hp["spatio_kernel_enc"]),
        spatio_kernel_dec=int(hp["spatio_kernel_dec"]),
    )
