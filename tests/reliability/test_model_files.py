"""Reliability, untrusted model files: every torch.load is weights_only=True; a checkpoint that
carries a pickled object is refused (its code never runs); a checkpoint of another backbone or
shape names the file and the first tensor (or setting) that does not fit, with both values.
Stages run in process (``nuwa.cli.main``) on the real tiny pipeline's files."""

from __future__ import annotations

import ast
import pickle
import re
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, TINY_PARAMS
from conftest import cli_fails_cleanly as fails_cleanly

from nuwa.cli import main
from nuwa.pretrain import checkpoint
from nuwa.upstream import UpstreamViT

# -- every torch.load in the code base is weights_only=True -------------------------------------

def torch_load_calls(text: str, path: Path) -> list[tuple[int, bool]]:
    """(line, has weights_only=True) of every call of ``torch.load`` / ``load`` imported from torch."""
    tree = ast.parse(text, filename=str(path))
    aliases = {"torch.load"} | {alias.asname or alias.name for node in ast.walk(tree)
                                if isinstance(node, ast.ImportFrom) and node.module == "torch"
                                for alias in node.names if alias.name == "load"}
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) in aliases:
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                       for k in node.keywords)
            calls.append((node.lineno, safe))
    return calls


def test_every_torch_load_in_the_code_base_is_weights_only():
    sources = [p for folder in ("nuwa", "workflow", "tests") for p in (REPO / folder).rglob("*")
               if p.suffix in (".py", ".smk") and "__pycache__" not in p.parts]
    sources.append(REPO / "Snakefile")
    unsafe, found = [], 0
    for path in sources:
        text = path.read_text()
        if path.suffix == ".py":
            calls = torch_load_calls(text, path)
        else:  # Snakemake files are not plain Python: every torch.load( call must say weights_only=True
            calls = [(text.count("\n", 0, m.start()) + 1, "weights_only=True" in text[m.start():m.start() + 300])
                     for m in re.finditer(r"torch\.load\(", text)]
        found += len(calls)
        unsafe += [f"{path.relative_to(REPO)}:{line}" for line, safe in calls if not safe]
    assert found >= 1  # nuwa.io.load_checkpoint
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"
    # the scanner sees an unsafe call (so this test can fail)
    assert torch_load_calls("import torch\ntorch.load('x.pt')\n", Path("x.py")) == [(2, False)]
    assert torch_load_calls("from torch import load as L\nL('x.pt', weights_only=False)\n", Path("x.py")) == [(2, False)]


# -- the tiny pipeline's model files -------------------------------------------------------------

@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("made")
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["ingest"] = {"scheduler": "threads"}
    params["backbones"]["vit"] = {"kind": "vit", "size": "small", "init_from_upstream": True,
                                  "hid_T": 16, "N_T": 1, "num_heads": 2, "mlp_ratio": 2.0}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    common = ["--params", str(root / "params.yaml"), "--dataset", "moving_glyphs"]
    assert main(["ingest", *common, "--out", str(root / "data.nc")]) == 0
    assert main(["pretrain", *common, "--data", str(root / "data.nc"), "--model-out", str(root / "model.pt"),
                 "--history-out", str(root / "history.csv")]) == 0
    assert main(["bank", *common, "--variant", "ori", "--seed", "0", "--data", str(root / "data.nc"),
                 "--out", str(root / "ori.nc")]) == 0
    return root


def saliency_argv(made: Path, model: Path, out: Path) -> list[str]:
    return ["saliency", "--params", str(made / "params.yaml"), "--dataset", "moving_glyphs",
            "--data", str(made / "data.nc"), "--model", str(model), "--out", str(out / "saliency.nc")]


def train_argv(made: Path, backbone: str, out: Path, upstream: Path | None = None) -> list[str]:
    return ["train", "--params", str(made / "params.yaml"), "--dataset", "moving_glyphs", "--backbone", backbone,
            "--variant", "ori", "--seed", "0", "--data", str(made / "data.nc"), "--bank", str(made / "ori.nc"),
            "--upstream", str(upstream or made / "model.pt"), "--out-dir", str(out), "--device", "cpu"]


