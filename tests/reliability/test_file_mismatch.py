"""Reliability, files that disagree with their params entry: a processed file, an upstream model, a
saliency file, a bank, a run's model file, its examples or test losses made for another dataset,
cell or version of the params entry, given to a stage (by a path option, or found at the path of
another cell). Every stage refuses it in one line naming the file, the field that differs, the
value found and the one expected (exit 2) and writes nothing.

Before: a processed file of another dataset of the same frame shape gave silently wrong baseline
metrics (or, of another shape, a traceback in pretrain); the other files were used as they were
when their tensors fitted. The checks live in the loaders (``nuwa.windows.load_series``,
``nuwa.io.open_netcdf(expect=...)``, ``nuwa.io.load_checkpoint(expect=...)``,
``nuwa.pretrain.load_upstream``), which every stage calls.

The files are made once by the real tiny pipeline, in process (``nuwa.cli.main``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import xarray as xr
import yaml
from conftest import TINY_PARAMS
from conftest import cli_fails_cleanly as fails_cleanly

from nuwa import grid
from nuwa.cli import main
from nuwa.io import params_entry_sha256

OTHER = "glyphs_b"  # a second dataset of the same kind and frame shape: only its files' identity tells


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Two processed datasets; moving_glyphs' upstream model, saliency file, banks and one trained cell."""
    root = tmp_path_factory.mktemp("mismatch")
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["ingest"] = {"scheduler": "threads"}
    params["datasets"][OTHER] = {**params["datasets"]["moving_glyphs"], "seed": 2}
    params["variants"]["nuwa_b"] = {"method": "saliency", "environment_ratio": 0.25}  # same method, other name
    params["backbones"]["vit"] = {"kind": "vit", "size": "small", "init_from_upstream": True,
                                  "hid_T": 16, "N_T": 1, "num_heads": 2, "mlp_ratio": 2.0}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    common = ["--params", str(root / "params.yaml"), "--dataset", "moving_glyphs"]
    for name in ("moving_glyphs", OTHER):
        assert main(["ingest", "--params", str(root / "params.yaml"), "--dataset", name,
                     "--out", str(root / f"{name}.nc")]) == 0
    data = str(root / "moving_glyphs.nc")
    assert main(["pretrain", *common, "--data", data, "--model-out", str(root / "model.pt"),
                 "--history-out", str(root / "history.csv")]) == 0
    assert main(["saliency", *common, "--data", data, "--model", str(root / "model.pt"),
                 "--out", str(root / "saliency.nc")]) == 0
    assert main(["bank", *common, "--variant", "nuwa", "--seed", "0", "--data", data,
                 "--saliency", str(root / "saliency.nc"), "--out", str(root / "nuwa.nc")]) == 0
    for name in ("moving_glyphs", OTHER):  # Ori's (empty) banks
        assert main(["bank", "--params", str(root / "params.yaml"), "--dataset", name, "--variant", "ori",
                     "--seed", "0", "--data", str(root / f"{name}.nc"), "--out", str(root / f"{name}_ori.nc")]) == 0
    assert main(["train", *common, "--backbone", "simvp", "--variant", "ori", "--seed", "0", "--data", data,
                 "--bank", str(root / "moving_glyphs_ori.nc"), "--out-dir", str(root / "run"), "--device", "cpu"]) == 0
    return root


