"""Backbone sizes and speed: parameters, FLOPs (torch's FLOP counter), training throughput against
SimVP and against plain torch/timm references, and inference throughput against OpenSTL's
published TaxiBJ FPS.

**Training throughput** (the default) is forward + backward + Adam step, in samples per second,
after two warm-up steps, timed with ``time.perf_counter`` (``torch.cuda.synchronize`` on a GPU,
where ``torch.backends.cudnn.benchmark`` is switched on, as OpenSTL does). Two kinds of rows:

* reference ``simvp/SIZE``: SimVP at the same size and shape in the same run, so the ratio says
  how many times faster (>1) or slower (<1) than SimVP a backbone trains.
* plain references (``--plain-references``, on by default): where one of our backbones is built
  from a standard architecture that torch or timm ships, that architecture built at the same size
  and timed the same way (same batch, same input values ``(B, T_in*C, H, W)``, MSE against a
  target with as many values as ours, Adam). ``ratio`` = ours / reference samples per second.

  - ``vit`` against ``timm:VisionTransformer`` and ``torch:nn.TransformerEncoder``. Our ``vit``
    is OpenSTL's SimVP-ViT: SimVP's conv encoder/decoder around ``N_T`` timm ViT ``Block`` s that
    run over the ``h x w`` latent grid as tokens. The timm reference is a ``VisionTransformer``
    with the same width (``hid_T``), depth (``N_T``), heads, ``mlp_ratio``, ``qkv_bias`` and
    stochastic depth, and the same tokens: the ``T_in*C`` frames as channels, patches of
    ``H/h x W/w`` so that it sees the same ``h*w`` tokens, no class token, its final LayerNorm,
    and a per-token linear head to ``T_out*C*patch**2`` values (= ``T_out*C*H*W`` per sample).
    The torch reference is the same network made of ``nn.Conv2d`` (patch embedding), a learned
    position embedding, ``nn.TransformerEncoder`` (pre-norm ``nn.TransformerEncoderLayer``, GELU,
    ``dim_feedforward = mlp_ratio*hid_T``, no dropout, no stochastic depth -- torch has none)
    with a final ``nn.LayerNorm``, and ``nn.Linear``.
  - ``swin`` against ``timm:SwinTransformer``: one stage (no patch merging) of ``N_T``
    ``SwinTransformerBlock`` s at width ``hid_T``, the same heads, window, shifted/unshifted
    alternation, ``mlp_ratio`` and stochastic depth, on the same ``h x w`` token grid (patches
    as above), its final LayerNorm and a per-token linear head.

  The references have a patch embedding and a linear head where ours has SimVP's convolutional
  encoder/decoder (``N_S`` full- and half-resolution conv layers on every frame), so the
  whole-model ratio is below 1 by design: it says how much the encoder/decoder costs on top of
  the transformer. To tell that apart from overhead in our wrapper, rows ``vit.translator`` and
  ``swin.translator`` time our translator alone (1x1 conv, the same timm blocks, LayerNorm, 1x1
  conv, on the latent ``(B, T_in*hid_S, h, w)``) against the same reference: a ratio near 1 (or
  above: the translator has no patch embedding or position embedding) means no wrapper overhead;
  far below 1 would point to one.

  No plain reference exists, so no row, for: ``simvp`` (the IncepU translator and ConvSC
  encoder/decoder are SimVP's own), ``convlstm`` (torch has no ConvLSTM; ``nn.LSTM`` is not
  convolutional), ``predrnn_v2`` and ``e3d_lstm`` (ST-LSTM / E3D-LSTM cells), ``earthformer``
  (cuboid attention; Amazon's reference code is not in torch or timm) and ``rainformer`` (its
  Swin-style global unit has channel attention inside, runs beside a conv/CBAM unit with gate
  fusion, in a U-Net: not a timm Swin).

**Inference throughput against OpenSTL** (``--openstl``): ``no_grad`` forward passes in eval
mode, samples per second, at OpenSTL's TaxiBJ setting by default (in_shape ``(4, 2, 32, 32)``,
4 output frames, the ``reference`` size, which is sized to OpenSTL's TaxiBJ configs, batch 100),
beside OpenSTL's published V100 inference FPS for TaxiBJ (docs/en/model_zoos/
traffic_benchmarks.md: ConvLSTM 815, PredRNN-V2 378, E3D-LSTM 60, SimVP+IncepU 533, ViT 1301,
Swin 1506); ``reference`` = ``openstl-v100-fps``, ``ratio`` = ours / published. OpenSTL's FPS is
``openstl.utils.measure_throughput``: 100 forward passes of a batch of 100 (for frames under
128 px) under ``torch.no_grad``, summed CUDA-event time, samples / second. Differences: OpenSTL
times without warm-up and with the model in its default (train) mode, i.e. with stochastic depth
active in ViT/Swin and PredRNN-V2 computing its decoupling loss; its recurrent models read the
8-frame sequence plus a mask, ours the 4 input frames (the same number of recurrent steps). The
published numbers are from a V100; on any other card, or a CPU, the ratio compares hardware as
much as code.
"""

