"""SimVP with a Swin translator: OpenSTL's ``SimVP_Model(model_type='swin')``, on timm's
``SwinTransformerBlock``.

Same SimVP encoder/decoder (:class:`nuwa.backbones.simvp.SimVPBase`) and translator layout as the
``vit`` backbone (:class:`nuwa.backbones.vit.TransformerTranslator`: 1x1 conv to ``hid_T`` ->
``N_T`` blocks -> LayerNorm -> 1x1 conv), with timm's Swin blocks on the ``(h, w)`` latent grid:
window attention with a relative position bias, ``num_heads`` heads, ``mlp_ratio``, and the
shifted-window scheme alternating block by block (shift 0 for even blocks, ``window_size // 2``
for odd ones), as OpenSTL's ``SwinSubBlock(layer_i=i)``.

``window_size=None`` applies OpenSTL's rule to the latent height ``h``: 7 if ``h % 7 == 0``, else
``max(4, h // 16)``, capped at 8 (4 for the 8x8 and 16x16 grids of both presets).  timm shrinks
the window to the grid where the grid is smaller (and then does not shift along that axis), and
pads grids that the window does not divide.  The attention mask for the shifted windows is built
for the latent grid at construction, so the model only accepts its ``in_shape``.

The width change sits in 1x1 convs around the blocks instead of OpenSTL's first block running at
``T_in*hid_S`` (see the ``vit`` module docstring); the ``reference`` preset therefore has
``N_T = 7`` where OpenSTL's config says 8.
"""

from __future__ import annotations

from typing import Any

from timm.models.swin_transformer import SwinTransformerBlock

from . import register_backbone
from ._blocks import resolve_hparams
from ._specs.swin import PRESETS
from ._specs.swin import check as check_hparams
from .simvp import SimVPBase
from .vit import TransformerTranslator, drop_path_rates


def openstl_window_size(grid: tuple[int, int]) -> int:
    """OpenSTL SwinSubBlock's window for a latent grid (it looks at the height only)."""
    size = 7 if grid[0] % 7 == 0 else max(4, grid[0] // 16)
    return min(8, size)


class SimVPSwin(SimVPBase):
    """SimVP encoder/decoder around ``N_T`` timm Swin blocks; see the module docstring."""

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
        window_size: int | None,
        drop: float,
        drop_path: float,
        spatio_kernel_enc: int,
        spatio_kernel_dec: int,
    ) -> None:
        def translator(c_in: int, c_out: int, grid: tuple[int, int]) -> TransformerTranslator:
            window = window_size if window_size is not None else openstl_window_size(grid)
            blocks = [
                SwinTransformerBlock(
                    hid_T,
                    grid,
                    num_heads=num_heads,
                    window_size=window,
                    shift_size=0 if i % 2 == 0 else window // 2,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=True,
                    proj_drop=drop,
                    drop_path=rate,
                )
                for i, rate in enumerate(drop_path_rates(N_T, drop_path))
            ]
            return TransformerTranslator(c_in, c_out, hid_T, blocks, grid_tokens=True)

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


@register_backbone("swin")
def build(
    *, in_shape: tuple[int, int, int, int], out_frames: int, scale: int = 1, size: str = "small", **overrides: Any
) -> SimVPSwin:
    hp = resolve_hparams("swin", PRESETS, size, overrides)
    check_hparams(hp, in_shape, out_frames, scale)
    window_size = hp["window_size"]
    return SimVPSwin(
        in_shape,
        out_frames,
        scale,
        hid_S=int(hp["hid_S"]),
        hid_T=int(hp["hid_T"]),
        N_S=int(hp["N_S"]),
        N_T=int(hp["N_T"]),
        num_heads=int(hp["num_heads"]),
        mlp_ratio=float(hp["mlp_ratio"]),
        window_size=None if window_size is None else int(window_size),
        drop=float(hp["drop"]),
        drop_path=float(hp["drop_path"]),
        spatio_kernel_enc=int(hp["spatio_kernel_enc"]),
        spatio_kernel_dec=int(hp["spatio_kernel_dec"]),
    )
