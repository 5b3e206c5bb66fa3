"""Saliency pass of the upstream ViT against a plain forward: ``nuwa bench saliency``.

The measured case is the whole saliency pass of one batch of windows (B, T, C, H, W), as
``nuwa saliency`` runs it: :meth:`nuwa.upstream.UpstreamViT.column_importance` (fused blocks
up to the first chosen layer; each chosen layer's softmax weights formed once and reduced to
the column importance at once; nothing after the last chosen layer's weights), then
:func:`nuwa.saliency.normalise_per_step`, the causal masks of :func:`nuwa.saliency.causal_mask`
(``⌊ρ·L⌋`` environmental patches per step, a stable sort on the scores' device: the same masks
as the numpy sort that ``nuwa saliency`` runs on its CPU scores, tested) and the copy of scores
and masks to host memory.

Reference, measured in the same run on the same batch and model: ``forward``, a plain
``torch.no_grad()`` forward of the model (timm's fused attention, every block, the final norm
and the head). ``value`` is saliency throughput in windows per second, ``ratio`` = forward
time / saliency time: 1 means the saliency pass costs exactly a forward, the goal is
``ratio >= 1/1.15`` (at most 15 % dearer than a forward).

Cases: a model the size of ``params.yaml``'s upstream (``--small``) and a larger one
(``--large``), each with every layer set of ``--layer-sets`` (default: the last layer alone;
the first and the last). Each case runs once untimed (warm-up), then forward and saliency are
timed alternately ``--repeats`` times with ``time.perf_counter`` (``torch.cuda.synchronize``
on a GPU) and the best of each is kept.
"""

from __future__ import annotations

import time

# torch and nuwa.upstream are imported inside the functions: `nuwa --help` builds every bench's options
SUMMARY = "saliency pass (importance, normalisation, causal masks) of the upstream ViT vs a plain forward"


def _model_spec(text: str) -> tuple[int, int, int, int, int]:
    values = tuple(int(part) for part in text.split(","))
    if len(values) != 5:
        raise ValueError("expected EMBED,DEPTH,HEADS,HEIGHT,WIDTH")
    return values


def _layer_sets(text: str) -> list[list[int]]:
    return [[int(layer) for layer in part.split(",")] for part in text.split(";") if part]


def add_arguments(parser) -> None:
    parser.add_argument("--small", type=_model_spec, default=(64, 2, 4, 32, 32),
                        help="EMBED,DEPTH,HEADS,HEIGHT,WIDTH of the params.yaml-like model (default 64,2,4,32,32)")
    parser.add_argument("--large", type=_model_spec, default=(256, 6, 8, 160, 64),
                        help="the same for the larger model (default 256,6,8,160,64: 640 patches of 4x4)")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per batch, small model (default 32)")
    parser.add_argument("--large-batch-size", type=int, default=1, help="windows per batch, large model (default 1)")
    parser.add_argument("--frames", type=int, default=10, help="input steps T (default 10)")
    parser.add_argument("--channels", type=int, default=1, help="channels C (default 1)")
    parser.add_argument("--patch-size", type=int, default=4, help="patch side (default 4)")
    parser.add_argument("--mlp-ratio", type=float, default=2.0, help="MLP width / embedding width (default 2)")
    parser.add_argument("--layer-sets", type=_layer_sets, default=[[-1], [0, -1]],
                        help="layer sets, ';' between sets, ',' within, e.g. --layer-sets='-1;0,-1' (the default)")
    parser.add_argument("--ratio", type=float, default=0.25, help="environment ratio rho (default 0.25)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each side, best kept (default 3)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated inputs (default 0)")


def run(args, progress) -> list[dict]:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    models = [("small", args.small, args.batch_size), ("large", args.large, args.large_batch_size)]
    rows = []
    for label, spec, batch_size in models:
        for layers in args.layer_sets:
            rows.append(benchmark_case(label, spec, layers, batch_size=batch_size, frames=args.frames,
                                       channels=args.channels, patch_size=args.patch_size,
                                       mlp_ratio=args.mlp_ratio, ratio=args.ratio, repeats=args.repeats,
                                       device=device, seed=args.seed, progress=progress))
    return rows


def saliency_pass(model, inputs, layers: list[int], environment_ratio: float):
    """What ``nuwa saliency`` does to one batch: importance, per-step min-max, masks, host copy."""
    import torch

    from nuwa.saliency import causal_mask, normalise_per_step

    batch, frames = inputs.shape[:2]
    scores = normalise_per_step(model.column_importance(inputs, layers)).reshape(batch, frames, -1)
    mask = causal_mask(scores, environment_ratio)  # where the scores are: no round trip to sort on the host
    if scores.is_cuda:  # both copies queued, one wait
        scores, mask = scores.to("cpu", non_blocking=True), mask.to("cpu", non_blocking=True)
        torch.cuda.current_stream(inputs.device).synchronize()
    return scores.numpy(), mask.numpy()


def benchmark_case(label: str, spec, layers: list[int], *, batch_size: int, frames: int, channels: int,
                   patch_size: int, mlp_ratio: float, ratio: float, repeats: int, device: str, seed: int = 0,
                   progress=None) -> dict:
    import torch

    from nuwa.upstream import UpstreamViT

    embed, depth, heads, height, width = spec
    torch.manual_seed(seed)
    model = UpstreamViT(frames=frames, channels=channels, height=height, width=width, patch_size=patch_size,
                        embed_dim=embed, depth=depth, num_heads=heads, mlp_ratio=mlp_ratio).to(device).eval()
    inputs = torch.randn(batch_size, frames, channels, height, width, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def forward():
        with torch.no_grad():
            model(inputs)

    def saliency():
        saliency_pass(model, inputs, layers, ratio)

    def timed(function) -> float:
        sync()
        started = time.perf_counter()
        function()
        sync()
        return time.perf_counter() - started

    forward(), saliency()  # warm-up: allocator, kernels, caches
    best = {"forward": float("inf"), "saliency": float("inf")}
    for _ in range(max(1, repeats)):  # alternate, so that a busy machine slows both sides alike
        best["forward"] = min(best["forward"], timed(forward))
        best["saliency"] = min(best["saliency"], timed(saliency))
    tokens = (height // patch_size) * (width // patch_size)
    layer_text = ",".join(map(str, layers))
    case = (f"{label}/{device}/e{embed}d{depth}h{heads}/{frames}x{channels}x{height}x{width}/L{tokens}"
            f"/layers[{layer_text}]/b{batch_size}")
    saliency_rate, forward_rate = batch_size / best["saliency"], batch_size / best["forward"]
    if progress:
        progress(f"{case}: saliency {best['saliency'] * 1e3:.2f} ms, forward {best['forward'] * 1e3:.2f} ms, "
                 f"forward/saliency {best['forward'] / best['saliency']:.3f}")
    return {"benchmark": "saliency", "case": case, "value": saliency_rate, "unit": "windows/s",
            "reference": "forward", "reference_value": forward_rate, "ratio": saliency_rate / forward_rate}