from __future__ import annotations

import time

SUMMARY = ("training throughput of every backbone (samples/s) against SimVP and plain torch/timm references; "
           "--openstl: inference throughput against OpenSTL's published TaxiBJ FPS")

# OpenSTL's TaxiBJ benchmark (docs/en/model_zoos/traffic_benchmarks.md), "V100 inference FPS"
OPENSTL_TAXIBJ_FPS = {"convlstm": 815.0, "predrnn_v2": 378.0, "e3d_lstm": 60.0, "simvp": 533.0, "vit": 1301.0,
                      "swin": 1506.0}
OPENSTL_REFERENCE = "openstl-v100-fps"
OPENSTL_SHAPE = (4, 2, 32, 32)
OPENSTL_OUT_FRAMES = 4
OPENSTL_SIZE = "reference"
OPENSTL_BATCH = 100  # openstl.utils.measure_throughput's batch for frames under 128 px

# our backbone -> the plain references built at its size (see the module docstring)
PLAIN_REFERENCES = {"vit": ("timm:VisionTransformer", "torch:nn.TransformerEncoder"), "swin": ("timm:SwinTransformer",)}

DEFAULTS = {"sizes": "small", "in_shape": (10, 1, 32, 32), "out_frames": 10, "batch_size": 8}
OPENSTL_DEFAULTS = {"sizes": OPENSTL_SIZE, "in_shape": OPENSTL_SHAPE, "out_frames": OPENSTL_OUT_FRAMES,
                    "batch_size": OPENSTL_BATCH}


def parse_shape(text: str) -> tuple[int, ...]:
    """argparse type of `--in-shape T,C,H,W` (here and in `nuwa backbones`)."""
    import argparse

    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers T,C,H,W, got {text!r}") from None
    if len(values) != 4 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected four positive integers T,C,H,W, got {text!r}")
    return values


def add_arguments(parser) -> None:
    import argparse

    parser.add_argument("--sizes", help="backbone sizes, comma-separated (default: small; with --openstl: reference). "
                                        "small,reference also times the published configurations (minutes on a CPU)")
    parser.add_argument("--backbones", help="comma-separated subset (default: every registered backbone; with "
                                            "--openstl: those OpenSTL publishes a TaxiBJ FPS for)")
    parser.add_argument("--in-shape", type=parse_shape, help="T,C,H,W (default 10,1,32,32; with --openstl 4,2,32,32)")
    parser.add_argument("--out-frames", type=int, help="default 10; with --openstl 4")
    parser.add_argument("--batch-size", type=int, help=f"default 8; with --openstl {OPENSTL_BATCH} (OpenSTL's)")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="time each case at least this long")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--plain-references", action=argparse.BooleanOptionalAction, default=True,
                        help="also time plain timm/torch references where one exists (vit, swin)")
    parser.add_argument("--openstl", action="store_true",
                        help="inference throughput (no_grad, eval) beside OpenSTL's published V100 TaxiBJ FPS")