def argv(stage: str, made: Path, out: Path, dataset: str = OTHER, params: Path | None = None, **files) -> list[str]:
    """``stage`` for ``dataset`` with its own processed file unless ``files`` name others."""
    data = str(files.get("data", made / f"{dataset}.nc"))
    common = [stage, "--params", str(params or made / "params.yaml"), "--dataset", dataset]
    cell = ["--backbone", "simvp", "--variant", files.get("variant", "ori"), "--seed", "0"]
    return common + {
        "pretrain": ["--data", data, "--model-out", str(out / "model.pt"), "--history-out", str(out / "history.csv")],
        "saliency": ["--data", data, "--model", str(files.get("model", made / "model.pt")),
                     "--out", str(out / "saliency.nc")],
        "bank": ["--variant", "nuwa", "--seed", "0", "--data", data,
                 "--saliency", str(files.get("saliency", made / "saliency.nc")), "--out", str(out / "bank.nc")],
        "train": [*cell, "--data", data, "--bank", str(files.get("bank", made / f"{dataset}_ori.nc")),
                  *(["--upstream", str(files["upstream"])] if "upstream" in files else []),
                  "--out-dir", str(out), "--device", "cpu"],
        "baseline": ["--baseline", "persistence", "--data", data, "--out", str(out / "persistence.json"),
                     "--losses-out", str(out / "losses.nc")],
        "diagnostics": ["--data", data, "--saliency", str(made / "saliency.nc"), "--out", str(out / "d.csv"),
                        "--out-per-seed", str(out / "p.csv"), "--out-figure", str(out / "d.png")],
        "transfer": [*cell, "--eval-on", files.get("eval_on", OTHER),
                     "--data", str(files.get("data", made / f"{files.get('eval_on', OTHER)}.nc")),
                     "--train-data", str(files.get("train_data", made / f"{dataset}.nc")),
                     "--model", str(files.get("model", made / "run" / "model.pt")),
                     "--out", str(out / "metrics.json"), "--losses-out", str(out / "losses.nc")],
        "evaluate": ["--checkpoint", str(made / "run" / "model.pt"), "--data", data,
                     "--train-data", str(files.get("train_data", made / "moving_glyphs.nc")), "--out-dir", str(out)],
    }[stage]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the processed file ------------------------------------------------------------------------------

DATA_STAGES = ("pretrain", "saliency", "bank", "train", "baseline", "diagnostics", "transfer")


@pytest.mark.parametrize("stage", DATA_STAGES)
def test_processed_file_of_another_dataset_is_refused_by_every_stage(made, tmp_path, capsys, stage):
    """`nuwa baseline --dataset glyphs_b --data moving_glyphs.nc` (before: exit 0, glyphs_b's metrics
    computed on moving_glyphs' frames); likewise every stage that reads a processed file."""
    wrong = made / "moving_glyphs.nc"
    before = digest(wrong)
    out = tmp_path / "out"
    fails_cleanly(argv(stage, made, out, data=wrong), capsys, wrong,
                  f"attribute nuwa_dataset is 'moving_glyphs', expected '{OTHER}': the processed file of another "
                  f"dataset (nuwa ingest --dataset {OTHER} writes {OTHER}'s)", out=out)
    assert digest(wrong) == before


def test_evaluate_names_the_training_data_of_another_dataset(made, tmp_path, capsys):
    wrong = made / f"{OTHER}.nc"  # the model was trained on moving_glyphs: its normalisation is that file's
    out = tmp_path / "out"
    fails_cleanly(argv("evaluate", made, out, train_data=wrong), capsys, wrong,
                  f"attribute nuwa_dataset is '{OTHER}', expected 'moving_glyphs'", out=out)


def changed_params(made: Path, tmp_path: Path, **changes) -> Path:
    params = yaml.safe_load((made / "params.yaml").read_text())
    params["datasets"][OTHER].update(changes)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_processed_file_of_an_older_params_entry_is_refused(made, tmp_path, capsys):
    """The entry changed after ingest (its generator's seed): the file holds other frames."""
    params = changed_params(made, tmp_path, seed=5)
    entry = yaml.safe_load(params.read_text())["datasets"][OTHER]
    with xr.open_dataset(made / f"{OTHER}.nc") as handle:
        recorded = handle.attrs["nuwa_params_sha256"]
    out = tmp_path / "out"
    line = fails_cleanly(argv("baseline", made, out, params=params), capsys, made / f"{OTHER}.nc",
                         f"attribute nuwa_params_sha256 is {recorded[:12]}..., expected "
                         f"{params_entry_sha256(entry)[:12]}... (the SHA-256 of params datasets.{OTHER}): made with "
                         f"another version of that entry; rerun nuwa ingest --dataset {OTHER}", out=out)
    assert recorded != params_entry_sha256(entry), line


def test_processed_file_of_another_grid_names_height_and_width(made, tmp_path, capsys):
    """Before: pretrain built a 32 x 32 model for 16 x 16 frames and failed with a traceback."""
    params = changed_params(made, tmp_path, height=32, width=32)
    out = tmp_path / "out"
    fails_cleanly(argv("pretrain", made, out, params=params), capsys, made / f"{OTHER}.nc",
                  f"field has (y, x) = (16, 16), but datasets.{OTHER} has height 32: made with another version of "
                  f"that entry; rerun nuwa ingest --dataset {OTHER}", out=out)