def upstream_file(made: Path, path: Path, **config_changes) -> Path:
    """A real upstream checkpoint, of the tiny config's model with ``config_changes``."""
    config = {**torch.load(made / "model.pt", weights_only=True)["model_config"], **config_changes}
    torch.manual_seed(0)
    torch.save(checkpoint(UpstreamViT(**config), "moving_glyphs", {}), path)
    return path


# -- a checkpoint that carries a pickled object ----------------------------------------------------

class Armed:
    """Unpickling this creates a marker file: what a malicious checkpoint's code could do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("where", ["saliency --model", "train --upstream", "train resume checkpoint"])
def test_checkpoint_with_a_pickled_object_is_refused_and_never_run(made, tmp_path, capsys, where):
    marker = tmp_path / "code_ran"
    evil = tmp_path / ("checkpoint.pt" if "resume" in where else "model.pt")
    torch.save({"kind": "upstream_vit", "model_config": {"frames": 4}, "extra": Armed(marker)}, evil)
    out = tmp_path / "out"
    if where == "saliency --model":
        argv = saliency_argv(made, evil, out)
    elif where == "train --upstream":
        argv = train_argv(made, "vit", out, upstream=evil)
    else:  # placed where the cell's resume checkpoint lives
        out = tmp_path
        argv = train_argv(made, "simvp", out)
    fails_cleanly(argv, capsys, evil, "refused: the checkpoint holds a pickled object (io.open)")
    assert not marker.exists(), "the checkpoint's pickled code ran"
    assert sorted(p.name for p in tmp_path.iterdir()) == [evil.name]  # nothing written, no temporary left
    # the file is armed: unpickling it without weights_only's restrictions runs its code
    with zipfile.ZipFile(evil) as archive:
        data = archive.read(next(name for name in archive.namelist() if name.endswith("/data.pkl")))
    pickle.loads(data)
    assert marker.exists()


@pytest.mark.parametrize("case,phrase", [
    ("truncated", "not a readable checkpoint (not a torch.save zip archive: truncated or corrupt?)"),
    ("corrupt", "not a readable checkpoint (not a torch.save zip archive: truncated or corrupt?)"),
    ("not-a-dict", "not a nuwa checkpoint (holds a list, expected a dict)"),
    ("train-model", "not an upstream ViT checkpoint (kind=None)"),
], ids=["truncated", "corrupt", "not-a-dict", "train-model"])
def test_unreadable_or_foreign_upstream_model_stops_saliency(made, tmp_path, capsys, case, phrase):
    bad = tmp_path / "model.pt"
    if case == "truncated":
        bad.write_bytes((made / "model.pt").read_bytes()[:4000])
    elif case == "corrupt":
        bad.write_bytes(b"PK\x03\x04 not a zip archive at all " * 20)
    elif case == "not-a-dict":
        torch.save([torch.zeros(2)], bad)
    else:  # a training run's model.pt given as the upstream model
        torch.save({"state_dict": {"w": torch.zeros(2)}, "backbone": {"kind": "simvp"}}, bad)
    out = tmp_path / "out"
    fails_cleanly(saliency_argv(made, bad, out), capsys, bad, phrase)
    assert not out.exists()


# -- a checkpoint of another shape ---------------------------------------------------------------

@pytest.mark.parametrize("change,phrase", [
    ({"channels": 3}, "built for channels=3, but this dataset needs channels=1"),
    ({"height": 32, "width": 32}, "built for height=32, but this dataset needs height=16"),
    ({"patch_size": 8}, "built for patch_size=8, but this dataset needs patch_size=4"),
    ({"frames": 2}, "built for frames=2, but this dataset needs frames=4"),
], ids=["channels", "height", "patch_size", "frames"])
def test_saliency_model_of_another_dataset_shape_is_named(made, tmp_path, capsys, change, phrase):
    bad = upstream_file(made, tmp_path / "model.pt", **change)
    out = tmp_path / "out"
    fails_cleanly(saliency_argv(made, bad, out), capsys, bad, phrase)
    assert not out.exists()


def test_saliency_model_whose_weights_do_not_fit_names_the_tensor(made, tmp_path, capsys):
    wide = torch.load(upstream_file(made, tmp_path / "wide.pt", embed_dim=32), weights_only=True)
    bad = tmp_path / "model.pt"
    torch.save({**wide, "model_config": torch.load(made / "model.pt", weights_only=True)["model_config"]}, bad)
    out = tmp_path / "out"
    fails_cleanly(saliency_argv(made, bad, out), capsys, bad,
                  "tensor 'pos_embed' has shape (1, 16, 32) in the checkpoint, (1, 16, 16) in the model")
    assert not out.exists()


def test_upstream_of_another_embed_dim_names_file_and_tensor(made, tmp_path, capsys):
    bad = upstream_file(made, tmp_path / "model.pt", embed_dim=32)
    out = tmp_path / "out"
    fails_cleanly(train_argv(made, "vit", out, upstream=bad), capsys, bad,
                  "'blocks.0.norm1.weight' (32,) -> 'translator.blocks.0.norm1.weight' (16,)")
    assert not out.exists()
    # the file it refused is otherwise a good upstream model: the same cell starts from the real one
    assert main(train_argv(made, "vit", out)) == 0
    assert (out / "metrics.json").exists()


def training_checkpoint(params: dict, backbone: str) -> dict:
    """What train_cell writes to checkpoint.pt, for ``backbone`` (built and stepped as train does)."""
    from nuwa.seeding import torch_generator
    from nuwa.train import build_model, rng_state

    dataset = params["datasets"]["moving_glyphs"]
    model = build_model(params["backbones"][backbone], dataset, channels=1)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=1e-3, total_steps=6)
    state = {"step": 3, "history": [], "best_val": float("inf"), "best_step": 0,
             "best_state": model.state_dict(), "seconds": 0.0}
    return {"model": model.state_dict(), "optimiser": optimiser.state_dict(), "scheduler": scheduler.state_dict(),
            "generator": torch_generator(0, "x").get_state(), "rng": [rng_state(torch.device("cpu"))],
            "world_size": 1, "state": state}


@pytest.mark.parametrize("placed,phrase", [
    ("convlstm", "does not fit the backbone 'simvp': tensor 'encoder.0.conv.weight' (4, 1, 3, 3) is missing from the "
                 "checkpoint; its first tensor the model lacks is 'cells.0.conv_x.weight'"),
    ("final-model", "not a training checkpoint (missing model, optimiser, scheduler, generator, state)"),
], ids=["convlstm", "final-model"])
def test_resume_checkpoint_of_another_backbone_is_named(made, tmp_path, capsys, placed, phrase):
    params = yaml.safe_load((made / "params.yaml").read_text())
    ckpt = tmp_path / "checkpoint.pt"
    if placed == "convlstm":
        torch.save(training_checkpoint(params, "convlstm"), ckpt)
    else:  # a finished run's model.pt copied to the resume path
        torch.save({"state_dict": {"w": torch.zeros(1)}, "backbone": {"kind": "simvp"}}, ckpt)
    before = ckpt.read_bytes()
    fails_cleanly(train_argv(made, "simvp", tmp_path), capsys, ckpt, phrase)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # nothing written, nothing removed
    assert ckpt.read_bytes() == before


# -- a run that diverges -----------------------------------------------------------------------

def test_a_diverged_training_run_fails_naming_the_cell_and_step_and_writes_no_result(made, tmp_path, capsys):
    """Before: a NaN validation loss was never 'better', so train evaluated the untrained weights
    on test, exited 0 and wrote Infinity into metrics.json."""
    params = yaml.safe_load((made / "params.yaml").read_text())
    params["train"].update(learning_rate=1.0e6, steps=30, eval_every=5, checkpoint_every=1000)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    argv = train_argv(made, "simvp", tmp_path / "out")
    argv[argv.index("--params") + 1] = str(tmp_path / "params.yaml")
    capsys.readouterr()
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "it/s]" not in line]
    assert re.search(r"^nuwa train: error: train moving_glyphs/simvp/ori/seed0: (training|validation) loss is "
                     r"(nan|inf|-inf) at step \d+ \(diverged\); nothing written$", lines[-1]), lines
    left = sorted(p.name for p in (tmp_path / "out").rglob("*")) if (tmp_path / "out").exists() else []
    assert left == [], left