def run(args, progress) -> list[dict]:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    defaults = OPENSTL_DEFAULTS if args.openstl else DEFAULTS
    sizes = (args.sizes or defaults["sizes"]).split(",")
    in_shape = tuple(args.in_shape or defaults["in_shape"])
    out_frames = args.out_frames or defaults["out_frames"]
    batch_size = args.batch_size or defaults["batch_size"]
    kinds = args.backbones.split(",") if args.backbones else None
    if args.openstl:
        return openstl_benchmark(sizes, in_shape, out_frames, batch_size, device, kinds=kinds,
                                 min_seconds=args.min_seconds, progress=progress)
    return benchmark(sizes, in_shape, out_frames, batch_size, device, kinds=kinds, min_seconds=args.min_seconds,
                     plain_references=args.plain_references, progress=progress)


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


def timed(step, batch_size: int, device: str, min_seconds: float = 2.0, max_repeats: int = 20,
          warmup: int = 2) -> float:
    """Samples per second of ``step()`` (one batch of ``batch_size``): ``warmup`` untimed calls,
    then at least one and at most ``max_repeats`` timed calls, stopping once ``min_seconds`` passed."""
    import torch

    cuda = device.startswith("cuda")
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    repeats, started = 0, time.perf_counter()
    while repeats < max_repeats and (repeats == 0 or time.perf_counter() - started < min_seconds):
        step()
        repeats += 1
    if cuda:
        torch.cuda.synchronize()
    return repeats * batch_size / (time.perf_counter() - started)


def training_step(model, inputs, targets, loss_fn=None):
    """One forward + backward + Adam step of ``model`` (MSE of its output against ``targets``)."""
    import torch

    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    def step():
        loss = loss_fn() if loss_fn is not None else torch.mean((model(inputs) - targets) ** 2)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    return step


def throughput(kind: str, size: str, in_shape, out_frames: int, batch_size: int, device: str,
               min_seconds: float = 2.0, max_repeats: int = 20, warmup: int = 2) -> float:
    """Training samples/s of backbone ``kind`` with its own training method (:mod:`nuwa.methods`)."""
    import torch

    from nuwa.backbones import create_backbone
    from nuwa.methods import training_loss

    torch.manual_seed(0)
    model = create_backbone(kind, in_shape=in_shape, out_frames=out_frames, size=size).to(device)
    inputs = torch.randn(batch_size, *in_shape, device=device)
    targets = torch.randn(batch_size, out_frames, *in_shape[1:], device=device)
    generator = torch.Generator().manual_seed(0)
    step = training_step(model, inputs, targets, loss_fn=lambda: training_loss(
        model, inputs, targets, progress=0.5, generator=generator))
    return timed(step, batch_size, device, min_seconds, max_repeats, warmup)


def inference_throughput(kind: str, size: str, in_shape, out_frames: int, batch_size: int, device: str,
                         min_seconds: float = 2.0, max_repeats: int = 100, warmup: int = 2) -> float:
    """Inference samples/s of backbone ``kind``: eval mode, ``torch.no_grad`` forward passes."""
    import torch

    from nuwa.backbones import create_backbone

    torch.manual_seed(0)
    model = create_backbone(kind, in_shape=in_shape, out_frames=out_frames, size=size).to(device).eval()
    inputs = torch.rand(batch_size, *in_shape, device=device)

    def step():
        with torch.no_grad():
            model(inputs)

    return timed(step, batch_size, device, min_seconds, max_repeats, warmup)


def transformer_setting(model) -> dict:
    """Width, depth, heads, MLP ratio, stochastic depth, window and latent grid of a ``vit`` or
    ``swin`` backbone, read from the built model (so overrides are honoured)."""
    blocks = model.translator.blocks
    first = blocks[0]
    width = model.translator.norm.normalized_shape[0]
    drop_path = max((float(getattr(b.drop_path1, "drop_prob", 0.0) or 0.0) for b in blocks), default=0.0)
    window = getattr(first, "window_size", None)
    return {"width": width, "depth": len(blocks), "heads": first.attn.num_heads,
            "mlp_ratio": first.mlp.fc1.out_features / width, "drop_path": drop_path,
            "window": tuple(window) if window is not None else None, "grid": tuple(model.latent_grid)}


