"""Hostile and malformed parameters are refused before any job starts, everywhere alike.

Each case is a params.yaml a user (or `dvc exp run -S ...`) could write. In-process, every
case must raise one ParamsError whose text is exactly the expected line: the key, the bad
value and what is allowed. A subset (the names that would become paths or shell words, and
one of each other family) then goes through the three entry points, `nuwa validate`,
`snakemake --cores 1` and `dvc repro`, in a real workdir: each must exit non-zero, print the
same line, and leave every file of the workdir as it was (no job ran, no shell word ran).
"""

from __future__ import annotations

import copy
import hashlib
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import TINY_PARAMS, make_workdir, tool_env
from nuwa.config import ParamsError, load_params

NAME_RULE = ("(names are lower-case ASCII letters, digits and underscores, starting with a letter, "
             "at most 48 characters: pattern ^[a-z][a-z0-9_]{0,47}$)")

# Names a rule wildcard or a DVC `${item...}` would turn into a path or a shell word.
PWN = "$(touch pwned)"
HOSTILE_NAMES = {
    "parent_path": "../x",
    "slash": "a/b",
    "semicolon": "a;b",
    "command_substitution": PWN,
    "backticks": "`touch pwned`",
    "space": "with space",
    "option": "-rf",
    "cyrillic_a": "moving_glyphs_\u0430",     # Cyrillic 'а' that looks like Latin 'a'
    "fullwidth": "\uff4doving",               # fullwidth 'ｍ'
    "trailing_newline": "ori\n",             # Python's `$` matches before a final newline
    "upper_case": "Ori",
    "leading_digit": "1x",
    "empty": "",
    "too_long": "a" * 49,
}


def _tiny() -> dict:
    return yaml.safe_load(TINY_PARAMS.read_text())


def _dump(params: dict) -> str:
    return yaml.safe_dump(params, sort_keys=False, allow_unicode=True)


def _set(dotted: str, value):
    def edit(params):
        node = params
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
        return _dump(params)
    return edit


def _text(transform):
    """A case written as text (what PyYAML would silently accept as a dict)."""
    return lambda params: transform(TINY_PARAMS.read_text())


def _grid_name(section: str, name: str, entry_from: str):
    """`name` first in grid.<section> (DVC runs its stages first) and as a key of <section>."""
    def edit(params):
        params[section][name] = copy.deepcopy(params[section][entry_from])
        params["grid"][section].insert(0, name)
        return _dump(params)
    return edit


def _key_only(section: str, name: str, entry_from: str):
    """`name` only as a key of the <section> map (not used by the grid)."""
    def edit(params):
        params[section][name] = copy.deepcopy(params[section][entry_from])
        return _dump(params)
    return edit


def _grid_only(section: str, name: str):
    def edit(params):
        params["grid"][section].append(name)
        return _dump(params)
    return edit


SALIENCY_KEYS = "batch_size, layers"
TOP_KEYS = ("backbones, bank, datasets, diagnostics, evaluation, figures, grid, ingest, pretrain, saliency, tasks, "
            "train, upstreams, variants")
VARIANT_KEYS = ("copies, environment_ratio, exclude_causal_neighbours, history, history_decay, method, mix_fraction, "
                "mixup_alpha, sigma, upstream")

