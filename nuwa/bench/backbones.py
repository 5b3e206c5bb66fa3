"""Backbone sizes and speed: parameters, FLOPs (torch's FLOP counter) and training throughput.

Throughput is forward + backward + optimiser step, in samples per second, after warm-up,
timed with ``time.perf_counter`` (``torch.cuda.synchronize`` on a GPU). The reference in the
same run is SimVP at the same size and shape, so the ratio says how many times faster (>1)
or slower (<1) than SimVP a backbone trains.
"""

from __future__ import annotations

import time

SUMMARY = "training throughput of every backbone (samples/s) against SimVP at the same size and shape"


def add_arguments(parser) -> None:
    from nuwa.cli import _shape

    parser.add_argument("--sizes", default="small,reference", help="backbone sizes, comma-separated")
    parser.add_argument("--backbones", help="comma-separated subset (default: every registered backbone)")
    parser.add_argument("--in-shape", type=_shape, default=(10, 1, 32, 32), help="T,C,H,W")
    parser.add_argument("--out-frames", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--min-seconds", type=float, default=2.0, help="time each case at least this long")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")


def run(args, progress) -> list[dict]:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return benchmark(args.sizes.split(","), args.in_shape, args.out_frames, args.batch_size, device,
                     kinds=args.backbones.split(",") if args.backbones else None, min_seconds=args.min_seconds,
                     progress=progress)


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_sample(model, in_shape: tuple[int, int, int, int]) -> int:
    """FLOPs of one forward pass on one sample (torch counts a multiply-add as 2 FLOPs)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    # grad mode stays on: FlopCounterMode's module tracker fails on some blocks under no_grad
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *in_shape))
    return int(counter.get_total_flops())


def describe(size: str, in_shape: tuple[int, int, int, int], out_frames: int, scale: int = 1) -> list[dict]:
    from nuwa.backbones import backbone_kinds, create_backbone

    rows = []
    for kind in backbone_kinds():
        model = create_backbone(kind, in_shape=in_shape, out_frames=out_frames, scale=scale, size=size)
        rows.append({"name": kind, "params": parameter_count(model), "flops": flops_per_sample(model, in_shape)})
    return rows


def throughput(kind: str, size: str, in_shape, out_frames: int, batch_size: int, device: str,
               min_seconds: float = 2.0, max_repeats: int = 20, warmup: int = 2) -> float:
    import torch

    from nuwa.backbones import create_backbone
    from nuwa.methods import training_loss

    torch.manual_seed(0)
    model = create_backbone(kind, in_shape=in_shape, out_frames=out_frames, size=size).to(device)
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
    inputs = torch.randn(batch_size, *in_shape, device=device)
    targets = torch.randn(batch_size, out_frames, *in_shape[1:], device=device)
    generator = torch.Generator().manual_seed(0)

    def step():
        loss = training_loss(model, inputs, targets, progress=0.5, generator=generator)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    for _ in range(warmup):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    repeats, started = 0, time.perf_counter()
    while repeats < max_repeats and (repeats == 0 or time.perf_counter() - started < min_seconds):
        step()
        repeats += 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return repeats * batch_size / (time.perf_counter() - started)


def benchmark(sizes: list[str], in_shape, out_frames: int, batch_size: int, device: str, kinds=None,
              min_seconds: float = 2.0, progress=None) -> list[dict]:
    from nuwa.backbones import backbone_kinds

    kinds = kinds or backbone_kinds()
    rows = []
    for size in sizes:
        measured = {}
        for kind in sorted(set(kinds) | {"simvp"}):
            measured[kind] = throughput(kind, size, in_shape, out_frames, batch_size, device, min_seconds)
            if progress:
                progress(f"{kind}/{size}: {measured[kind]:.2f} samples/s")
        shape = "x".join(map(str, in_shape))
        for kind in kinds:
            rows.append({"benchmark": "backbones", "case": f"{kind}/{size}/{device}/in{shape}/out{out_frames}/b{batch_size}",
                         "value": measured[kind], "unit": "samples/s", "reference": f"simvp/{size}",
                         "reference_value": measured["simvp"], "ratio": measured[kind] / measured["simvp"]})
    return rows