def plain_reference(name: str, setting: dict, in_shape, out_frames: int):
    """The plain torch/timm network ``name`` at ``setting`` (:func:`transformer_setting`):
    ``(B, T_in*C, H, W) -> (B, h*w, T_out*C*patch**2)`` (``(B, h, w, ...)`` for Swin)."""
    import torch
    from torch import nn

    t_in, channels, height, width = in_shape
    grid = setting["grid"]
    patch = (height // grid[0], width // grid[1])
    in_chans, out_values = t_in * channels, out_frames * channels * patch[0] * patch[1]
    dim, depth, heads, mlp_ratio = setting["width"], setting["depth"], setting["heads"], setting["mlp_ratio"]
    if name == "timm:VisionTransformer":
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(img_size=(height, width), patch_size=patch, in_chans=in_chans, num_classes=out_values,
                                 global_pool="", class_token=False, embed_dim=dim, depth=depth, num_heads=heads,
                                 mlp_ratio=mlp_ratio, qkv_bias=True, drop_path_rate=setting["drop_path"])
    if name == "timm:SwinTransformer":
        from timm.models.swin_transformer import SwinTransformer

        return SwinTransformer(img_size=(height, width), patch_size=patch, in_chans=in_chans, num_classes=out_values,
                               global_pool="", embed_dim=dim, depths=(depth,), num_heads=(heads,),
                               window_size=setting["window"], mlp_ratio=mlp_ratio, qkv_bias=True,
                               drop_path_rate=setting["drop_path"])
    if name == "torch:nn.TransformerEncoder":
        class TorchViT(nn.Module):
            """Patch embedding, position embedding, pre-norm ``nn.TransformerEncoder``, linear head."""

            def __init__(self):
                super().__init__()
                self.embed = nn.Conv2d(in_chans, dim, patch, stride=patch)
                self.position = nn.Parameter(torch.zeros(1, grid[0] * grid[1], dim))
                layer = nn.TransformerEncoderLayer(dim, heads, int(dim * mlp_ratio), dropout=0.0, activation="gelu",
                                                   batch_first=True, norm_first=True)
                self.encoder = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(dim), enable_nested_tensor=False)
                self.head = nn.Linear(dim, out_values)

            def forward(self, x):
                return self.head(self.encoder(self.embed(x).flatten(2).transpose(1, 2) + self.position))

        return TorchViT()
    raise KeyError(f"unknown plain reference {name!r}")


def plain_throughputs(kind: str, size: str, in_shape, out_frames: int, batch_size: int, device: str,
                      min_seconds: float = 2.0) -> dict[str, float]:
    """Training samples/s of ``kind``'s plain references and of its translator alone:
    ``{reference name: samples/s, "translator": samples/s}``."""
    import torch

    from nuwa.backbones import create_backbone

    torch.manual_seed(0)
    ours = create_backbone(kind, in_shape=in_shape, out_frames=out_frames, size=size)
    setting = transformer_setting(ours)
    t_in, channels, height, width = in_shape
    measured = {}
    for name in PLAIN_REFERENCES[kind]:
        torch.manual_seed(0)
        model = plain_reference(name, setting, in_shape, out_frames).to(device)
        inputs = torch.randn(batch_size, t_in * channels, height, width, device=device)
        with torch.no_grad():
            out_shape = model(inputs[:1]).shape[1:]
        targets = torch.randn(batch_size, *out_shape, device=device)
        assert targets[0].numel() == out_frames * channels * height * width, (name, out_shape)
        measured[name] = timed(training_step(model, inputs, targets), batch_size, device, min_seconds)
    translator = ours.translator.to(device)
    h, w = setting["grid"]
    latent = torch.randn(batch_size, t_in * ours.hid_S, h, w, device=device)
    targets = torch.randn(batch_size, out_frames * ours.hid_S, h, w, device=device)
    measured["translator"] = timed(training_step(translator, latent, targets), batch_size, device, min_seconds)
    return measured