# id -> (params text maker, the one line every entry point prints after "params.yaml: ")
CASES = {
    # unknown keys (typos)
    "typo_enviroment_ratio": (_set("saliency.enviroment_ratio", 0.3),
                              f"saliency: unknown key 'enviroment_ratio' (allowed: {SALIENCY_KEYS})"),
    "typo_top_level": (_set("seeds", [1, 2]), f"top level: unknown key 'seeds' (allowed: {TOP_KEYS})"),
    "old_layout_seed": (_set("seed", 0), "seed: moved: the training seeds are grid.seeds (e.g. seed: 0 with "
                                         "replicate_seeds: [1, 2] becomes grid.seeds: [0, 1, 2]) and the upstream "
                                         "ViT's seed is pretrain.seed"),
    "typo_in_variant": (_set("variants.nuwa.enviroment_ratio", 0.5),
                        f"variants.nuwa: unknown key 'enviroment_ratio' (allowed: {VARIANT_KEYS})"),
    "yte_template": (_text(lambda t: "__use_yte__: true\n" + t.replace(
        "  seed: 0\n", "  seed: ?__import__('os').system('touch pwned')\n", 1)),
        f"top level: unknown key '__use_yte__' (allowed: {TOP_KEYS})"),
    # wrong types
    "steps_text": (_set("train.steps", "many"), "train.steps: 'many' has type str, expected integer"),
    "bool_as_text": (_set("bank.exclude_causal_neighbours", "yes please"),
                     "bank.exclude_causal_neighbours: 'yes please' has type str, expected boolean"),
    "grid_not_a_list": (_set("grid.datasets", "moving_glyphs"),
                        "grid.datasets: 'moving_glyphs' has type str, expected array"),
    "exponent_without_point": (_text(lambda t: t.replace("  learning_rate: 0.001\nsaliency", "  learning_rate: 1e-3\n"
                                                                                             "saliency", 1)),
                               "pretrain.learning_rate: '1e-3' has type str, expected number "
                               "(YAML reads 1e-3 as text: write it with a decimal point, e.g. 0.001)"),
    "section_null": (_set("train", None), "train: None has type NoneType, expected object"),
    # ratios outside (0, 1)
    "ratio_above_one": (_set("bank.environment_ratio", 1.5),
                        "bank.environment_ratio: 1.5 is out of range (allowed: > 0 and < 1)"),
    "mix_above_one": (_set("bank.mix_fraction", 1.5), "bank.mix_fraction: 1.5 is out of range (allowed: >= 0 and <= 1)"),
    "ratio_one": (_set("variants.random.environment_ratio", 1.0),
                  "variants.random.environment_ratio: 1.0 is out of range (allowed: > 0 and < 1)"),
    "ratio_zero": (_set("pretrain.mask_ratio", 0), "pretrain.mask_ratio: 0 is out of range (allowed: > 0 and < 1)"),
    "ratio_negative": (_set("variants.nuwa.environment_ratio", -0.2),
                       "variants.nuwa.environment_ratio: -0.2 is out of range (allowed: > 0 and < 1)"),
    "ratio_nan": (_text(lambda t: t.replace("environment_ratio: 0.25\n", "environment_ratio: .nan\n", 1)),
                  "bank.environment_ratio: nan is not allowed (allowed: a finite number)"),
    "learning_rate_inf": (_text(lambda t: t.replace("steps: 6\n  batch_size: 4\n  learning_rate: 0.001",
                                                    "steps: 6\n  batch_size: 4\n  learning_rate: .inf", 1)),
                          "train.learning_rate: inf is not allowed (allowed: a finite number)"),
    # negative or zero sizes
    "steps_zero": (_set("train.steps", 0), "train.steps: 0 is out of range (allowed: >= 1)"),
    "height_negative": (_set("datasets.moving_glyphs.height", -16),
                        "datasets.moving_glyphs.height: -16 is out of range (allowed: >= 1)"),
    "patch_zero": (_set("datasets.moving_glyphs.patch_size", 0),
                   "datasets.moving_glyphs.patch_size: 0 is out of range (allowed: >= 1)"),
    "batch_negative": (_set("pretrain.batch_size", -8), "pretrain.batch_size: -8 is out of range (allowed: >= 1)"),
    # empty grids and maps
    "empty_grid_variants": (_set("grid.variants", []), "grid.variants: [] must have at least 1 item(s)"),
    "empty_grid_datasets": (_set("grid.datasets", []), "grid.datasets: [] must have at least 1 item(s)"),
    "empty_backbones_map": (_set("backbones", {}), "backbones: must have at least 1 entry"),
    # duplicates
    "duplicate_grid_name": (_set("grid.backbones", ["simvp", "simvp"]),
                            "grid.backbones: duplicate item(s) 'simvp' in ['simvp', 'simvp'] (items must be unique)"),
    "duplicate_seed": (_set("grid.seeds", [3, 3]), "grid.seeds: duplicate item(s) 3 in [3, 3] (items must be unique)"),
    "no_seed": (_set("grid.seeds", []), "grid.seeds: [] must have at least 1 item(s)"),
    "duplicate_yaml_key": (_text(lambda t: t.replace("  random: {method: random, environment_ratio: 0.25}\n",
                                                     "  random: {method: random, environment_ratio: 0.25}\n"
                                                     "  nuwa: {method: none}\n", 1)),
                           "variants: key 'nuwa' appears twice (lines 62 and 64; allowed: each key once)"),
    # frame geometry
    "patch_not_dividing": (_set("datasets.moving_glyphs.patch_size", 5),
                           "datasets.moving_glyphs.patch_size: 5 does not divide height 16 "
                           "(allowed: a divisor of both height 16 and width 16)"),
    "patch_larger_than_frame": (_set("datasets.moving_glyphs.patch_size", 32),
                                "datasets.moving_glyphs.patch_size: 32 does not divide height 16 "
                                "(allowed: a divisor of both height 16 and width 16)"),
    "more_output_frames_than_data": (_set("datasets.moving_glyphs.output_frames", 400),
                                     "datasets.moving_glyphs: no window fits in the train, val and test splits "
                                     "(every split needs at least one): 160 frames (length 160) split into "
                                     "96 / 32 / 32 (train / val / test) give 0 / 0 / 0 windows of input_frames + "
                                     "output_frames = 4 + 400 = 404 frames, window_stride 2; to fix: lower "
                                     "input_frames or output_frames (each split's block needs at least 404 "
                                     "consecutive frames), or change split (160 frames cannot hold three blocks of "
                                     "404), or raise length"),
    "split_not_summing_to_one": (_set("datasets.moving_glyphs.split", {"train": 0.5, "val": 0.1, "test": 0.1}),
                                 "datasets.moving_glyphs.split: fractions {'train': 0.5, 'val': 0.1, 'test': 0.1} "
                                 "sum to 0.7 (allowed: train + val + test = 1)"),
    # seeds that are not integers
    "seed_fraction": (_set("pretrain.seed", 1.5),
                      "pretrain.seed: 1.5 has type float, expected integer (write it without a decimal point)"),
    "seed_float_integral": (_set("pretrain.seed", 1.0),
                            "pretrain.seed: 1.0 has type float, expected integer (write it without a decimal point)"),
    "seed_text": (_set("pretrain.seed", "0"), "pretrain.seed: '0' has type str, expected integer"),
    "seed_bool": (_set("datasets.moving_glyphs.seed", True),
                  "datasets.moving_glyphs.seed: True has type bool, expected integer"),
    "seed_negative": (_set("grid.seeds", [0, -1]), "grid.seeds.1: -1 is out of range (allowed: >= 0)"),
    "grid_seed_fraction": (_set("grid.seeds", [2.5]),
                           "grid.seeds.0: 2.5 has type float, expected integer (write it without a decimal point)"),
    "steps_float_integral": (_set("train.steps", 6.0),
                             "train.steps: 6.0 has type float, expected integer (write it without a decimal point)"),
    # a YAML alias that contains itself
    "alias_cycle": (_text(lambda t: t.replace("  simvp: {kind: simvp, size: small}\n",
                                              "  simvp: {kind: simvp, size: small, extra: &loop [*loop]}\n", 1)),
                    "backbones.simvp.extra.0: the value contains itself (a YAML alias cycle; allowed: plain values)"),
}
# names: in the grid (and as a key), as a key of the map only, in the grid only
for label, name in HOSTILE_NAMES.items():
    CASES[f"dataset_in_grid_{label}"] = (_grid_name("datasets", name, "moving_glyphs"),
                                         f"datasets: name {name!r} is not allowed {NAME_RULE}")
    CASES[f"backbone_key_{label}"] = (_key_only("backbones", name, "simvp"),
                                      f"backbones: name {name!r} is not allowed {NAME_RULE}")
    CASES[f"variant_in_grid_only_{label}"] = (_grid_only("variants", name),
                                              f"grid.variants.3: name {name!r} is not allowed {NAME_RULE}")


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_in_process_with_key_value_and_rule(case, tmp_path, monkeypatch):
    make, expected = CASES[case]
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(make(_tiny()))
    with pytest.raises(ParamsError) as error:
        load_params("params.yaml")
    assert str(error.value) == f"params.yaml: {expected}"
    assert "\n" not in str(error.value)  # one line
    assert sorted(os.listdir(tmp_path)) == ["params.yaml"]


