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


def _params(args, stage=None, uses_torch=False, **wildcards):
    """The validated parameter file; with ``stage``, only the keys the stage table declares for
    that stage's job (:func:`nuwa.stages.declared_params`: reading another key is an error).
    Names given on the command line are checked against the whole file first. ``uses_torch``:
    also apply ``--threads`` to torch. Only the stages that compute with torch import it: the
    others start 2-5 s sooner per job."""
    from nuwa.config import check_job_params, load_params

    check_job_params(args.params)  # a workflow's job: still the params its run planned with
    params = load_params(args.params)
    for section, name in (("datasets", wildcards.get("dataset")), ("tasks", wildcards.get("task")),
                          ("upstreams", wildcards.get("upstream")),
                          ("backbones", wildcards.get("backbone")), ("variants", wildcards.get("variant"))):
        if name is not None:
            grid.check_name(params, section, name)
    if uses_torch:
        _torch_threads(args)
    if stage is None:
        return params
    from nuwa.stages import declared_params

    return declared_params(params, stage, **wildcards)


def _check_files(inputs: dict, outputs: dict, emptied: dict | None = None) -> None:
    """Before a stage computes anything: refuse an output that is one of its inputs (the same real
    file, through any path or link; an existing file inside an input folder counts), two outputs
    that are the same file, an output folder the stage empties that holds an input, and an output
    that cannot be written (a folder, under a file, a folder not writable). ``inputs`` and
    ``outputs``: option (as the user knows it, e.g. ``--data``) -> path, list of paths or None;
    ``emptied``: option -> a folder whose files the stage removes. One line naming the file."""
    from nuwa.io import DataFileError, check_writable

    def real(path) -> str:
        return os.path.realpath(os.path.expanduser(str(path)))

    read, folders = {}, []
    for option, paths in inputs.items():
        for path in [paths] if isinstance(paths, (str, Path)) else (paths or []):
            if path:
                read.setdefault(real(path), (option, path))
                if os.path.isdir(path):
                    folders.append((real(path), option, path))
    written = {}
    for option, path in outputs.items():
        if not path:
            continue
        key = real(path)
        if key in read:
            source, given = read[key]
            same = "" if str(given) == str(path) else f" ({given})"
            raise DataFileError(f"{path}: output {option} is the input {source}{same}: refusing to overwrite an "
                                f"input; give {option} another path")
        inside = next(((o, f) for folder, o, f in folders if key.startswith(folder + os.sep)), None)
        if inside is not None and os.path.lexists(path):
            raise DataFileError(f"{path}: output {option} is a file of the input folder {inside[0]} ({inside[1]}): "
                                f"refusing to overwrite an input; give {option} another path")
        if key in written:
            raise DataFileError(f"{path}: given as two outputs, {written[key]} and {option}: the second would "
                                "overwrite the first")
        written[key] = option
    for option, folder in (emptied or {}).items():
        if folder:
            inside = next(((o, p) for key, (o, p) in read.items() if key.startswith(real(folder) + os.sep)), None)
            if inside is not None:
                raise DataFileError(f"{folder}: output folder {option} holds the input {inside[0]} ({inside[1]}), "
                                    f"whose files this stage removes; give {option} a folder of its own")
    for path in outputs.values():
        if path:
            check_writable(path)


def _series(path, params, name: str, entry: bool = True):
    """The processed file ``path`` of dataset ``name``, checked against its params entry
    (``entry=False``: a stage that does not declare it: its name and grid only)."""
    from nuwa.windows import load_series

    return load_series(path, name, params["datasets"][name] if entry else None)


def _torch_threads(args):
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def cmd_validate(args):
    # torch-free: the backbone specs check what the builders would refuse (nuwa/backbones/_specs/);
    # building every model on torch's meta device (load_params(models=True)) would add the torch
    # import, 2 s and 3 GB of address space, to every Snakemake and DVC run's first step
    params = _params(args)
    cells = grid.train_cells(params)
    print(f"{args.params}: valid; {len(params['grid']['datasets'])} dataset(s), {len(cells)} training run(s)")
    if args.out:
        _check_files({"--params": args.params}, {"--out": args.out})
        # DVC's first stage (dvc.yaml `validate`): every other stage depends on this file, so
        # no stage command, with grid names in it, runs before the names are checked. The bytes
        # never depend on the values, so a params change reruns only the stages that read it.
        import json

        from nuwa.io import atomic_path

        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps({"params_valid": True}) + "\n")


