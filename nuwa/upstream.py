"""The upstream Vision Transformer of the discovery stage, built from timm's blocks.

Each input frame is cut into ``L = HW/p²`` patches (timm's ``PatchEmbed``), given a learnable
position embedding and a learnable embedding of its step in the window, and passed through
timm's pre-norm ``Block``s (``x + MHSA(LN(x))``, ``x + FFN(LN(x))``). Tokens attend within
their frame, so the attention of layer ``l`` is one ``L × L`` map per frame and head: exactly
what the saliency formula sums over. A linear head maps tokens back to pixels.
"""

from __future__ import annotations

import torch
from timm.layers import Attention, PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

# explicit softmax weights are formed a few (frame, head) maps at a time, at most about this many
# bytes (at least one map): small enough on a CPU to stay in its L2 cache, large enough on a GPU
# to keep kernels few
ATTENTION_CHUNK_BYTES = {"cpu": 1 << 20, "cuda": 512 << 20}


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
    def column_importance(self, x: torch.Tensor, layers: list[int], chunk_bytes: int | None = None) -> torch.Tensor:
        """Saliency importance (B*T, L): the column mean of the softmax attention (over heads and
        queries), averaged over the chosen blocks -- at no more than the cost of a forward pass.

        Blocks before the first chosen one run timm's fused forward. A chosen block computes q, k,
        v once and its softmax weights once, reduced at once to the column importance; if a later
        block must still run, the block's output is formed from those same weights (as timm's
        ``Block``/``Attention`` do). Nothing runs after the last chosen block's weights: not its
        projection or MLP, no later block, no head. The weights are formed ``chunk_bytes`` at a
        time (the maps of a few frames, at least one frame's), so no (B*T, heads, L, L) tensor
        is kept. Each chunk is summed over heads and queries in one reduction and the mean is
        taken once at the end: on a GPU, at this model's size, the pass is bound by kernel
        launches, so each kernel saved counts.
        """
        chosen = chosen_layers(layers, len(self.blocks))
        if chunk_bytes is None:
            chunk_bytes = ATTENTION_CHUNK_BYTES.get(x.device.type, ATTENTION_CHUNK_BYTES["cuda"])
        tokens = self.tokens(x)
        total, divisor = None, 1
        for index, block in enumerate(self.blocks[: chosen[-1] + 1]):
            if index not in chosen:
                tokens = block(tokens)
                continue
            sums, terms, tokens = _block_with_importance(block, tokens, need_output=index < chosen[-1],
                                                         chunk_bytes=chunk_bytes)
            if total is None:
                total, divisor = sums, terms
            else:  # blocks of one model have the same heads and tokens: the same number of terms
                total.add_(sums, alpha=divisor / terms)
        return total.div_(divisor * len(chosen))

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor, layers: list[int]) -> torch.Tensor:
        """Softmax attention of the chosen blocks: (len(layers), B*T, heads, L, L).

        The explicit, slow reference of :meth:`column_importance` (tests, figures): timm's
        Attention may use fused scaled-dot-product attention, which never materialises the
        weights; a pre-hook takes each block's normalised input and recomputes the weights with
        the block's own q/k projections and scale, so chosen blocks do their attention twice.
        """
        chosen = chosen_layers(layers, len(self.blocks))
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


def chosen_layers(layers: list[int], depth: int) -> list[int]:
    """Block indices, sorted and unique; negative ones count from the last (-1 = last). A layer
    outside ``-depth .. depth - 1`` is an error (``layer % depth`` would silently pick another
    block: 7 on a one-block model would mean block 0); ``nuwa validate`` refuses it first."""
    for layer in layers:
        if not -depth <= layer < depth:
            raise ValueError(f"layer {layer} is not a block of the upstream ViT (depth {depth}; allowed: "
                             f"{-depth} to {depth - 1}, negative counting from the last)")
    return sorted({layer % depth for layer in layers})


def _block_with_importance(block: nn.Module, tokens: torch.Tensor, need_output: bool,
                           chunk_bytes: int) -> tuple[torch.Tensor, int, torch.Tensor | None]:
    """One timm ``Block`` with its attention weights made explicit, once.

    Returns the column sums (B, L) of its softmax weights over heads and queries, the number of
    terms in each (heads x L: the column importance is sums / terms) and, if ``need_output``,
    the block's output, computed as timm 1.0's ``Block.forward`` and ``Attention.forward``
    (unfused branch, no mask) do; otherwise ``None`` and nothing after the weights is run.
    """
    if type(block) is not Block or type(block.attn) is not Attention:
        raise TypeError(f"the explicit path follows timm's Block/Attention, not {type(block).__name__}/"
                        f"{type(block.attn).__name__}")
    attention = block.attn
    x = block.norm1(tokens)
    batch, count, _ = x.shape
    heads, head_dim = attention.num_heads, attention.head_dim
    # one copy to (3, batch, heads, L, head_dim), so that every (frame, head) pair is contiguous
    qkv = attention.qkv(x).reshape(batch, count, 3, heads, head_dim).permute(2, 0, 3, 1, 4).contiguous()
    q, k, v = qkv.unbind(0)
    q, k = attention.q_norm(q), attention.k_norm(k)
    column_sums = x.new_empty(batch, count)
    mixed = x.new_empty(batch, heads, count, head_dim) if need_output else None
    frames = max(1, chunk_bytes // (heads * count * count * x.element_size()))
    for start in range(0, batch, frames):
        part = slice(start, start + frames)
        # (q k^T) * scale in the product's own kernel (timm scales q first: equal up to rounding)
        queries, keys = q[part].flatten(0, 1), k[part].flatten(0, 1)
        logits = x.new_empty(len(queries), count, count).baddbmm_(queries, keys.transpose(-2, -1), beta=0,
                                                                  alpha=attention.scale)
        weights = logits.view(-1, heads, count, count).softmax(dim=-1)
        torch.sum(weights, dim=(1, 2), out=column_sums[part])  # over heads and queries at once
        if need_output:
            torch.matmul(attention.attn_drop(weights), v[part], out=mixed[part])
        del weights
    if not need_output:
        return column_sums, heads * count, None
    out = mixed.transpose(1, 2).reshape(batch, count, attention.attn_dim)
    out = attention.norm(out)
    gate = getattr(attention, "gate", None)
    if gate is not None:
        out = out * gate(x).sigmoid()
    out = attention.proj_drop(attention.proj(out))
    tokens = tokens + block.drop_path1(block.ls1(out))
    tokens = tokens + block.drop_path2(block.ls2(block.mlp(block.norm2(tokens))))
    return column_sums, heads * count, tokens


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