# Through the real entry points: the shell-word and path names (in the grid, where DVC puts them
# into stage commands, and as map keys), and one case of each other family.
ENTRY_POINT_CASES = [
    "dataset_in_grid_command_substitution",
    "variant_in_grid_only_semicolon",
    "variant_in_grid_only_backticks",
    "dataset_in_grid_slash",
    "backbone_key_parent_path",
    "yte_template",
    "ratio_nan",
    "seed_float_integral",
]
# Written by the tools themselves whatever the params: Snakemake's log folder (created before it
# reads the Snakefile) and DVC's lock and timestamp files. Nothing else may change.
TOOL_STATE = (".snakemake", ".dvc/tmp")


def snapshot(directory: Path) -> dict[str, tuple]:
    """Every file and folder below `directory` (git's own folder included): mode, and a file's mtime and digest."""
    state = {}
    for root, folders, files in os.walk(directory):
        rel_root = Path(root).relative_to(directory)
        folders[:] = [f for f in folders if str(rel_root / f) not in TOOL_STATE]
        for name in folders + files:
            path = Path(root) / name
            info = path.lstat()
            if path.is_file():
                state[str(rel_root / name)] = (info.st_mode, info.st_mtime_ns, hashlib.sha256(path.read_bytes()).digest())
            else:  # a folder's mtime changes with its entries, which are compared themselves
                state[str(rel_root / name)] = (info.st_mode,)
    return state