def old_file(made: Path, path: Path, drop: str, name: str = OTHER) -> Path:
    """``name``'s processed file as written before ingest recorded ``drop`` (an attribute)."""
    with xr.open_dataset(made / f"{name}.nc") as handle:
        dataset = handle.load()
    del dataset.attrs[drop]
    dataset.to_netcdf(path)
    return path


def test_processed_file_without_the_hash_is_accepted_on_name_and_grid(made, tmp_path, capsys):
    """A file made before ingest recorded nuwa_params_sha256: accepted (with a note), but still
    refused when it is another dataset's."""
    old = old_file(made, tmp_path / f"{OTHER}.nc", "nuwa_params_sha256")
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(argv("baseline", made, out, data=old)) == 0
    err = capsys.readouterr().err
    assert (f"nuwa: note: {old}: made before nuwa ingest recorded its params entry (no attribute "
            f"nuwa_params_sha256): only its dataset name and grid were checked against datasets.{OTHER}") in err
    assert (out / "persistence.json").exists()
    old_other = old_file(made, tmp_path / "moving_glyphs.nc", "nuwa_params_sha256", "moving_glyphs")
    out = tmp_path / "out2"
    fails_cleanly(argv("baseline", made, out, data=old_other), capsys, old_other,
                  f"attribute nuwa_dataset is 'moving_glyphs', expected '{OTHER}'", out=out)


def test_file_that_is_not_a_processed_file_is_named(made, tmp_path, capsys):
    bare = old_file(made, tmp_path / "bare.nc", "nuwa_dataset")
    out = tmp_path / "out"
    fails_cleanly(argv("baseline", made, out, data=bare), capsys, bare,
                  f"attribute nuwa_dataset is missing, expected '{OTHER}': not a processed file written by nuwa "
                  f"ingest (nuwa ingest --dataset {OTHER} writes one)", out=out)


# -- model files, saliency files, banks --------------------------------------------------------------

def test_upstream_model_of_another_dataset_stops_saliency(made, tmp_path, capsys):
    """Before: a model of the same frame shape computed glyphs_b's saliency silently."""
    out = tmp_path / "out"
    fails_cleanly(argv("saliency", made, out), capsys, made / "model.pt",
                  f"key dataset is 'moving_glyphs', expected '{OTHER}' (the upstream model of another dataset; "
                  f"nuwa pretrain --dataset {OTHER} writes its own)", out=out)


def test_upstream_model_of_another_dataset_stops_train(made, tmp_path, capsys):
    out = tmp_path / "out"
    args = argv("train", made, out, upstream=made / "model.pt")
    args[args.index("simvp")] = "vit"  # a backbone that starts from the upstream ViT
    fails_cleanly(args, capsys, made / "model.pt",
                  f"key dataset is 'moving_glyphs', expected '{OTHER}' (not the upstream model of {OTHER}; "
                  "nuwa pretrain writes it)", out=out)


def test_upstream_argument_that_is_a_run_model_is_named(made, tmp_path, capsys):
    out = tmp_path / "out"
    args = argv("train", made, out, dataset="moving_glyphs", upstream=made / "run" / "model.pt")
    args[args.index("simvp")] = "vit"
    fails_cleanly(args, capsys, made / "run" / "model.pt", "key kind is missing, expected 'upstream_vit'", out=out)


def test_saliency_file_of_another_dataset_stops_the_bank(made, tmp_path, capsys):
    """Before: refused only because the windows happened to differ ("stale saliency file?")."""
    out = tmp_path / "out"
    fails_cleanly(argv("bank", made, out), capsys, made / "saliency.nc",
                  f"attribute nuwa_dataset is 'moving_glyphs', expected '{OTHER}' (the saliency file of another "
                  "dataset); rerun the saliency stage", out=out)


def test_saliency_file_of_another_dataset_stops_diagnostics(made, tmp_path, capsys):
    """Checked before its minutes of pretraining (before: read after them, checked on windows only)."""
    out = tmp_path / "out"
    fails_cleanly(argv("diagnostics", made, out), capsys, made / "saliency.nc",
                  f"attribute nuwa_dataset is 'moving_glyphs', expected '{OTHER}' (the saliency file of another "
                  "dataset); rerun the saliency stage", out=out)


