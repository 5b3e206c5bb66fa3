"""The upstream Vision Transformer of the discovery stage, built from timm's blocks.

Each input frame is cut into ``L = HW/p²`` patches (timm's ``PatchEmbed``), given a learnable
position embedding and a learnable embedding of its step in the window, and passed through
timm's pre-norm ``Block``s (``x + MHSA(LN(x))``, ``x + FFN(LN(x))``). Tokens attend within
their frame, so the attention of layer ``l`` is one ``L × L`` map per frame and head: exactly
what the saliency formula sums over. A linear head maps tokens back to pixels.
"""

from __future__ import annotations

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn


class UpstreamViT(nn.Module):
    def __init__(self, *, frames: int, channels: int, height: int, width: int, patch_size: int,
                 embed_dim: int, depth: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.config = dict(frames=frames, channels=channels, height=height, width=width, patch_size=patch_size,
                           embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio)
        self.patch_size = patch_size
        self.grid = (height // patch_size, width // patch_size)
        self.patch_embed = PatchEmbed(img_size=(height, width), patch_size=patch_size, in_chans=channels,
                                      embed_dim=embed_dim)
        num_patches = self.grid[0] * self.grid[1]
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches, embed_dim) * 0.02)
        self.step_embed = nn.Parameter(torch.randn(frames, 1, embed_dim) * 0.02)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, channels * patch_size * patch_size)

    def tokens(self, x: torch.Tensor, patch_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, C, H, W) -> (B*T, L, D) token embeddings; masked patches become the mask token."""
        batch, frames = x.shape[:2]
        tokens = self.patch_embed(x.flatten(0, 1))
        if patch_mask is not None:  # (B*T, L) bool, True = hidden
            tokens = torch.where(patch_mask[..., None], self.mask_token.expand_as(tokens), tokens)
        step = self.step_embed[:frames].repeat(batch, 1, 1)
        return tokens + self.pos_embed + step

    def forward(self, x: torch.Tensor, patch_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, frames, channels, height, width = x.shape
        tokens = self.tokens(x, patch_mask)
        for block in self.blocks:
            tokens = block(tokens)
        pixels = self.head(self.norm(tokens))  # (B*T, L, C*p*p)
        p = self.patch_size
        gy, gx = self.grid
        pixels = pixels.reshape(batch, frames, gy, gx, channels, p, p)
        return pixels.permute(0, 1, 4, 2, 5, 3, 6).reshape(batch, frames, channels, height, width)

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor, layers: list[int]) -> torch.Tensor:
        """Softmax attention of the chosen blocks: (len(layers), B*T, heads, L, L).

        timm's Attention may use fused scaled-dot-product attention, which never materialises
        the weights; a pre-hook takes each block's normalised input and recomputes the
        weights with the block's own q/k projections and scale.
        """
        depth = len(self.blocks)
        chosen = sorted({layer % depth for layer in layers})
        captured: dict[int, torch.Tensor] = {}
        handles = []
        for index in chosen:
            attention = self.blocks[index].attn

            def hook(module, args, index=index):
                captured[index] = _attention_weights(module, args[0])

            handles.append(attention.register_forward_pre_hook(hook))
        try:
            tokens = self.tokens(x)
            for index, block in enumerate(self.blocks[: max(chosen) + 1]):
                tokens = block(tokens)
        finally:
            for handle in handles:
                handle.remove()
        return torch.stack([captured[index] for index in chosen])


def _attention_weights(attention: nn.Module, x: torch.Tensor) -> torch.Tensor:
    batch, tokens, _ = x.shape
    qkv = attention.qkv(x).reshape(batch, tokens, 3, attention.num_heads, attention.head_dim).permute(2, 0, 3, 1, 4)
    q, k, _ = qkv.unbind(0)
    q, k = attention.q_norm(q), attention.k_norm(k)
    return ((q * attention.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


def build_upstream(config: dict, dataset_config: dict, channels: int) -> UpstreamViT:
    return UpstreamViT(frames=dataset_config["input_frames"], channels=channels, height=dataset_config["height"],
                       width=dataset_config["width"], patch_size=dataset_config["patch_size"],
                       embed_dim=config["embed_dim"], depth=config["depth"], num_heads=config["num_heads"],
                       mlp_ratio=config["mlp_ratio"])