@pytest.fixture(scope="module")
def initialised(tmp_path_factory) -> Path:
    """A workflow folder under git and DVC (as tests/test_workflow.py's dvc fixture), copied per case."""
    import shutil

    directory = make_workdir(tmp_path_factory.mktemp("hostile_template"))
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(command, cwd=directory, env=tool_env(), check=True, capture_output=True)
    shutil.rmtree(directory / ".dvc" / "tmp", ignore_errors=True)
    return directory


@pytest.mark.slow
@pytest.mark.parametrize("case", ENTRY_POINT_CASES)
def test_every_entry_point_refuses_with_the_same_line_and_touches_nothing(case, initialised, tmp_path):
    import shutil

    make, expected = CASES[case]
    directory = tmp_path / "work"
    shutil.copytree(initialised, directory, symlinks=True)
    (directory / "params.yaml").write_text(make(_tiny()))
    before = snapshot(directory)
    line = f"params.yaml: {expected}"

    def run(command):
        return subprocess.run(command, cwd=directory, env=tool_env(), capture_output=True, text=True, timeout=300)

    cli = run(["nuwa", "validate", "--params", "params.yaml", "--out", "results/params_ok.json"])
    assert cli.returncode == 2, cli.stdout + cli.stderr
    assert cli.stderr.strip().splitlines() == [f"nuwa validate: error: {line}"], cli.stderr

    smk = run(["snakemake", "--cores", "1"])
    assert smk.returncode != 0, smk.stdout + smk.stderr
    # Snakemake reports the exception as "ParamsError in file ..., line N:" then the message
    assert line in (smk.stdout + smk.stderr).splitlines(), smk.stdout + smk.stderr

    dvc = run(["dvc", "repro"])
    assert dvc.returncode != 0, dvc.stdout + dvc.stderr
    assert f"nuwa validate: error: {line}" in (dvc.stdout + dvc.stderr).splitlines(), dvc.stdout + dvc.stderr
    ran = [row for row in dvc.stdout.splitlines() if row.startswith("Running stage")]
    assert ran == ["Running stage 'validate':"], dvc.stdout

    after = snapshot(directory)
    assert not (directory / "pwned").exists()
    assert {k for k in after if k not in before} == set(), "created"
    assert {k for k in before if k not in after} == set(), "removed"
    assert {k for k in before if before[k] != after.get(k, before[k])} == set(), "modified"


def test_every_dvc_stage_waits_for_the_validate_stage():
    """DVC interpolates grid names into stage commands: only `validate`, whose command holds no
    name, may run before params.yaml is checked; every other stage depends on its file."""
    from conftest import REPO
    from nuwa import grid

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    validate = stages.pop("validate")
    assert "${" not in validate["cmd"] and f"--out {grid.PARAMS_OK}" in validate["cmd"]
    assert validate["params"] == [{"params.yaml": None}]  # all of it
    assert [next(iter(out)) for out in validate["outs"]] == [grid.PARAMS_OK]
    for name, stage in stages.items():
        assert stage["deps"][0] == grid.PARAMS_OK, name