@pytest.mark.parametrize("case", ["dataset", "variant"])
def test_bank_of_another_dataset_or_variant_stops_training(made, tmp_path, capsys, case):
    """Before: a bank of another dataset of the same shape trained silently on its windows; one of
    another variant of the same method too."""
    out = tmp_path / "out"
    bank = made / ("moving_glyphs_ori.nc" if case == "dataset" else "nuwa.nc")
    if case == "dataset":
        args = argv("train", made, out, bank=bank)
        phrase = f"attribute nuwa_dataset is 'moving_glyphs', expected '{OTHER}'"
    else:
        args = argv("train", made, out, dataset="moving_glyphs", variant="nuwa_b", bank=bank)
        phrase = "attribute variant is 'nuwa', expected 'nuwa_b'"
    fails_cleanly(args, capsys, bank, phrase, "; rerun the bank stage", out=out)


@pytest.mark.parametrize("case", ["variant", "dataset", "backbone-entry"])
def test_run_model_of_another_cell_stops_transfer(made, tmp_path, capsys, case):
    """Before: any model file whose tensors fitted the backbone was scored as the cell's."""
    out = tmp_path / "out"
    model = made / "run" / "model.pt"
    if case == "variant":
        args = argv("transfer", made, out, dataset="moving_glyphs", variant="nuwa")
        phrase = "key variant is 'ori', expected 'nuwa'"
    elif case == "dataset":
        args = argv("transfer", made, out, eval_on="moving_glyphs", data=made / "moving_glyphs.nc")
        phrase = f"key dataset is 'moving_glyphs', expected '{OTHER}'"
    else:  # the backbone entry changed since the cell was trained
        params = yaml.safe_load((made / "params.yaml").read_text())
        params["backbones"]["simvp"]["size"] = "reference"
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        args = argv("transfer", made, out, dataset="moving_glyphs", params=tmp_path / "params.yaml")
        phrase = "key backbone.size is 'small', expected 'reference'"
    fails_cleanly(args, capsys, model, phrase, "(the model of another cell; nuwa train writes it)", out=out)


# -- a cell's files found at another cell's path (figures, tables) ----------------------------------

def grid_workdir(made: Path, tmp_path: Path, monkeypatch) -> Path:
    """A working folder whose grid is one cell, seed 1, holding the seed-0 run's files at its path."""
    params = yaml.safe_load((made / "params.yaml").read_text())
    params["grid"].update({"backbones": ["simvp"], "variants": ["ori"], "seeds": [1], "baselines": []})
    params["evaluation"]["comparisons"] = []
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cell = grid.Cell("moving_glyphs", "forecast", 100, "simvp", "ori", 1)
    shutil.copytree(made / "run", tmp_path / cell.run_dir)
    monkeypatch.chdir(tmp_path)
    return tmp_path / cell.run_dir


def test_examples_of_another_cell_stop_figures(made, tmp_path, capsys, monkeypatch):
    run = grid_workdir(made, tmp_path, monkeypatch)
    fails_cleanly(["figures", "--params", "params.yaml", "--dataset", "moving_glyphs"], capsys,
                  Path(grid.Cell("moving_glyphs", "forecast", 100, "simvp", "ori", 1).file("examples.nc")),
                  "attribute seed is 0, expected 1; rerun the train stage of that cell")
    assert not (tmp_path / "results" / "figures").exists() and run.is_dir()


@pytest.mark.parametrize("found", ["metrics.json", "test_losses.nc"])
def test_files_of_another_cell_stop_tables(made, tmp_path, capsys, monkeypatch, found):
    run = grid_workdir(made, tmp_path, monkeypatch)
    if found == "test_losses.nc":  # the cell's own metrics, another cell's losses
        metrics = json.loads((run / "metrics.json").read_text())
        (run / "metrics.json").write_text(json.dumps({**metrics, "seed": 1}))
    what = "key" if found == "metrics.json" else "attribute"
    fails_cleanly(["tables", "--params", "params.yaml"], capsys,
                  Path(grid.Cell("moving_glyphs", "forecast", 100, "simvp", "ori", 1).file(found)),
                  f"{what} seed is 0, expected 1; rerun the train stage of that cell")
    assert not (tmp_path / "results" / "tables").exists()


# -- a normal run still passes every check -----------------------------------------------------------

def test_matching_files_pass_and_ingest_records_the_entry(made):
    params = yaml.safe_load((made / "params.yaml").read_text())
    for name in ("moving_glyphs", OTHER):
        with xr.open_dataset(made / f"{name}.nc") as handle:
            assert handle.attrs["nuwa_dataset"] == name
            assert handle.attrs["nuwa_params_sha256"] == params_entry_sha256(params["datasets"][name])
    assert (made / "run" / "metrics.json").exists()  # the fixture's own stages all passed their checks