def cmd_params(args):
    """The merged, validated parameters of a params or experiment file, as one YAML file (what DVC,
    which reads params.yaml only, needs to run an experiment file)."""
    import yaml

    from nuwa.config import load_params

    text = yaml.safe_dump(load_params(args.file), sort_keys=False, width=110)
    header = f"# {args.file} merged with the files it extends (nuwa params); validated\n"
    if args.out:
        _check_files({"FILE": args.file}, {"--out": args.out})
        from nuwa.io import write_text

        write_text(header + text, args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(header + text)


def _print_or_write(text: str, out: str | None) -> None:
    """A generated file (dvc.yaml, the plots page): to ``out``, or printed."""
    from nuwa.io import write_text

    if out:
        _check_files({}, {"--out": out})
        write_text(text, out)
        print(f"wrote {out}")
    else:
        sys.stdout.write(text)


def cmd_inspect(args):
    """What a data file (or a glob of them) holds, and a datasets entry that ingests it (checked)."""
    from nuwa.config import load_params
    from nuwa.inspect import inspect_source, render

    params = load_params(args.params) if args.params else None
    inspection = inspect_source(args.source, name=args.name, params=params, scan=not args.no_scan)
    sys.stdout.write(render(inspection, entry_only=args.entry_only))
    return 1 if inspection.validation is not None and inspection.checked else 0


def cmd_dvc_yaml(args):
    from nuwa.stages import dvc_yaml

    _print_or_write(dvc_yaml(), args.out)


def cmd_plots_page(args):
    from nuwa.plots_page import plots_page

    _print_or_write(plots_page(), args.out)


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

    params = _params(args, "ingest", dataset=args.dataset)
    out = args.out or grid.PROCESSED.format(dataset=args.dataset)
    _check_files({"--params": args.params, "source": _source_files(params["datasets"][args.dataset])}, {"--out": out})
    settings = params.get("ingest") or {}
    with dask_scheduler(settings.get("scheduler", "local"), threads=args.threads or 1):
        processed = ingest(args.dataset, params["datasets"][args.dataset],
                           chunk_frames=settings.get("chunk_frames", DEFAULT_CHUNK_FRAMES))
        write_netcdf(processed, out)
    print(f"wrote {out}")


def _source_files(entry: dict) -> list[str]:
    """A params entry's source, as ingest's inputs: the files a pattern matches (bounded:
    nuwa.globbing), or the file or folder it names."""
    from nuwa.globbing import find_paths, has_magic

    source = entry.get("source")
    if source is None:
        return []
    source = os.path.expanduser(str(source))
    if has_magic(source):
        return find_paths(source)
    return [source] if os.path.exists(source) else []


def cmd_pretrain(args):
    from nuwa.io import save_checkpoint, write_csv
    from nuwa.pretrain import checkpoint, pretrain

    stage = "pretrain_ablation" if args.upstream else "pretrain"
    params = _params(args, stage, uses_torch=True, dataset=args.dataset, upstream=args.upstream)
    data = args.data or grid.PROCESSED.format(dataset=args.dataset)
    files = grid.upstream_files(args.dataset, args.upstream)
    model_out, history_out = args.model_out or files["model"], args.history_out or files["history"]
    _check_files({"--params": args.params, "--data": data}, {"--model-out": model_out, "--history-out": history_out})
    series = _series(data, params, args.dataset)
    settings = grid.upstream_settings(params, "pretrain", args.upstream)
    model, history = pretrain(series, args.dataset, params["datasets"][args.dataset], settings, settings["seed"])
    write_csv(history, history_out)
    save_checkpoint(checkpoint(model, args.dataset, settings), model_out)
    print(f"wrote {model_out} (final loss {history['loss'].iloc[-1]:.4g})")


def cmd_saliency(args):
    from nuwa.io import load_checkpoint, write_netcdf
    from nuwa.pretrain import load_upstream
    from nuwa.saliency import compute_importance, saliency_dataset
    from nuwa.windows import select_dataset

    stage = "saliency_ablation" if args.upstream else "saliency"
    params = _params(args, stage, uses_torch=True, dataset=args.dataset, upstream=args.upstream)
    config = params["datasets"][args.dataset]
    data = args.data or grid.PROCESSED.format(dataset=args.dataset)
    files = grid.upstream_files(args.dataset, args.upstream)
    model_path = args.model or files["model"]
    out = args.out or files["saliency"]
    _check_files({"--params": args.params, "--data": data, "--model": model_path}, {"--out": out})
    series = _series(data, params, args.dataset)
    frames, channels, height, width = config["input_frames"], *series.field.shape[1:]
    model = load_upstream(load_checkpoint(model_path), model_path,
                          expected={"frames": frames, "channels": channels, "height": height, "width": width,
                                    "patch_size": config["patch_size"]}, dataset=args.dataset)
    train = select_dataset(series, config, "train")
    settings = grid.upstream_settings(params, "saliency", args.upstream)
    source_index, importance = compute_importance(model, train, settings["layers"], settings["batch_size"],
                                                  args.dataset)
    dataset = saliency_dataset(source_index, importance, config["patch_size"], settings["layers"], len(model.blocks),
                               args.dataset)
    write_netcdf(dataset, out)
    print(f"wrote {out} ({len(source_index)} training windows)")


def cmd_diagnostics(args):
    import matplotlib.pyplot as plt
    import numpy as np

    from nuwa.bank import load_importance
    from nuwa.diagnostics import add_masks_in_use, diagnose_tables, training_climatology
    from nuwa.figures import diagnostics_figure
    from nuwa.io import save_figure, write_csv
    from nuwa.windows import patch_grid, select_dataset

    params = _params(args, "diagnostics", uses_torch=True, dataset=args.dataset)
    settings, config = params["diagnostics"], params["datasets"][args.dataset]
    data = args.data or grid.PROCESSED.format(dataset=args.dataset)
    saliency_path = args.saliency or grid.SALIENCY.format(dataset=args.dataset)
    out = args.out or grid.DIAGNOSTICS.format(dataset=args.dataset)
    out_per_seed = args.out_per_seed or grid.DIAGNOSTICS_PER_SEED.format(dataset=args.dataset)
    out_figure = args.out_figure or grid.DIAGNOSTICS_FIGURE.format(dataset=args.dataset)
    _check_files({"--params": args.params, "--data": data, "--saliency": saliency_path},
                 {"--out": out, "--out-per-seed": out_per_seed, "--out-figure": out_figure})
    series = _series(data, params, args.dataset)
    # the masks the banks actually use (the saliency file, at the bank's ratio): read and checked
    # before the minutes of pretraining below
    train = select_dataset(series, config, "train")
    importance = load_importance(saliency_path, np.asarray(train.starts), patch_grid(series, config), args.dataset)
    table, per_seed = diagnose_tables(series, args.dataset, config, params["pretrain"],
                                      objectives=settings["objectives"], seeds=settings["seeds"],
                                      layer_choices=settings["layer_choices"],
                                      ratio=params["bank"]["environment_ratio"], steps=settings["steps"],
                                      batch_size=params["saliency"]["batch_size"])
    print(f"diagnostics {args.dataset}: {table['seconds'].sum():.1f} s of pretraining and saliency", flush=True)
    figure = diagnostics_figure(table, args.dataset)
    table = add_masks_in_use(table, train.inputs(train.starts), training_climatology(series), importance,
                             dataset_name=args.dataset, patch_size=config["patch_size"],
                             ratio=params["bank"]["environment_ratio"], pretrain_config=params["pretrain"],
                             layers=params["saliency"]["layers"], source=saliency_path)
    # wall-clock seconds stay in the log: the files hold the same bytes on every run
    write_csv(per_seed.drop(columns="seconds"), out_per_seed)
    save_figure(figure, out_figure, dpi=110)
    plt.close(figure)
    write_csv(table.drop(columns="seconds"), out)
    print(f"wrote {out}")


def cmd_bank(args):
    import numpy as np

    from nuwa.bank import (BANK_CONTIGUOUS, IMPORTANCE_METHODS, LazyWindows, empty_bank_dataset, load_importance,
                           write_bank)
    from nuwa.io import write_netcdf
    from nuwa.windows import patch_grid, select_dataset, training_subset

    params = _params(args, "bank", dataset=args.dataset, train_percent=args.train_percent, variant=args.variant,
                     seed=args.seed)
    config = params["datasets"][args.dataset]
    settings = grid.variant_settings(params, args.variant)
    method = settings.pop("method")
    data = args.data or grid.PROCESSED.format(dataset=args.dataset)
    out = args.out or grid.BANK.format(dataset=args.dataset, train_percent=args.train_percent, variant=args.variant,
                                       seed=args.seed)
    saliency_path = None
    if method in IMPORTANCE_METHODS:
        # --saliency is the pipeline's file; a variant that names an ablation upstream reads that one's
        saliency_path = (grid.bank_saliency(params, args.dataset, args.variant)
                         if "upstream" in params["variants"][args.variant]
                         else args.saliency or grid.SALIENCY.format(dataset=args.dataset))
    _check_files({"--params": args.params, "--data": data, "--saliency": saliency_path}, {"--out": out})
    series = _series(data, params, args.dataset)
    # a cell with a share of the training windows gets a bank of those windows alone
    every_window = select_dataset(series, config, "train")
    train = training_subset(every_window, args.train_percent, params["train"]["subset"], args.seed, args.dataset)
    source_index = np.asarray(train.starts)
    if method in grid.BANKLESS_METHODS:
        # Ori trains on the original windows, mixup mixes them at batch time: the bank is empty by
        # definition, which keeps the DAG uniform (every variant's training reads its bank) in
        # Snakemake and DVC alike.
        write_netcdf(empty_bank_dataset(series, config, args.dataset, args.variant, args.seed, method), out,
                     contiguous=BANK_CONTIGUOUS)
        print(f"wrote {out} (method {method!r}: no stored augmented windows)")
        return
    importance = None
    if method in IMPORTANCE_METHODS:
        # the saliency covers every training window (one upstream model per dataset): the subset's rows
        importance = load_importance(saliency_path, every_window.starts, patch_grid(series, config), args.dataset)
        importance = importance[np.isin(every_window.starts, source_index)]
    # windows fetched chunk by chunk while the bank streams to the file: neither the windows nor
    # the bank are ever whole in memory
    windows = LazyWindows(lambda a, b: train.inputs(source_index[a:b]),
                          (len(source_index), config["input_frames"], *series.field.shape[1:]))
    summary = write_bank(out, windows, source_index, method=method,
                         settings={**settings, "chunk_size": params["bank"]["chunk_size"]},
                         patch_size=config["patch_size"], seed=args.seed, importance=importance,
                         channels=[str(c) for c in range(series.field.shape[1])],
                         units=series.attrs.get("units", "1"), std=series.std, dataset_name=args.dataset,
                         variant=args.variant, desc=f"bank {args.dataset}/{args.variant}/seed{args.seed}")
    print(f"wrote {out} ({summary['rows']} augmented windows; {summary['changed_cell_fraction']:.3f} of the "
          f"(step, patch) cells changed, mean |change| {summary['mean_abs_change_std']:.3g} training std)")


def cmd_train(args):
    """One cell; several processes when launched by torchrun (see nuwa.distributed), rank 0 writing."""
    from nuwa import distributed

    params = _params(args, "train", uses_torch=True, **{axis: getattr(args, axis) for axis in grid.AXES})
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
    from nuwa.evaluate import examples_dataset
    from nuwa.io import DataFileError, NetCDFRows, load_checkpoint, open_netcdf, save_checkpoint, write_csv, \
        write_json, write_netcdf
    from nuwa.train import model_payload, train_cell

    cell = grid.Cell(*(getattr(args, axis) for axis in grid.AXES))
    out_dir = Path(args.out_dir or cell.run_dir)
    data = args.data or grid.PROCESSED.format(dataset=args.dataset)
    settings = grid.variant_settings(params, args.variant, grid.TRAIN_KNOBS)
    method = settings["method"]
    bank_path = args.bank or grid.BANK.format(dataset=args.dataset, train_percent=args.train_percent,
                                              variant=args.variant, seed=args.seed)
    upstream_path = None
    if params["backbones"][args.backbone].get("init_from_upstream"):
        upstream_path = args.upstream or grid.UPSTREAM_MODEL.format(dataset=args.dataset)
    _check_files({"--params": args.params, "--data": data, "--bank": bank_path, "--upstream": upstream_path},
                 {f"--out-dir {name}": out_dir / name for name in (*grid.RUN_FILES, "checkpoint.pt")})
    if context.is_main:
        # temporary files of a writer killed mid-write (SIGKILL skips the clean-up of io.atomic_path)
        for name in (*grid.RUN_FILES, "checkpoint.pt"):
            for partial in out_dir.glob(f".{name}.*.tmp"):
                partial.unlink(missing_ok=True)
    series = _series(data, params, args.dataset)
    # the bank's metadata, sources and copies only: its windows are read per batch, by every process itself
    with open_netcdf(bank_path, variables=("augmented", "source_index", "copy"), load=False,
                     dims={"augmented": ("bank_sample", "step", "channel", "y", "x"),
                           "source_index": ("bank_sample",), "copy": ("bank_sample",)},
                     expect={"nuwa_dataset": args.dataset, "variant": args.variant,
                             "patch_size": params["datasets"][args.dataset]["patch_size"]},
                     hint="; rerun the bank stage") as bank:
        if bank.attrs.get("method") != method:
            raise DataFileError(f"{bank_path}: bank made with method {bank.attrs.get('method')!r}, but variant "
                                f"{args.variant!r} has method {method!r}; rerun the bank stage")
        if int(bank.attrs.get("seed", -1)) != args.seed:
            raise DataFileError(f"{bank_path}: bank made for seed {bank.attrs.get('seed')!r}, this run has seed "
                                f"{args.seed}; rerun the bank stage")
        bank_sources, bank_copies = bank["source_index"].values, bank["copy"].values
        # how strongly the bank perturbs, beside every result (tables): the mean change is in training-std units
        strength = {"bank_changed_cell_fraction": float(bank.attrs["changed_cell_fraction"]),
                    "bank_mean_abs_change": float(bank.attrs["mean_abs_change_std"])}
    mixup_alpha = settings.get("mixup_alpha")
    if mixup_alpha is not None:  # no bank: mixup's strength in the banks' terms, from one mixed copy per window
        from nuwa.loader import mixup_strength
        from nuwa.windows import select_dataset, training_subset

        config = params["datasets"][args.dataset]
        train = training_subset(select_dataset(series, config, "train"), args.train_percent,
                                params["train"]["subset"], args.seed, args.dataset)
        mixed = mixup_strength(train, mixup_alpha, args.seed, args.dataset, patch_size=config["patch_size"])
        strength = {"bank_changed_cell_fraction": mixed["changed_cell_fraction"],
                    "bank_mean_abs_change": mixed["mean_abs_change_std"]}
    upstream = None
    if upstream_path is not None:
        upstream = load_checkpoint(upstream_path, expect={"kind": "upstream_vit", "dataset": args.dataset},
                                   hint=f" (not the upstream model of {args.dataset}; nuwa pretrain writes it)")
    checkpoint_path = out_dir / "checkpoint.pt"
    factor = grid.task_factor(params, args.task)  # super-resolution: inputs coarsened by it
    with NetCDFRows(bank_path, "augmented") as bank_inputs:
        model, history, metrics, examples, losses = train_cell(
            series, dataset_name=args.dataset, dataset_config=params["datasets"][args.dataset],
            backbone_name=args.backbone, backbone_config=params["backbones"][args.backbone], variant=args.variant,
            train_config={**params["train"], "steps": grid.train_steps(params, args.dataset)}, mix_fraction=settings["mix_fraction"], mixup_alpha=mixup_alpha,
            seed=args.seed, train_percent=args.train_percent, input_factor=factor,
            bank_inputs=bank_inputs, bank_sources=bank_sources, bank_copies=bank_copies,
            checkpoint_path=checkpoint_path, upstream=upstream, upstream_source=upstream_path, context=context,
            fss_scales=params["evaluation"]["fss_scales"])
    if not context.is_main:
        return
    metrics.update({"dataset": args.dataset, "task": args.task, "train_percent": args.train_percent,
                    "backbone": args.backbone, "variant": args.variant, "method": method,
                    **strength, "split": "test", "never_observed_masked": never_observed_masked(series)})
    write_csv(history, out_dir / "history.csv")
    write_netcdf(examples_dataset(examples, series, {"dataset": args.dataset, "task": args.task,
                                                     "train_percent": args.train_percent, "backbone": args.backbone,
                                                     "variant": args.variant, "seed": args.seed}),
                 out_dir / "examples.nc")
    # every test window's mse and mae at every lead: what the comparisons draw their intervals from
    losses.attrs["method"] = method
    write_netcdf(losses, out_dir / "test_losses.nc")
    save_checkpoint(model_payload(model, params["backbones"][args.backbone], args.dataset, args.variant, args.seed,
                                  input_factor=factor), out_dir / "model.pt")
    # metrics.json last: its presence marks a finished run
    write_json(metrics, out_dir / "metrics.json")
    checkpoint_path.unlink(missing_ok=True)
    print(f"wrote {out_dir} (test mse {metrics['mse']:.4g}, ssim {metrics['ssim']:.4f})")


def score_checkpoint(model_path, backbone_config: dict, trained_config: dict, train_path, data_path, config: dict,
                     factor: int, fss_scales, example_count: int = 0, attrs: dict | None = None,
                     what: str = "backbone", names: tuple[str, str] = (None, None), expect: dict | None = None):
    """A saved model scored on the test split of a processed dataset of the same frame shape, its
    inputs normalised with the training dataset's statistics (as the model saw them). Returns
    (metrics, examples, losses, series, test windows). A dataset whose frames differ is refused
    with both shapes; a model file that does not fit the backbone, with the tensor that differs.
    ``names``: the datasets of ``train_path`` and ``data_path`` (their params entries:
    ``trained_config`` and ``config``), which the files must be; ``expect``: keys the model file
    must hold with these values (its cell)."""
    from dataclasses import replace

    import torch

    from nuwa.evaluate import evaluate_forecaster
    from nuwa.io import DataFileError, check_state_dict, load_checkpoint
    from nuwa.train import build_model
    from nuwa.windows import load_series, select_dataset

    trained = load_series(train_path, names[0], trained_config if names[0] else None)
    other = load_series(data_path, names[1], config if names[1] else None)
    if trained.field.shape[1:] != other.field.shape[1:]:
        raise DataFileError(f"{data_path}: frames of (channel, y, x) = {other.field.shape[1:]}, but the model was "
                            f"trained on {train_path} with {trained.field.shape[1:]}; it cannot be evaluated there")
    series = replace(other, mean=trained.mean, std=trained.std)
    payload = load_checkpoint(model_path, expect=expect, hint=" (the model of another cell; nuwa train writes it)")
    model = build_model(backbone_config, trained_config, trained.field.shape[1], factor)
    check_state_dict(model_path, payload.get("state_dict"), model.state_dict(), what)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    test = select_dataset(series, config, "test")
    if len(test) == 0:
        raise ValueError(f"{data_path}: no test window fits in its test split")
    with torch.no_grad():
        metrics, examples, losses = evaluate_forecaster(model, test, config["csi_thresholds"], fss_scales=fss_scales,
                                                        input_factor=factor, example_count=example_count,
                                                        attrs=attrs)
    return metrics, examples, losses, series, test


def cmd_transfer(args):
    """A trained cell evaluated on another dataset's test split, without retraining (grid.eval_on)."""
    from nuwa.io import write_json, write_netcdf

    axes = {axis: getattr(args, axis) for axis in grid.AXES}
    params = _params(args, "transfer", uses_torch=True, eval_on=args.eval_on, **axes)
    cell = grid.Cell(**axes)
    config = params["datasets"][args.eval_on]
    factor = grid.task_factor(params, args.task)
    model_path = args.model or cell.file("model.pt")
    train_data = args.train_data or grid.PROCESSED.format(dataset=args.dataset)
    data = args.data or grid.PROCESSED.format(dataset=args.eval_on)
    out = args.out or grid.TRANSFER_DIR.format(eval_on=args.eval_on, **axes) + "/metrics.json"
    losses_out = args.losses_out or str(Path(out).with_name("test_losses.nc"))
    _check_files({"--params": args.params, "--model": model_path, "--train-data": train_data, "--data": data},
                 {"--out": out, "--losses-out": losses_out})
    # the model file must be this cell's: trained on the dataset, with the backbone entry as it is now
    expect = {"dataset": args.dataset, "backbone": dict(params["backbones"][args.backbone]), "variant": args.variant,
              "seed": args.seed}
    metrics, _, losses, series, test = score_checkpoint(
        model_path, params["backbones"][args.backbone], params["datasets"][args.dataset], train_data, data, config,
        factor, params["evaluation"]["fss_scales"],
        attrs={**{k: str(v) for k, v in axes.items()}, "eval_on": args.eval_on,
               "window_stride": int(config["window_stride"])}, what=f"backbone {args.backbone!r}",
        names=(args.dataset, args.eval_on), expect=expect)
    metrics.update({**axes, "eval_on": args.eval_on, "input_factor": factor, "split": "test",
                    "normalised_with": args.dataset, "never_observed_masked": never_observed_masked(series)})
    write_netcdf(losses, losses_out)
    write_json(metrics, out)  # last: it marks the stage done
    print(f"wrote {out} ({args.dataset} cell on {args.eval_on}'s {len(test)} test windows: mse {metrics['mse']:.4g})")


def cmd_evaluate(args):
    """Any saved model (a run's model.pt) on any processed dataset of the same frame shape: test
    metrics, per-window losses and example predictions (OpenSTL's tools/test.py)."""
    from nuwa.evaluate import examples_dataset
    from nuwa.io import DataFileError, load_checkpoint, write_json, write_netcdf

    params = _params(args, uses_torch=True, dataset=args.dataset)
    out = Path(args.out_dir)
    _check_files({"--params": args.params, "--checkpoint": args.checkpoint,
                  "--data": args.data or grid.PROCESSED.format(dataset=args.dataset), "--train-data": args.train_data},
                 {f"--out-dir {name}": out / name
                  for name in ("test_losses.nc", "metrics.json", *(("examples.nc",) if args.examples else ()))})
    payload = load_checkpoint(args.checkpoint)
    missing = [key for key in ("state_dict", "backbone", "dataset") if key not in payload]
    if missing:
        raise DataFileError(f"{args.checkpoint}: not a model file written by `nuwa train` (missing "
                            f"{', '.join(missing)})")
    trained_name = str(payload["dataset"])
    if trained_name not in params["datasets"]:
        raise DataFileError(f"{args.checkpoint}: trained on dataset {trained_name!r}, which has no entry in "
                            f"{args.params} (its frames and normalisation are needed)")
    config = params["datasets"][args.dataset]
    factor = int(payload.get("input_factor", 1))
    metrics, examples, losses, series, test = score_checkpoint(
        args.checkpoint, payload["backbone"], params["datasets"][trained_name],
        args.train_data or grid.PROCESSED.format(dataset=trained_name),
        args.data or grid.PROCESSED.format(dataset=args.dataset), config, factor, params["evaluation"]["fss_scales"],
        example_count=args.examples, attrs={"dataset": args.dataset, "checkpoint": str(args.checkpoint),
                                            "window_stride": int(config["window_stride"])},
        names=(trained_name, args.dataset))
    metrics.update({"checkpoint": str(args.checkpoint), "dataset": args.dataset, "trained_on": trained_name,
                    "variant": str(payload.get("variant", "")), "seed": payload.get("seed"),
                    "input_factor": factor, "split": "test", "normalised_with": trained_name,
                    "never_observed_masked": never_observed_masked(series)})
    write_netcdf(losses, out / "test_losses.nc")
    if args.examples:
        write_netcdf(examples_dataset(examples, series, {"dataset": args.dataset, "checkpoint": str(args.checkpoint)}),
                     out / "examples.nc")
    write_json(metrics, out / "metrics.json")
    print(f"wrote {out} ({args.checkpoint} on {args.dataset}'s {len(test)} test windows: mse {metrics['mse']:.4g}, "
          f"ssim {metrics['ssim']:.4f})")


def never_observed_masked(series) -> bool:
    """Whether a metrics.json's scores leave never-observed pixels out (the masked conventions,
    nuwa.metrics.conventions): one flag per run, the conventions' text stated once, under the
    summary table (results/tables/summary.md) and in the README."""
    return getattr(series, "observed", None) is not None


def cmd_baseline(args):
    from nuwa.baselines import normalised_forecaster
    from nuwa.evaluate import evaluate_forecaster
    from nuwa.io import DataFileError, write_json, write_netcdf
    from nuwa.windows import select_dataset

    params = _params(args, "baseline", uses_torch=True, dataset=args.dataset, task=args.task, baseline=args.baseline)
    config = params["datasets"][args.dataset]
    data = args.data or grid.PROCESSED.format(dataset=args.dataset)
    out = args.out or grid.BASELINE.format(dataset=args.dataset, task=args.task, baseline=args.baseline)
    losses_out = args.losses_out or grid.BASELINE_LOSSES.format(dataset=args.dataset, task=args.task,
                                                               baseline=args.baseline)
    _check_files({"--params": args.params, "--data": data}, {"--out": out, "--losses-out": losses_out})
    series = _series(data, params, args.dataset)
    test = select_dataset(series, config, "test")
    if len(test) == 0:  # a file ingested with other settings (one made before ingest recorded them)
        from nuwa.windows import SPLIT_CODES

        frames = int((series.split == SPLIT_CODES["test"]).sum())
        need = (config["input_frames"], config["output_frames"])
        raise DataFileError(f"{data}: its test split has {frames} frames, no window of input_frames + output_frames "
                            f"= {need[0]} + {need[1]} = {sum(need)} consecutive frames (datasets.{args.dataset}): "
                            "ingest the file again with these params (nuwa ingest says which settings leave a split "
                            "without a window)")
    factor = grid.task_factor(params, args.task)  # super-resolution: the baseline sees the coarsened inputs
    try:
        forecaster = normalised_forecaster(args.baseline, series, config["output_frames"], input_factor=factor)
    except ValueError as exc:  # a baseline this dataset's field cannot take
        raise ValueError(f"dataset {args.dataset!r}: {exc}; remove {args.baseline!r} from grid.baselines for "
                         "it") from None
    metrics, _, losses = evaluate_forecaster(forecaster, test, config["csi_thresholds"],
                                             fss_scales=params["evaluation"]["fss_scales"], input_factor=factor,
                                             attrs={"dataset": args.dataset, "task": args.task,
                                                    "baseline": args.baseline,
                                                    "window_stride": int(config["window_stride"])})
    metrics.update({"dataset": args.dataset, "task": args.task, "input_factor": factor, "baseline": args.baseline,
                    "split": "test",
                    **forecaster.summary(), "never_observed_masked": never_observed_masked(series)})
    write_netcdf(losses, losses_out)
    write_json(metrics, out)  # last: it marks the stage done
    print(f"wrote {out} (test mse {metrics['mse']:.4g})")


def cmd_tables(args):
    import matplotlib.pyplot as plt
    import pandas as pd

    from nuwa import paper
    from nuwa.compare import lead_time_table
    from nuwa.figures import scarcity_figure
    from nuwa.io import (DataFileError, check_identity, open_netcdf, read_json, save_figure, write_csv, write_json,
                         write_text)
    from nuwa.metrics import conventions
    from nuwa.tables import (comparison_table, compact_metrics, lead_time_curves, loss_curves, read_metrics,
                             summarise, to_markdown)

    from nuwa.stages import input_files

    params = _params(args, "tables")
    folder = Path(args.out_csv or grid.SUMMARY_CSV).parent  # the paper's tables go beside the summary
    outputs = {"--out-csv": args.out_csv or grid.SUMMARY_CSV, "--out-md": args.out_md or grid.SUMMARY_MD,
               "--out-comparisons": args.out_comparisons or grid.COMPARISONS_CSV,
               "--out-lead-time": args.out_lead_time or grid.LEAD_TIME_CSV,
               "--out-scarcity": args.out_scarcity or grid.SCARCITY_FIGURE,
               "--out-loss-plot": args.out_loss_plot or grid.LOSS_PLOT,
               "--out-lead-time-plot": args.out_lead_time_plot or grid.LEAD_TIME_PLOT,
               **{f"--out-csv folder's {Path(path).name}": folder / Path(path).name
                  for path in (*(grid.PAPER_TABLE.format(name=name, extension=extension) for name in paper.TABLES
                                 for extension in ("csv", "md")), grid.PAPER_VS_OURS)}}
    _check_files({"--params": args.params, **{f"the {name} input": paths
                                               for name, paths in input_files("tables", params, {}).items()}},
                 outputs, emptied={"--out-metrics": args.out_metrics or grid.METRICS_DIR})
    settings = params["evaluation"]
    records, losses, histories = [], {}, {}
    cells = every_cell = grid.train_cells(params)
    if args.finished_only:  # a run is finished once its metrics.json, written last, exists
        cells = [cell for cell in every_cell if Path(cell.file("metrics.json")).exists()]
        if not cells:
            raise DataFileError(f"no training run of the grid has finished (no {grid.RUN_DIR}/metrics.json): "
                                "no table to build")
    unfinished = len(every_cell) - len(cells)
    for cell in cells:
        metrics = read_metrics(cell.file("metrics.json"))  # every metric a finite number (nuwa.tables)
        check_identity(cell.file("metrics.json"), metrics, {axis: getattr(cell, axis) for axis in grid.AXES}, "key",
                       "; rerun the train stage of that cell", partial=True)
        key = tuple(getattr(cell, axis) for axis in grid.AXES)
        records.append({**{axis: getattr(cell, axis) for axis in grid.AXES},
                        **{k: v for k, v in metrics.items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in grid.AXES}})
        losses[key] = open_netcdf(cell.file("test_losses.nc"), variables=("mse", "mae", "target_mean", "target_max"),
                                  expect={"dataset": cell.dataset, "backbone": cell.backbone, "variant": cell.variant,
                                          "seed": cell.seed}, hint="; rerun the train stage of that cell",
                                  partial=True)
        histories[key] = pd.read_csv(cell.file("history.csv"))
    datasets, tasks, names = params["grid"]["datasets"], params["grid"]["tasks"], params["grid"]["baselines"]
    # a grid still running may not have scored every baseline yet: those it has are used
    scored = [(d, t, name) for d in datasets for t in tasks for name in names
              if not args.finished_only or Path(grid.BASELINE.format(dataset=d, task=t, baseline=name)).exists()]
    baselines = {(d, t): {} for d in datasets for t in tasks}
    for d, t, name in scored:
        baselines[d, t][name] = read_json(grid.BASELINE.format(dataset=d, task=t, baseline=name))
        check_identity(grid.BASELINE.format(dataset=d, task=t, baseline=name), baselines[d, t][name],
                       {"dataset": d, "task": t, "baseline": name}, "key", "; rerun the baseline stage",
                       partial=True)
    methods = {name: entry["method"] for name, entry in params["variants"].items()}
    summary = summarise(records, baselines, methods)
    blocks = {d: block_length(settings, params["datasets"][d]) for d in datasets}
    comparisons = comparison_table(losses, settings["comparisons"], blocks, confidence=settings["confidence"],
                                   resamples=settings["resamples"], extreme_quantile=settings["extreme_quantile"])
    comparisons = comparisons.drop(columns=PER_SEED, errors="ignore")
    # a baseline's row: its name as the backbone, '-' for the axes it has no value of
    by_run = {**losses, **{(d, t, "-", name, "-", "-"): open_netcdf(grid.BASELINE_LOSSES.format(dataset=d, task=t,
                                                                                               baseline=name),
                                                                    variables=("mse", "mae"),
                                                                    expect={"dataset": d, "task": t, "baseline": name},
                                                                    hint="; rerun the baseline stage", partial=True)
                           for d, t, name in scored}}
    lead_time = lead_time_table(by_run)
    keys = pd.DataFrame(lead_time["key"].tolist(), columns=list(grid.AXES), index=lead_time.index)
    lead_time = pd.concat([keys, lead_time.drop(columns="key")], axis=1)
    write_csv(summary, args.out_csv or grid.SUMMARY_CSV)
    write_csv(comparisons, args.out_comparisons or grid.COMPARISONS_CSV)
    write_csv(lead_time, args.out_lead_time or grid.LEAD_TIME_CSV)
    masked = any(params["datasets"][d].get("never_observed") == "mask" for d in datasets)
    markdown = to_markdown(summary, conventions(masked), comparisons)
    if unfinished:  # said under the title, where a reader of a partial table looks first
        title, rest = markdown.split("\n", 1)
        markdown = (f"{title}\n\n**Built from {len(cells)} of {len(cells) + unfinished} training runs:** the other "
                    f"{unfinished} had not finished (`nuwa tables --finished-only`).\n{rest}")
    write_text(markdown, args.out_md or grid.SUMMARY_MD)
    # what DVC compares and draws (git-versioned, so `dvc metrics diff` / `dvc plots diff` reach past commits)
    cell_rows, baseline_rows = compact_metrics(summary, comparisons)
    metrics_folder = Path(args.out_metrics or grid.METRICS_DIR)
    # one file per row of this grid: none left from another grid (DVC empties the folder itself, Snakemake does not)
    stale = [path for path in metrics_folder.rglob("*") if path.is_file()]
    if any(path.suffix != ".json" for path in stale):
        raise DataFileError(f"{metrics_folder}: holds files other than the metrics JSON this stage writes; "
                            "give --out-metrics a folder of its own")
    for path in stale:
        path.unlink()
    for key, values in cell_rows.items():
        write_json(values, metrics_folder / grid.CELL_METRICS.format(**dict(zip(grid.AXES, key))))
    for (dataset, task, name), values in baseline_rows.items():
        write_json(values, metrics_folder / grid.BASELINE_METRICS.format(dataset=dataset, task=task, baseline=name))
    write_csv(loss_curves(histories), args.out_loss_plot or grid.LOSS_PLOT)
    write_csv(lead_time_curves(lead_time), args.out_lead_time_plot or grid.LEAD_TIME_PLOT)
    # the paper's tables in its layout, and its claims beside ours, in the summary's folder
    transfers = transfer_comparisons(params, settings, finished_only=args.finished_only)
    for name, (build, title, empty) in paper.TABLES.items():
        part, grid_table = build(transfers if name == "generalisation" else comparisons, params["tasks"])
        write_csv(part, folder / Path(grid.PAPER_TABLE.format(name=name, extension="csv")).name)
        write_text(paper.markdown_grid(grid_table, title, paper.HOW_TO_READ, empty),
                   folder / Path(grid.PAPER_TABLE.format(name=name, extension="md")).name)
    write_text(paper.paper_vs_ours(comparisons, summary, params["datasets"], params["tasks"]),
               folder / Path(grid.PAPER_VS_OURS).name)
    figure = scarcity_figure(comparisons)
    save_figure(figure, args.out_scarcity or grid.SCARCITY_FIGURE, dpi=110)
    plt.close(figure)
    print(f"wrote {args.out_csv or grid.SUMMARY_CSV} ({len(summary)} rows) and {len(comparisons)} comparison(s)"
          + (f" from {len(cells)} of {len(cells) + unfinished} training runs ({unfinished} not finished)"
             if unfinished else ""))


PER_SEED = ["seeds", "seed_differences"]  # comparison_table's per-seed detail, kept out of the tables


def block_length(settings: dict, config: dict) -> int:
    """The bootstrap block of a dataset's test windows: evaluation.block_windows, or by default the
    number of windows that share a frame (nuwa.compare.default_block)."""
    from nuwa.compare import default_block

    return settings["block_windows"] or default_block(config["input_frames"], config["output_frames"],
                                                      config["window_stride"])


def transfer_comparisons(params, settings, finished_only: bool = False):
    """The paired comparisons of the cells evaluated on other datasets (grid.eval_on): their
    ``dataset`` is "trained → evaluated", their windows the evaluated dataset's test windows.
    ``finished_only``: the evaluations that exist (a grid still running)."""
    from dataclasses import asdict

    from nuwa.io import open_netcdf
    from nuwa.tables import comparison_table

    losses, blocks = {}, {}
    for pair in params["grid"]["eval_on"]:
        label = f"{pair['train']} → {pair['test']}"
        blocks[label] = block_length(settings, params["datasets"][pair["test"]])
        for cell in grid.train_cells(params):
            if cell.dataset == pair["train"]:
                path = grid.TRANSFER_DIR.format(eval_on=pair["test"], **asdict(cell)) + "/test_losses.nc"
                if finished_only and not Path(path).exists():
                    continue
                key = (label, *(getattr(cell, axis) for axis in grid.AXES if axis != "dataset"))
                losses[key] = open_netcdf(path, variables=("mse", "mae", "target_mean", "target_max"),
                                          expect={"dataset": cell.dataset, "eval_on": pair["test"],
                                                  "backbone": cell.backbone, "variant": cell.variant,
                                                  "seed": str(cell.seed)}, hint="; rerun the transfer stage",
                                          partial=True)
    return comparison_table(losses, settings["comparisons"], blocks, confidence=settings["confidence"],
                            resamples=settings["resamples"],
                            extreme_quantile=settings["extreme_quantile"]).drop(columns=PER_SEED, errors="ignore")


def cmd_figures(args):
    from itertools import product

    import matplotlib.pyplot as plt
    import pandas as pd

    from nuwa.figures import (comparison_figure, learning_curves_figure, lead_time_figure, prediction_animation,
                              prediction_figure)
    from nuwa.io import DataFileError, open_netcdf, save_animation, save_figure
    from nuwa.stages import figure_bank_variants, input_files

    params = _params(args, "figures", dataset=args.dataset)
    outputs = {"--out-predictions": args.out_predictions or grid.PREDICTION_FIGURE.format(dataset=args.dataset),
               "--out-animation": args.out_animation or grid.PREDICTION_ANIMATION.format(dataset=args.dataset),
               "--out-learning-curves": (args.out_learning_curves
                                         or grid.LEARNING_CURVES_FIGURE.format(dataset=args.dataset)),
               "--out-saliency": args.out_saliency or grid.SALIENCY_FIGURE.format(dataset=args.dataset),
               "--out-comparisons": args.out_comparisons or grid.COMPARISON_FIGURE.format(dataset=args.dataset),
               "--out-lead-time": args.out_lead_time or grid.LEAD_TIME_FIGURE.format(dataset=args.dataset)}
    _check_files({"--params": args.params, **{f"the {name} input": paths for name, paths
                                               in input_files("figures", params, {"dataset": args.dataset}).items()}},
                 outputs)
    # the figures show one setting: the first task, the largest train percent (grid.shown_value)
    task, percent, seed = (grid.shown_value(params, axis) for axis in ("task", "train_percent", "seed"))
    examples = {}
    for backbone in params["grid"]["backbones"]:
        for variant in params["grid"]["variants"]:
            path = grid.Cell(args.dataset, task, percent, backbone, variant, seed).file("examples.nc")
            examples[backbone, variant] = open_netcdf(
                path, variables=("inputs", "truth", "prediction", "source_index"),
                expect={"dataset": args.dataset, "task": task, "train_percent": percent, "backbone": backbone,
                        "variant": variant, "seed": seed}, hint="; rerun the train stage of that cell",
                partial=True)
    title = f"{args.dataset} ({task}, {percent} %, seed {seed})"
    # the prediction figure first: its file is the stage's first output (tests/reliability)
    figure = prediction_figure(examples, title)
    save_figure(figure, outputs["--out-predictions"], dpi=110)
    plt.close(figure)
    figure, animation = prediction_animation(examples, title)
    save_animation(animation, outputs["--out-animation"], params["figures"]["animation_frame_ms"])
    plt.close(figure)
    histories = {}  # every run of the dataset: (task, train_percent, backbone, variant, seed) -> history
    for values in product(*(grid.axis_values(params, axis) for axis in list(grid.AXES)[1:])):
        path = Path(grid.Cell(args.dataset, *values).file("history.csv"))
        if not path.exists():
            raise DataFileError(f"{path}: file not found (the train stage writes it)")
        histories[values] = pd.read_csv(path)
    figure = learning_curves_figure(histories, args.dataset)
    save_figure(figure, args.out_learning_curves or grid.LEARNING_CURVES_FIGURE.format(dataset=args.dataset),
                dpi=110)
    plt.close(figure)
    # the saliency figure outlines the mask a bank used: the first saliency variant's, if any (the
    # figures stage's input, nuwa.stages)
    bank = next((grid.BANK.format(dataset=args.dataset, train_percent=percent, variant=variant, seed=seed)
                 for variant in figure_bank_variants(params)), None)
    show_mask(grid.SALIENCY.format(dataset=args.dataset), None, outputs["--out-saliency"],
              data=grid.PROCESSED.format(dataset=args.dataset), bank=bank, dataset=args.dataset)
    # the paired differences with their intervals, and the error by lead time (runs and baselines), of that setting
    comparisons = pd.read_csv(grid.COMPARISONS_CSV, keep_default_na=False, na_values=[""],
                              dtype={"train_percent": str})
    comparisons = comparisons[(comparisons["task"] == task) & (comparisons["train_percent"] == str(percent))]
    figure = comparison_figure(comparisons, args.dataset)
    save_figure(figure, outputs["--out-comparisons"], dpi=110)
    plt.close(figure)
    lead_time = pd.read_csv(grid.LEAD_TIME_CSV, dtype={"seed": str, "train_percent": str})
    lead_time = lead_time[(lead_time["task"] == task) & lead_time["train_percent"].isin([str(percent), "-"])]
    figure = lead_time_figure(lead_time, args.dataset, lead_time_metrics(lead_time, args.dataset))
    save_figure(figure, outputs["--out-lead-time"], dpi=110)
    plt.close(figure)
    print(f"wrote figures for {args.dataset}")


def lead_time_metrics(lead_time, dataset: str) -> list[str]:
    """What the lead-time figure shows: MSE, and for a thresholded field the CSI at its lowest
    threshold and the FSS at that threshold and the largest scale (the columns lead_time.csv has)."""
    rows = lead_time[lead_time["dataset"] == dataset]
    scored = [c for c in rows.columns if c.startswith(("csi_", "fss_")) and rows[c].notna().any()]
    csi = [c for c in scored if c.startswith("csi_")]
    if not csi:
        return ["mse"]
    lowest = min(csi, key=lambda c: float(c.split("_", 1)[1]))
    threshold = lowest.split("_", 1)[1]
    fss = [c for c in scored if c.startswith(f"fss_{threshold}_")]
    return ["mse", lowest, *([max(fss, key=lambda c: int(c.rsplit("_", 1)[1]))] if fss else [])]


def show_mask(saliency_path, sample, out, data=None, bank=None, copy=0, dataset=None):
    """Write the PNG of one window (``sample``: its start index; None: the first training window)
    with its importance and, from ``bank``, the environmental patches that bank used. Every file
    must be of ``dataset`` (default: the saliency file's)."""
    import matplotlib.pyplot as plt
    import numpy as np

    from nuwa.figures import mask_figure
    from nuwa.io import open_netcdf, save_figure
    from nuwa.windows import load_series

    saliency = open_netcdf(saliency_path, variables=("importance",), expect={"nuwa_dataset": dataset},
                           hint="; rerun the saliency stage")
    dataset = dataset or str(saliency.attrs.get("nuwa_dataset", ""))
    data = data or grid.PROCESSED.format(dataset=dataset)
    bank_data = (open_netcdf(bank, variables=("causal", "source_index", "copy"), expect={"nuwa_dataset": dataset},
                             hint=f" (the bank of another dataset than {saliency_path}'s)") if bank else None)
    if sample is None:  # the first window the bank augmented (a train_percents subset holds recent ones only)
        samples = np.asarray(saliency["sample"].values)
        if bank_data is not None:
            augmented = np.asarray(bank_data["source_index"].values)[np.asarray(bank_data["copy"].values) == copy]
            samples = np.intersect1d(samples, augmented) if np.intersect1d(samples, augmented).size else samples
        sample = int(samples[0])
    figure = mask_figure(saliency, load_series(data, dataset or None).field, sample, bank=bank_data, copy=copy,
                         source=str(saliency_path), bank_source=str(bank) if bank else None)
    save_figure(figure, out, dpi=110)
    plt.close(figure)


def cmd_show_mask(args):
    out = args.out or f"mask_{Path(args.saliency).stem}_{args.sample}.png"
    _check_files({"SALIENCY": args.saliency, "--bank": args.bank, "--data": args.data}, {"--out": out})
    show_mask(args.saliency, args.sample, out, data=args.data, bank=args.bank, copy=args.copy)
    print(f"wrote {out}")


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
    out = args.out or f"results/bench/{args.name}.csv"
    _check_files({}, {"--out": out})
    rows = bench_module(args.name).run(args, lambda line: print(line, file=sys.stderr))
    frame = rows_frame(rows)
    frame.to_csv(sys.stdout, index=False, float_format="%.6g")
    write_csv(frame, out)
    print(f"wrote {out}", file=sys.stderr)


def add_cell_options(command, what: str) -> None:
    """One option per grid axis, the cell's (--dataset comes with every stage)."""
    for axis, spec in grid.AXES.items():
        if axis != "dataset":
            command.add_argument(grid.option(axis), dest=axis, type=spec.type, required=spec.default is None,
                                 default=spec.default, help=f"{what} {axis}: a value of {spec.values}"
                                 + (f" (default: {spec.default})" if spec.default is not None else ""))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nuwa", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="<stage>",
                                help="a pipeline stage or a tool (`nuwa <stage> --help`)")

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
    c = sub.add_parser("params", help="print (or --out: write) the merged parameters of a params or experiment file",
                       description="An experiment file (extends: ../params.yaml) merged with the file it extends and "
                                   "validated, as one YAML file: e.g. `nuwa params experiments/table1_cpu.yaml > "
                                   "params.yaml` for `dvc repro`, which reads params.yaml only")
    c.set_defaults(func=cmd_params)
    c.add_argument("file", help="a params or experiment file")
    c.add_argument("--out", help="write it here instead of printing it (e.g. params.yaml)")
    c = sub.add_parser("inspect", help="what a data file (or a glob of them) holds, and a datasets: entry that "
                       "ingests it (checked as `nuwa validate` checks params)",
                       description="Describe a data source (variables, dimensions, time axis, grid, missing values) "
                                   "and print a ready `datasets:` entry for params.yaml: kind gridded for NetCDF/Zarr, "
                                   "kind radar for radar files pysteps reads (KNMI/ODIM HDF5, MeteoSwiss GIF, FMI PGM, "
                                   "BoM NetCDF). The entry is validated in-process against the params schema; exit "
                                   "status 1 if it does not pass")
    c.set_defaults(func=cmd_inspect)
    c.add_argument("source", help="a file, a glob of files (quote it: 'data/era5/*.nc'), a folder or a Zarr store")
    c.add_argument("--name", help="the entry's name (default: from the file names)")
    c.add_argument("--params", help="a params file: the name avoids its datasets and the entry is also validated "
                                    "inside it (default: the entry alone)")
    c.add_argument("--no-scan", action="store_true", help="metadata only: skip the pass over the values (NaN counts, "
                                                          "CSI thresholds)")
    c.add_argument("--entry-only", action="store_true", help="print the entry only (YAML), e.g. to append it to a file")
    c = sub.add_parser("dvc-yaml", help="print (or --out: write) dvc.yaml, generated from the stage table",
                       description="dvc.yaml generated from nuwa/stages.py (the table Snakemake's rules read too)")
    c.set_defaults(func=cmd_dvc_yaml)
    c.add_argument("--out", help="write it here (e.g. dvc.yaml) instead of printing it")
    c = sub.add_parser("plots-page", help="print (or --out: write) the page `dvc plots show` fills, with Vega "
                       "inlined (.dvc/plots/page.html)",
                       description="The HTML template of `dvc plots show` (.dvc/config plots.html_template) with "
                                   "Vega, Vega-Lite and vega-embed inlined from vl-convert-python: the page draws "
                                   "offline")
    c.set_defaults(func=cmd_plots_page)
    c.add_argument("--out", help="write it here (.dvc/plots/page.html) instead of printing it")
    add("datasets", cmd_datasets, "list params.yaml's datasets and registered kinds, and whether source files are "
        "present (exit 1 if a grid dataset's files are missing)", dataset=False)
    c = add("ingest", cmd_ingest, "generate or read a dataset into data/processed/{dataset}.nc")
    c.add_argument("--out", help=f"the processed file (default {grid.PROCESSED})")
    c = add("pretrain", cmd_pretrain, "train the upstream ViT to reconstruct its input (training split only)")
    c.add_argument("--upstream", help="an entry of params upstreams (an ablation's ViT; default: the pipeline's)")
    c.add_argument("--data", help=f"the processed dataset (default {grid.PROCESSED})")
    c.add_argument("--model-out", help=f"the ViT (default {grid.UPSTREAM_MODEL}; an ablation's: "
                   f"{grid.ABLATION_UPSTREAM_MODEL})")
    c.add_argument("--history-out", help="its loss per step, CSV (default: beside the model)")
    c = add("saliency", cmd_saliency, "attention importance of every patch of every training window (the bank "
            "variants turn it into masks)")
    c.add_argument("--upstream", help="an entry of params upstreams (an ablation's ViT; default: the pipeline's)")
    c.add_argument("--data", help=f"the processed dataset (default {grid.PROCESSED})")
    c.add_argument("--model", help=f"the upstream ViT (default {grid.UPSTREAM_MODEL})")
    c.add_argument("--out", help=f"the importance file (default {grid.SALIENCY}; an ablation's: "
                   f"{grid.ABLATION_SALIENCY})")
    c = add("diagnostics", cmd_diagnostics, "what the saliency calls environmental: upstream ViTs pretrained per "
            "objective and seed, their masks scored against the field's anomaly and change, and across seeds; "
            "and the masks the banks use (the saliency file)")
    c.add_argument("--data", help=f"the processed dataset (default {grid.PROCESSED})")
    c.add_argument("--saliency", help=f"the saliency file whose masks the banks use (default {grid.SALIENCY})")
    c.add_argument("--out", help=f"the table, one row per objective and layers (default {grid.DIAGNOSTICS})")
    c.add_argument("--out-per-seed", help=f"the same per pretraining seed (default {grid.DIAGNOSTICS_PER_SEED})")
    c.add_argument("--out-figure", help=f"PNG (default {grid.DIAGNOSTICS_FIGURE})")
    c = add("bank", cmd_bank, "DistriXplorer bank of augmented training windows for one variant and seed")
    c.add_argument("--train-percent", dest="train_percent", type=int, default=100,
                   help="the share of the training windows the bank is built from (grid.train_percents; default "
                        "100; which windows: train.subset)")
    c.add_argument("--variant", required=True, help="an entry of params variants (its method and knobs)")
    c.add_argument("--seed", type=int, required=True, help="the training seed the bank is drawn for")
    c.add_argument("--data", help=f"the processed dataset (default {grid.PROCESSED})")
    c.add_argument("--saliency", help=f"the pipeline's importance file (default {grid.SALIENCY}; a variant that names "
                   "an ablation upstream reads that one's)")
    c.add_argument("--out", help=f"the bank (default {grid.BANK})")
    c = add("train", cmd_train, "train one backbone for one variant and seed; evaluate once on the test split")
    add_cell_options(c, "a value of")
    c.add_argument("--data", help=f"the processed dataset (default {grid.PROCESSED})")
    c.add_argument("--bank", help=f"the variant's bank (default {grid.BANK})")
    c.add_argument("--upstream", help="upstream ViT model.pt, read when the backbone entry sets init_from_upstream")
    c.add_argument("--out-dir", help=f"the run folder (default {grid.RUN_DIR})")
    c.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto (default): cuda (cuda:LOCAL_RANK under torchrun) when available, else cpu. Several "
                        "GPUs: torchrun --standalone --nnodes 1 --nproc_per_node N -m nuwa train ...")
    c = add("baseline", cmd_baseline, "a reference forecast's metrics and per-window losses on the test split")
    c.add_argument("--task", default="forecast", help="an entry of params tasks (default forecast; a "
                   "super-resolution task scores the baseline from coarsened inputs at full size)")
    c.add_argument("--baseline", required=True, choices=("persistence", "optical_flow"),
                   help="persistence (the last input frame) or optical_flow (pysteps: Lucas-Kanade motion, "
                        "semi-Lagrangian extrapolation; each channel along its own motion)")
    c.add_argument("--data", help=f"the processed dataset (default {grid.PROCESSED})")
    c.add_argument("--out", help=f"metrics JSON (default {grid.BASELINE})")
    c.add_argument("--losses-out", help=f"per-window test losses, NetCDF (default {grid.BASELINE_LOSSES})")
    c = add("transfer", cmd_transfer, "evaluate a trained cell on another dataset's test split, without retraining "
            "(grid.eval_on; normalised with the training dataset's statistics)")
    add_cell_options(c, "the trained cell's")
    c.add_argument("--eval-on", dest="eval_on", required=True, help="the dataset whose test split it is scored on")
    c.add_argument("--data", help="that dataset's processed file (default: its contract path)")
    c.add_argument("--train-data", help="the training dataset's processed file: its normalisation (default: contract)")
    c.add_argument("--model", help="the cell's model.pt (default: its run folder)")
    c.add_argument("--out", help="metrics.json (default: <run folder>/eval_on/<dataset>/metrics.json)")
    c.add_argument("--losses-out", help="per-window test losses (default: beside --out)")
    c = add("evaluate", cmd_evaluate, "score a saved model (a run's model.pt) on the test split of any processed "
            "dataset of the same frame shape: metrics.json, test_losses.nc and example predictions")
    c.add_argument("--checkpoint", required=True, help="the model file (results/runs/.../model.pt)")
    c.add_argument("--data", help="the dataset's processed file (default: data/processed/<dataset>.nc)")
    c.add_argument("--train-data", help="the processed file of the dataset the model was trained on, whose "
                   "normalisation its inputs need (default: its contract path)")
    c.add_argument("--out-dir", required=True, help="where metrics.json, test_losses.nc and examples.nc go")
    c.add_argument("--examples", type=int, default=4, help="test windows kept with their predictions (default: 4)")
    c = add("tables", cmd_tables, "summary table over the grid (mean ± std over seeds, baselines, skill) and the "
            "paired comparisons (intervals over seeds and test windows, verdicts)", dataset=False)
    c.add_argument("--out-csv", help=f"the summary (default {grid.SUMMARY_CSV}); the paper's tables go beside it")
    c.add_argument("--out-md", help=f"the summary with the comparisons, Markdown (default {grid.SUMMARY_MD})")
    c.add_argument("--out-comparisons", help=f"comparisons CSV (default {grid.COMPARISONS_CSV})")
    c.add_argument("--out-lead-time", help=f"per-lead-time mse/mae CSV (default {grid.LEAD_TIME_CSV})")
    c.add_argument("--out-scarcity", help=f"the comparisons against the train percent, PNG (default {grid.SCARCITY_FIGURE})")
    c.add_argument("--out-metrics", help=f"folder of the few metrics per row that DVC compares, one JSON per row "
                   f"(default {grid.METRICS_DIR}; its JSON files from earlier runs are removed)")
    c.add_argument("--out-loss-plot", help=f"train and validation loss per variant, CSV (default {grid.LOSS_PLOT})")
    c.add_argument("--out-lead-time-plot", help=f"test mse/mae per lead time per variant, CSV (default "
                   f"{grid.LEAD_TIME_PLOT})")
    c.add_argument("--finished-only", action="store_true",
                   help="build the tables from the training runs that have finished (their metrics.json exists) "
                        "and say how many were left out: a grid still running, published as it goes (default: off; "
                        "the pipeline's tables stage reads every run)")
    c = add("figures", cmd_figures, "predictions of every backbone and variant with their errors (PNG and GIF), "
            "learning curves, saliency overlay, paired comparisons and lead-time curves for one dataset")
    c.add_argument("--out-predictions", help=f"PNG (default {grid.PREDICTION_FIGURE})")
    c.add_argument("--out-animation", help=f"GIF (default {grid.PREDICTION_ANIMATION})")
    c.add_argument("--out-learning-curves", help=f"PNG (default {grid.LEARNING_CURVES_FIGURE})")
    c.add_argument("--out-saliency", help=f"PNG (default {grid.SALIENCY_FIGURE})")
    c.add_argument("--out-comparisons", help=f"PNG (default {grid.COMPARISON_FIGURE})")
    c.add_argument("--out-lead-time", help=f"PNG (default {grid.LEAD_TIME_FIGURE})")
    from nuwa.bench.backbones import parse_shape

    c = sub.add_parser("backbones", help="CSV name,params,flops of every registered backbone",
                       description="CSV (name,params,flops) of every registered backbone at a size and input "
                                   "shape; FLOPs from torch's FLOP counter, one sample, one forward pass")
    c.set_defaults(func=cmd_backbones)
    c.add_argument("--size", choices=("small", "reference"), default="small",
                   help="small (the CPU default) or reference (the published sizes); default small")
    c.add_argument("--in-shape", type=parse_shape, default=(4, 2, 32, 32), help="T,C,H,W (default 4,2,32,32: TaxiBJ)")
    c.add_argument("--out-frames", type=int, default=4, help="output frames (default 4)")
    c.add_argument("--scale", type=int, default=1, help="spatial upsampling factor of the output (default 1)")
    c.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    c = sub.add_parser("bench", help="benchmarks (CSV to stdout and results/bench/NAME.csv)",
                       description="Run a benchmark. Output rows: benchmark,case,value,unit,reference,"
                                   "reference_value,ratio; ratio = value / reference_value, both measured in "
                                   "this run on the same inputs, oriented so that bigger is better (a time "
                                   "is reported as reference time / our time). `nuwa bench NAME --help` "
                                   "lists a benchmark's options.")
    benches = c.add_subparsers(dest="name", required=True, metavar="NAME",
                               help="the benchmark (`nuwa bench NAME --help` lists its options)")
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
    c.add_argument("--sample", type=int, required=True, help="window start index (the file's 'sample' coordinate: "
                   "training windows only, and starts step by the dataset's window_stride)")
    c.add_argument("--bank", help=f"{grid.BANK}: outline the environmental patches this bank used (default: "
                                  "importance only)")
    c.add_argument("--copy", type=int, default=0, help="which augmented copy of the window (default 0)")
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
            # the writers (nuwa.io.atomic_path) name their output themselves; any other file
            # system error (a file read, a folder listed) is one line naming its file too
            reason = space_problem(exc)
            if reason is not None:
                message = f"{exc.filename or 'a file'}: cannot write: {reason}"
            elif exc.filename is not None:
                message = f"{exc.filename}: {exc.strerror or exc}"
            else:
                message = f"{type(exc).__name__}: {exc}"
        else:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"nuwa {args.command}: error: {message}", file=sys.stderr)
        return 2
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
