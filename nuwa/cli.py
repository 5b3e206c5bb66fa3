"""`nuwa <stage>`: parse arguments, call the stage's core, write its files. Nothing else.

Every subcommand reads and validates the parameter file first (``--params``, default
params.yaml), so a bad value stops the job before it writes anything. Default paths follow
the file contract in :mod:`nuwa.grid`; Snakemake rules and DVC stages pass them explicitly.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
from pathlib import Path

from nuwa import grid

COMMON_HELP = "parameter file (validated against the schema before anything runs)"


def _params(args, uses_torch=False):
    """The validated parameter file; ``uses_torch``: also apply ``--threads`` to torch. Only
    the stages that compute with torch import it: the others start 2-5 s sooner per job."""
    from nuwa.config import load_params

    params = load_params(args.params)
    if uses_torch:
        _torch_threads(args)
    return params


def _torch_threads(args):
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _check_name(params, section, name):
    if name not in params[section]:
        from nuwa.config import ParamsError

        raise ParamsError(f"--{section[:-1]} {name!r} is not defined under {section} "
                          f"(defined: {', '.join(sorted(params[section]))})")


def _dataset_config(params, name):
    _check_name(params, "datasets", name)
    return params["datasets"][name]


def cmd_validate(args):
    params = _params(args)
    cells = grid.train_cells(params)
    print(f"{args.params}: valid; {len(params['grid']['datasets'])} dataset(s), {len(cells)} training run(s)")
    if args.out:
        # DVC's first stage (dvc.yaml `validate`): every other stage depends on this file, so
        # no stage command, with grid names in it, runs before the names are checked. The bytes
        # never depend on the values, so a params change reruns only the stages that read it.
        import json

        from nuwa.io import atomic_path

        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps({"params_valid": True}) + "\n")


def dataset_rows(params: dict) -> list[dict]:
    """One row per params dataset entry, then one per registered kind no entry uses."""
    from nuwa.datasets import dataset_kinds, source_status

    in_grid = set(params["grid"]["datasets"])
    rows = []
    for name, entry in params["datasets"].items():
        source, present = source_status(entry)
        rows.append({"name": name, "kind": entry["kind"], "in_grid": "yes" if name in in_grid else "no",
                     "source": source or "(generated)", "present": "yes" if present else "NO"})
    used = {entry["kind"] for entry in params["datasets"].values()}
    for kind in dataset_kinds():
        if kind not in used:
            rows.append({"name": "-", "kind": kind, "in_grid": "no", "source": "(no params entry)", "present": "-"})
    return rows


def cmd_datasets(args):
    import pandas as pd

    rows = dataset_rows(_params(args))
    frame = pd.DataFrame(rows, columns=["name", "kind", "in_grid", "source", "present"])
    print(frame.to_string(index=False))
    missing = [r["name"] for r in rows if r["present"] == "NO" and r["in_grid"] == "yes"]
    if missing:
        print(f"\nin the grid but source files missing: {', '.join(missing)} (see README, 'Datasets')", file=sys.stderr)
        return 1
    return 0


def cmd_ingest(args):
    from nuwa.ingest import DEFAULT_CHUNK_FRAMES, dask_scheduler, ingest
    from nuwa.io import write_netcdf

    params = _params(args)
    config = _dataset_config(params, args.dataset)
    out = args.out or grid.PROCESSED.format(dataset=args.dataset)
    settings = params.get("ingest", {})
    with dask_scheduler(settings.get("scheduler", "local"), threads=args.threads or 1):
        processed = ingest(args.dataset, config, chunk_frames=settings.get("chunk_frames", DEFAULT_CHUNK_FRAMES))
        write_netcdf(processed, out)
    print(f"wrote {out}")


def cmd_pretrain(args):
    from nuwa.io import save_checkpoint, write_csv
    from nuwa.pretrain import checkpoint, pretrain
    from nuwa.windows import load_series

    params = _params(args, uses_torch=True)
    config = _dataset_config(params, args.dataset)
    series = load_series(args.data or grid.PROCESSED.format(dataset=args.dataset))
    model, history = pretrain(series, args.dataset, config, params["pretrain"], params["seed"])
    model_out = args.model_out or grid.UPSTREAM_MODEL.format(dataset=args.dataset)
    history_out = args.history_out or grid.UPSTREAM_HISTORY.format(dataset=args.dataset)
    write_csv(history, history_out)
    save_checkpoint(checkpoint(model, args.dataset, params["pretrain"]), model_out)
    print(f"wrote {model_out} (final loss {history['loss'].iloc[-1]:.4g})")


def cmd_saliency(args):
    from nuwa.io import load_checkpoint, write_netcdf
    from nuwa.pretrain import load_upstream
    from nuwa.saliency import compute_importance, saliency_dataset
    from nuwa.windows import load_series, select_dataset

    params = _params(args, uses_torch=True)
    config = _dataset_config(params, args.dataset)
    series = load_series(args.data or grid.PROCESSED.format(dataset=args.dataset))
    model_path = args.model or grid.UPSTREAM_MODEL.format(dataset=args.dataset)
    frames, channels, height, width = config["input_frames"], *series.field.shape[1:]
    model = load_upstream(load_checkpoint(model_path), model_path,
                          expected={"frames": frames, "channels": channels, "height": height, "width": width,
                                    "patch_size": config["patch_size"]})
    train = select_dataset(series, config, "train")
    settings = params["saliency"]
    source_index, importance = compute_importance(model, train, settings["layers"], settings["batch_size"])
    dataset = saliency_dataset(source_index, importance, settings["environment_ratio"], config["patch_size"],
                               settings["layers"], len(model.blocks), args.dataset)
    out = args.out or grid.SALIENCY.format(dataset=args.dataset)
    write_netcdf(dataset, out)
    print(f"wrote {out} ({len(source_index)} training windows)")


def cmd_bank(args):
    import numpy as np

    from nuwa.bank import BANK_CONTIGUOUS, LazyWindows, write_bank
    from nuwa.io import DataFileError, check_finite, open_netcdf, write_netcdf
    from nuwa.seeding import numpy_rng
    from nuwa.windows import load_series, select_dataset

    params = _params(args)
    config = _dataset_config(params, args.dataset)
    _check_name(params, "variants", args.variant)
    settings = grid.variant_settings(params, args.variant)
    method = settings.pop("method")
    series = load_series(args.data or grid.PROCESSED.format(dataset=args.dataset))
    train = select_dataset(series, config, "train")
    source_index = np.asarray(train.starts)
    out = args.out or grid.BANK.format(dataset=args.dataset, variant=args.variant)
    if method == "none":
        # Ori trains on the original windows: its bank is empty by definition, which keeps
        # the DAG uniform (every variant's training reads its bank) in Snakemake and DVC alike.
        write_netcdf(empty_bank_dataset(series, config, args.dataset, args.variant), out, contiguous=BANK_CONTIGUOUS)
        print(f"wrote {out} (method 'none': no augmented windows)")
        return
    importance = None
    if method == "saliency":
        saliency_path = args.saliency or grid.SALIENCY.format(dataset=args.dataset)
        saliency = open_netcdf(saliency_path, variables=("importance", "causal"),
                               dims={"importance": ("sample", "step", "patch_y", "patch_x")})
        if not np.array_equal(saliency["sample"].values, source_index):
            raise DataFileError(f"{saliency_path}: its samples are not this dataset's training windows "
                                "(stale saliency file?); rerun the saliency stage")
        importance = saliency["importance"].values
        patches = (config["input_frames"], *(n // config["patch_size"] for n in series.field.shape[2:]))
        if importance.shape[1:] != patches:
            raise DataFileError(f"{saliency_path}: importance has (step, patch_y, patch_x) = {importance.shape[1:]}, "
                                f"this dataset's windows need {patches} (stale saliency file?); rerun the saliency stage")
        check_finite(importance, f"{saliency_path}: variable 'importance'")
    rng = numpy_rng(params["seed"], "bank", args.dataset, args.variant)
    # windows fetched chunk by chunk while the bank streams to the file: neither the windows nor
    # the bank are ever whole in memory
    windows = LazyWindows(lambda a, b: train.inputs(source_index[a:b]),
                          (len(source_index), config["input_frames"], *series.field.shape[1:]))
    rows = write_bank(out, windows, source_index, method=method, settings=settings, patch_size=config["patch_size"],
                      rng=rng, importance=importance, channels=[str(c) for c in range(series.field.shape[1])],
                      units=series.attrs.get("units", "1"), dataset_name=args.dataset, variant=args.variant,
                      desc=f"bank {args.dataset}/{args.variant}")
    print(f"wrote {out} ({rows} augmented windows)")


def empty_bank_dataset(series, config, dataset_name, variant):
    import numpy as np

    from nuwa.bank import bank_dataset

    t, (c, h, w) = config["input_frames"], series.field.shape[1:]
    p = config["patch_size"]
    empty = {"augmented": np.zeros((0, t, c, h, w), np.float32), "source_index": np.zeros(0, np.int64),
             "copy": np.zeros(0, np.int32), "intervened": np.zeros((0, t), np.int8),
             "causal": np.zeros((0, t, h // p, w // p), np.int8)}
    return bank_dataset(empty, channels=[str(i) for i in range(c)], units=series.attrs.get("units", "1"),
                        method="none", settings={"environment_ratio": 0.0}, patch_size=p,
                        dataset_name=dataset_name, variant=variant)


def cmd_train(args):
    """One cell; several processes when launched by torchrun (see nuwa.distributed), rank 0 writing."""
    from nuwa import distributed

    params = _params(args, uses_torch=True)
    _check_name(params, "backbones", args.backbone)
    gpus = int(params["backbones"][args.backbone].get("gpus", 1))
    if gpus > 1 and distributed.environment_world_size() == 1 and "LOCAL_RANK" not in os.environ:
        # the cell asks for several GPUs: run this same command under torchrun, one process per
        # GPU (DDP; gloo on CPU). Snakemake and DVC both just call `nuwa train`.
        distributed.check_batch_size(params["train"]["batch_size"], gpus)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                   "--nproc_per_node", str(gpus), "-m", "nuwa", *args.argv]
        print(f"backbones.{args.backbone}.gpus = {gpus}: running under torchrun", file=sys.stderr, flush=True)
        return subprocess.call(command)
    distributed.check_batch_size(params["train"]["batch_size"], distributed.environment_world_size())
    context = distributed.setup(args.device)
    try:
        _train(args, params, context)
    finally:
        distributed.teardown(context)


def _train(args, params, context):
    from nuwa.evaluate import METRIC_CONVENTIONS, examples_dataset
    from nuwa.io import (DataFileError, NetCDFRows, load_checkpoint, open_netcdf, save_checkpoint, write_csv,
                         write_json, write_netcdf)
    from nuwa.train import train_cell
    from nuwa.windows import load_series

    config = _dataset_config(params, args.dataset)
    _check_name(params, "backbones", args.backbone)
    _check_name(params, "variants", args.variant)
    seed = params["seed"] if args.seed is None else args.seed
    cell = grid.Cell(args.dataset, args.backbone, args.variant, seed, primary=seed == params["seed"])
    out_dir = Path(args.out_dir or cell.run_dir)
    if context.is_main:
        # temporary files of a writer killed mid-write (SIGKILL skips the clean-up of io.atomic_path)
        for name in (*grid.RUN_FILES, "checkpoint.pt"):
            for partial in out_dir.glob(f".{name}.*.tmp"):
                partial.unlink(missing_ok=True)
    series = load_series(args.data or grid.PROCESSED.format(dataset=args.dataset))
    method = params["variants"][args.variant]["method"]
    bank_path = args.bank or grid.BANK.format(dataset=args.dataset, variant=args.variant)
    # the bank's metadata and source indices only: its windows are read per batch, by every process itself
    with open_netcdf(bank_path, variables=("augmented", "source_index"), load=False,
                     dims={"augmented": ("bank_sample", "step", "channel", "y", "x"),
                           "source_index": ("bank_sample",)}) as bank:
        if bank.attrs.get("method") != method:
            raise DataFileError(f"{bank_path}: bank made with method {bank.attrs.get('method')!r}, but variant "
                                f"{args.variant!r} has method {method!r}; rerun the bank stage")
        bank_sources = bank["source_index"].values
    upstream = upstream_path = None
    if params["backbones"][args.backbone].get("init_from_upstream"):
        upstream_path = args.upstream or grid.UPSTREAM_MODEL.format(dataset=args.dataset)
        upstream = load_checkpoint(upstream_path)
    checkpoint_path = out_dir / "checkpoint.pt"
    with NetCDFRows(bank_path, "augmented") as bank_inputs:
        model, history, metrics, examples = train_cell(
            series, dataset_name=args.dataset, dataset_config=config, backbone_name=args.backbone,
            backbone_config=params["backbones"][args.backbone], variant=args.variant, train_config=params["train"],
            seed=seed, bank_inputs=bank_inputs, bank_sources=bank_sources, checkpoint_path=checkpoint_path,
            upstream=upstream, upstream_source=upstream_path, context=context)
    if not context.is_main:
        return
    metrics.update({"dataset": args.dataset, "backbone": args.backbone, "variant": args.variant, "method": method,
                    "split": "test", "conventions": METRIC_CONVENTIONS})
    write_csv(history, out_dir / "history.csv")
    write_netcdf(examples_dataset(examples, series, {"dataset": args.dataset, "backbone": args.backbone,
                                                     "variant": args.variant, "seed": seed}), out_dir / "examples.nc")
    save_checkpoint({"state_dict": model.state_dict(), "backbone": dict(params["backbones"][args.backbone]),
                     "dataset": args.dataset, "variant": args.variant, "seed": seed}, out_dir / "model.pt")
    # metrics.json last: its presence marks a finished run
    write_json(metrics, out_dir / "metrics.json")
    checkpoint_path.unlink(missing_ok=True)
    print(f"wrote {out_dir} (test mse {metrics['mse']:.4g}, ssim {metrics['ssim']:.4f})")


def cmd_baseline(args):
    from nuwa.evaluate import METRIC_CONVENTIONS, evaluate_forecaster, persistence
    from nuwa.io import write_json
    from nuwa.windows import load_series, select_dataset

    params = _params(args, uses_torch=True)
    config = _dataset_config(params, args.dataset)
    series = load_series(args.data or grid.PROCESSED.format(dataset=args.dataset))
    test = select_dataset(series, config, "test")
    metrics, _ = evaluate_forecaster(lambda x: persistence(x, config["output_frames"]), test, config["csi_thresholds"])
    metrics.update({"dataset": args.dataset, "baseline": "persistence", "split": "test",
                    "conventions": METRIC_CONVENTIONS})
    out = args.out or grid.BASELINE.format(dataset=args.dataset)
    write_json(metrics, out)
    print(f"wrote {out} (test mse {metrics['mse']:.4g})")


def cmd_tables(args):
    from nuwa.io import read_json, write_csv, write_text
    from nuwa.metrics import METRIC_CONVENTIONS
    from nuwa.tables import summarise, to_markdown

    params = _params(args)
    records = []
    for cell in grid.train_cells(params):
        metrics = read_json(cell.file("metrics.json"))
        records.append({"dataset": cell.dataset, "backbone": cell.backbone, "variant": cell.variant,
                        "seed": cell.seed, **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}})
    baselines = {d: read_json(grid.BASELINE.format(dataset=d)) for d in params["grid"]["datasets"]}
    methods = {name: entry["method"] for name, entry in params["variants"].items()}
    summary = summarise(records, baselines, methods)
    write_csv(summary, args.out_csv or grid.SUMMARY_CSV)
    write_text(to_markdown(summary, METRIC_CONVENTIONS), args.out_md or grid.SUMMARY_MD)
    print(f"wrote {args.out_csv or grid.SUMMARY_CSV} ({len(summary)} rows)")


def cmd_figures(args):
    import matplotlib.pyplot as plt

    from nuwa.figures import prediction_strip
    from nuwa.io import open_netcdf, save_figure

    params = _params(args)
    backbone = params["figures"]["backbone"]
    examples = {}
    for variant in params["grid"]["variants"]:
        path = grid.Cell(args.dataset, backbone, variant, params["seed"], True).file("examples.nc")
        examples[variant] = open_netcdf(path, variables=("inputs", "truth", "prediction"))
    figure = prediction_strip(examples, f"{args.dataset} ({backbone})")
    save_figure(figure, args.out_predictions or grid.PREDICTION_FIGURE.format(dataset=args.dataset), dpi=110)
    plt.close(figure)
    out = args.out_saliency or grid.SALIENCY_FIGURE.format(dataset=args.dataset)
    show_mask(grid.SALIENCY.format(dataset=args.dataset), 0, out, data=grid.PROCESSED.format(dataset=args.dataset),
              by_position=True)
    print(f"wrote figures for {args.dataset}")


def show_mask(saliency_path, sample, out, data=None, by_position=False):
    import matplotlib.pyplot as plt
    import numpy as np

    from nuwa.figures import saliency_overlay
    from nuwa.io import DataFileError, open_netcdf, save_figure
    from nuwa.windows import load_series

    saliency = open_netcdf(saliency_path, variables=("importance", "causal"))
    dataset_name = saliency.attrs.get("nuwa_dataset", "")
    data = data or grid.PROCESSED.format(dataset=dataset_name)
    series = load_series(data)
    samples = saliency["sample"].values
    if by_position:
        sample = int(samples[sample])
    if sample not in samples:
        raise DataFileError(f"{saliency_path}: no sample {sample} (samples are window start indices "
                            f"{int(samples.min())}..{int(samples.max())})")
    entry = saliency.sel(sample=sample)
    steps = entry.sizes["step"]
    frames = series.field[sample:sample + steps, 0]
    figure = saliency_overlay(frames, entry["importance"].values, entry["causal"].values,
                              int(saliency.attrs["patch_size"]),
                              title=f"{dataset_name}: window t={sample}, environment ratio "
                                    f"{saliency.attrs['environment_ratio']:g} (cyan = environmental)")
    save_figure(figure, out, dpi=110)
    plt.close(figure)
    return np.asarray(frames)


def cmd_show_mask(args):
    out = args.out or f"mask_{Path(args.saliency).stem}_{args.sample}.png"
    show_mask(args.saliency, args.sample, out, data=args.data)
    print(f"wrote {out}")


def _shape(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers T,C,H,W, got {text!r}") from None
    if len(values) != 4 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected four positive integers T,C,H,W, got {text!r}")
    return values


def cmd_backbones(args):
    import pandas as pd

    from nuwa.bench.backbones import describe

    _torch_threads(args)
    rows = describe(args.size, args.in_shape, args.out_frames, args.scale)
    pd.DataFrame(rows, columns=["name", "params", "flops"]).to_csv(sys.stdout, index=False)


def cmd_bench(args):
    from nuwa.bench import bench_module, rows_frame
    from nuwa.io import write_csv

    _torch_threads(args)
    rows = bench_module(args.name).run(args, lambda line: print(line, file=sys.stderr))
    frame = rows_frame(rows)
    frame.to_csv(sys.stdout, index=False, float_format="%.6g")
    out = args.out or f"results/bench/{args.name}.csv"
    write_csv(frame, out)
    print(f"wrote {out}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nuwa", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="<stage>")

    def add(name, func, help_text, dataset=True):
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(func=func)
        command.add_argument("--params", default="params.yaml", help=COMMON_HELP)
        command.add_argument("--threads", type=int, default=int(os.environ.get("NUWA_THREADS", "0")) or None,
                             help="threads of the stages that compute with torch, and of ingest's dask scheduler "
                                  "(default: the library's choice, or $NUWA_THREADS)")
        if dataset:
            command.add_argument("--dataset", required=True, help="dataset name (a key of params datasets)")
        command.add_argument("--mem-mb", type=int, help="memory the job declared (Snakemake's resources.mem_mb): "
                             "stop with an error if its resident memory (with its child processes) exceeds it")
        command.add_argument("--mem-rule", help="the Snakemake rule running this job, named in that error")
        return command

    c = add("validate", cmd_validate, "check params.yaml and print the size of the grid", dataset=False)
    c.add_argument("--out", help=f"on success also write this file (DVC's first stage: {grid.PARAMS_OK})")
    add("datasets", cmd_datasets, "list params.yaml's datasets and registered kinds, and whether source files are "
        "present (exit 1 if a grid dataset's files are missing)", dataset=False)
    c = add("ingest", cmd_ingest, "generate or read a dataset into data/processed/{dataset}.nc")
    c.add_argument("--out")
    c = add("pretrain", cmd_pretrain, "train the upstream ViT to reconstruct its input (training split only)")
    c.add_argument("--data")
    c.add_argument("--model-out")
    c.add_argument("--history-out")
    c = add("saliency", cmd_saliency, "attention importance and causal/environmental masks of every training window")
    c.add_argument("--data")
    c.add_argument("--model")
    c.add_argument("--out")
    c = add("bank", cmd_bank, "DistriXplorer bank of augmented training windows for one variant")
    c.add_argument("--variant", required=True)
    c.add_argument("--data")
    c.add_argument("--saliency")
    c.add_argument("--out")
    c = add("train", cmd_train, "train one backbone for one variant and seed; evaluate once on the test split")
    c.add_argument("--backbone", required=True)
    c.add_argument("--variant", required=True)
    c.add_argument("--seed", type=int, help="training seed (default: params seed)")
    c.add_argument("--data")
    c.add_argument("--bank")
    c.add_argument("--upstream", help="upstream ViT model.pt, read when the backbone entry sets init_from_upstream")
    c.add_argument("--out-dir")
    c.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto (default): cuda (cuda:LOCAL_RANK under torchrun) when available, else cpu. Several "
                        "GPUs: torchrun --standalone --nnodes 1 --nproc_per_node N -m nuwa train ...")
    c = add("baseline", cmd_baseline, "persistence baseline metrics on the test split")
    c.add_argument("--data")
    c.add_argument("--out")
    c = add("tables", cmd_tables, "summary table over the grid (mean ± std over seeds, persistence rows)", dataset=False)
    c.add_argument("--out-csv")
    c.add_argument("--out-md")
    c = add("figures", cmd_figures, "prediction strip and saliency overlay for one dataset")
    c.add_argument("--out-predictions")
    c.add_argument("--out-saliency")
    c = sub.add_parser("backbones", help="CSV name,params,flops of every registered backbone",
                       description="CSV (name,params,flops) of every registered backbone at a size and input "
                                   "shape; FLOPs from torch's FLOP counter, one sample, one forward pass")
    c.set_defaults(func=cmd_backbones)
    c.add_argument("--size", choices=("small", "reference"), default="small")
    c.add_argument("--in-shape", type=_shape, default=(4, 2, 32, 32), help="T,C,H,W (default 4,2,32,32: TaxiBJ)")
    c.add_argument("--out-frames", type=int, default=4)
    c.add_argument("--scale", type=int, default=1, help="spatial upsampling factor of the output")
    c.add_argument("--threads", type=int)
    c = sub.add_parser("bench", help="benchmarks (CSV to stdout and results/bench/NAME.csv)",
                       description="Run a benchmark. Output rows: benchmark,case,value,unit,reference,"
                                   "reference_value,ratio; ratio = value / reference_value, both measured in "
                                   "this run on the same inputs, oriented so that bigger is better (a time "
                                   "is reported as reference time / our time). `nuwa bench NAME --help` "
                                   "lists a benchmark's options.")
    benches = c.add_subparsers(dest="name", required=True, metavar="NAME")
    from nuwa.bench import BENCHMARKS, bench_module

    for name in BENCHMARKS:
        module = bench_module(name)
        b = benches.add_parser(name, help=module.SUMMARY, description=module.__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        b.set_defaults(func=cmd_bench)
        b.add_argument("--out", help=f"CSV path (default results/bench/{name}.csv)")
        b.add_argument("--threads", type=int, default=int(os.environ.get("NUWA_THREADS", "0")) or None,
                       help="torch threads (default: torch's choice, or $NUWA_THREADS)")
        module.add_arguments(b)
    c = sub.add_parser("show-mask", help="PNG of one window's frames with environmental patches and importance",
                       description="PNG of one window's input frames with environmental patches outlined and "
                                   "the attention importance as a heat map")
    c.set_defaults(func=cmd_show_mask)
    c.add_argument("saliency", help="results/saliency/{dataset}.nc")
    c.add_argument("--sample", type=int, required=True, help="window start index (the file's 'sample' coordinate)")
    c.add_argument("--data", help="processed dataset (default: data/processed/<dataset in the file>.nc)")
    c.add_argument("--out", help="PNG path (default: mask_<file>_<sample>.png)")
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # `nuwa train` re-runs itself under torchrun for multi-GPU cells
    from nuwa.resources import ignore_file_size_signal, install_file_size_handler

    if threading.current_thread() is not threading.main_thread():
        return _main(args)
    # past a file size limit (ulimit -f) a write then fails (EFBIG), reported as such, instead
    # of SIGXFSZ killing the process without a word
    install_file_size_handler()
    try:
        return _main(args)
    finally:
        ignore_file_size_signal()


def _main(args) -> int:
    from nuwa.config import ParamsError
    from nuwa.io import DataFileError
    from nuwa.resources import space_problem, watch_memory

    watch = None
    try:
        with watch_memory(getattr(args, "mem_mb", None), args.command, getattr(args, "mem_rule", None)) as watch:
            status = args.func(args)
        if watch is not None and watch.exceeded:
            # the watchdog's interrupt can be swallowed (a library's clean-up catching
            # KeyboardInterrupt) and the stage finish: the job still went over its limit
            print(f"nuwa {args.command}: error: {watch.message()}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        if watch is None or not watch.exceeded:
            raise
        print(f"nuwa {args.command}: error: {watch.message()}", file=sys.stderr)
        return 2
    except (ParamsError, DataFileError, ValueError, KeyError, OSError) as exc:
        if os.environ.get("NUWA_DEBUG"):
            raise
        if isinstance(exc, OSError) and not isinstance(exc, DataFileError):
            reason = space_problem(exc)
            if reason is None:
                raise
            message = f"{exc.filename or 'a file'}: cannot write: {reason}"
        else:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"nuwa {args.command}: error: {message}", file=sys.stderr)
        return 2
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