def case_name(kind: str, size: str, device: str, in_shape, out_frames: int, batch_size: int) -> str:
    return f"{kind}/{size}/{device}/in{'x'.join(map(str, in_shape))}/out{out_frames}/b{batch_size}"


def row(case: str, value: float, reference: str, reference_value: float, unit: str = "samples/s") -> dict:
    return {"benchmark": "backbones", "case": case, "value": value, "unit": unit, "reference": reference,
            "reference_value": reference_value, "ratio": value / reference_value}


def benchmark(sizes: list[str], in_shape, out_frames: int, batch_size: int, device: str, kinds=None,
              min_seconds: float = 2.0, plain_references: bool = True, progress=None) -> list[dict]:
    from nuwa.backbones import backbone_kinds

    kinds = kinds or backbone_kinds()
    rows = []
    for size in sizes:
        measured = {}
        for kind in sorted(set(kinds) | {"simvp"}):
            measured[kind] = throughput(kind, size, in_shape, out_frames, batch_size, device, min_seconds)
            if progress:
                progress(f"{kind}/{size}: {measured[kind]:.2f} samples/s")
        plain = {}
        if plain_references:
            for kind in sorted(set(kinds) & set(PLAIN_REFERENCES)):
                plain[kind] = plain_throughputs(kind, size, in_shape, out_frames, batch_size, device, min_seconds)
                if progress:
                    progress(f"{kind}/{size} references: " + ", ".join(f"{name} {value:.2f}"
                                                                       for name, value in plain[kind].items()))
        for kind in kinds:
            case = case_name(kind, size, device, in_shape, out_frames, batch_size)
            rows.append(row(case, measured[kind], f"simvp/{size}", measured["simvp"]))
            if kind not in plain:
                continue
            translator_case = case_name(f"{kind}.translator", size, device, in_shape, out_frames, batch_size)
            for name in PLAIN_REFERENCES[kind]:
                rows.append(row(case, measured[kind], name, plain[kind][name]))
                rows.append(row(translator_case, plain[kind]["translator"], name, plain[kind][name]))
    return rows


def openstl_benchmark(sizes: list[str], in_shape, out_frames: int, batch_size: int, device: str, kinds=None,
                      min_seconds: float = 2.0, progress=None) -> list[dict]:
    """Inference samples/s of the backbones OpenSTL publishes a TaxiBJ FPS for, beside that FPS."""
    kinds = kinds or sorted(OPENSTL_TAXIBJ_FPS)
    unknown = sorted(set(kinds) - set(OPENSTL_TAXIBJ_FPS))
    if unknown:
        raise ValueError(f"--openstl: OpenSTL publishes no TaxiBJ FPS for {', '.join(unknown)}; "
                         f"choose from {', '.join(sorted(OPENSTL_TAXIBJ_FPS))}")
    setting = (tuple(in_shape), out_frames, batch_size)
    if progress and (setting != (OPENSTL_SHAPE, OPENSTL_OUT_FRAMES, OPENSTL_BATCH) or set(sizes) != {OPENSTL_SIZE}):
        progress(f"note: OpenSTL's setting is in_shape {OPENSTL_SHAPE}, {OPENSTL_OUT_FRAMES} output frames, "
                 f"size {OPENSTL_SIZE}, batch {OPENSTL_BATCH}; this run differs")
    rows = []
    for size in sizes:
        for kind in kinds:
            value = inference_throughput(kind, size, in_shape, out_frames, batch_size, device, min_seconds)
            if progress:
                progress(f"{kind}/{size} inference: {value:.2f} samples/s (OpenSTL V100: {OPENSTL_TAXIBJ_FPS[kind]:g})")
            case = case_name(kind, size, device, in_shape, out_frames, batch_size) + "/inference"
            rows.append(row(case, value, OPENSTL_REFERENCE, OPENSTL_TAXIBJ_FPS[kind]))
    return rows
