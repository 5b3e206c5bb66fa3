"""Seeded mutations of the tiny params file, and the two outcomes each may have (issue 23).

A mutation is the tiny params file (tests/data/tiny_params.yaml) with one change: a value of
another type, a number out of bounds or nearby, a hostile or reserved name, a key deleted, an
unknown or optional key added, a scalar nested into a mapping or a list (and back), a list
emptied or grown, two values swapped, or damage at the YAML level (anchors and aliases, merge
keys, duplicated keys, tags, broken syntax, bytes that are not UTF-8, alias bombs, deep
nesting). Mutation ``index`` of ``seed`` is drawn from ``random.Random(f"{seed}/{index}")``
alone, so one mutation replays without the others::

    NUWA_MUTATION_SEED=23 NUWA_MUTATION_INDEX=117 python -m pytest -q tests/reliability/test_params_mutations.py
    python tests/reliability/mutations.py show 23 117        # its description and the file it writes
    python tests/reliability/mutations.py check 23 117       # validate it; if accepted, run every stage
    python tests/reliability/mutations.py campaign 23 3000 30 --report out.json   # a larger run
    python tests/reliability/mutations.py campaign 23 3000 30 --families scenario,enum   # runs of these only

Each mutation must have one of two outcomes:

1. **refused**: `nuwa validate --params params.yaml` exits 2 with one stderr line
   ``nuwa validate: error: params.yaml: ...`` that names the mutated key (its dotted path, a
   part of it, or the key's own name), or, for damage at the YAML level that leaves no
   mapping to name a key in, the line of the file;
2. **accepted**: validate exits 0, and then every job of the grid (every stage of the stage
   table over the grid's axes, in the table's order, as Snakemake would run them: same
   commands, ``--threads 1 --mem-mb <the stage's> --mem-rule <stage>``) exits 0 and writes
   every output the stage table declares, and the results are those of the params
   (:func:`wrong_results`: each cell's metrics.json for its own cell and budget, finite
   errors, one summary row per setting with every seed, no grid name that reads back as NaN,
   no file outside data/ and results/).

Anything else is a third outcome, a failure: an exception out of `nuwa.cli.main`, a
refusal that is several lines or names neither the key nor the line, a hang (past a
timeout), a crash of the process, a stage that fails (even cleanly) on params validate
accepted, a stage that exits 0 without its outputs, or a wrong result.

Validation runs in a worker process (one per batch, restarted after a crash) with a limit
on its address space (a bad value must not take the machine's memory) and an alarm per
mutation; each accepted mutation's pipeline runs in a process of its own, in its own
folder, under a timeout and a (generous) address-space limit.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import math
import os
import random
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TINY_PARAMS = REPO / "tests" / "data" / "tiny_params.yaml"
PARAMS_NAME = "params.yaml"

DEFAULT_SEED = 23
VALIDATE_TIMEOUT_S = 20         # one `nuwa validate`: ms when sound, ~6 s for a 1 MB file on a busy machine
VALIDATE_MEMORY = 8 << 30       # the validation worker's address space (torch alone reserves 3.3 GB)
PIPELINE_TIMEOUT_S = 240        # one tiny run of every stage (15-35 s on a busy 2-core machine)
PIPELINE_MEMORY = 12 << 30      # torch reserves address space far beyond what it uses
FILE_LIMIT = 1 << 30            # no file of a tiny run (or a validation) needs more

# ---------------------------------------------------------------------------------------------
# The base file and its key paths


@functools.lru_cache(maxsize=1)
def base_text() -> str:
    return TINY_PARAMS.read_text()


@functools.lru_cache(maxsize=1)
def _base_params() -> dict:
    return yaml.safe_load(base_text())


def base_params() -> dict:
    """The tiny params (a fresh copy)."""
    return copy.deepcopy(_base_params())


def dotted(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def walk(value, path=()):
    """(path, value) of every node below ``value`` (itself first)."""
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from walk(item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from walk(item, path + (index,))


def get(params, path):
    for part in path:
        params = params[part]
    return params


def put(params, path, value):
    get(params, path[:-1])[path[-1]] = value


def dump(params) -> str:
    return yaml.safe_dump(params, sort_keys=False, allow_unicode=True, width=4096)


# ---------------------------------------------------------------------------------------------
# Values


HOSTILE_NAMES = ["../x", "a/b", "a;b", "$(touch pwned)", "`touch pwned`", "with space", "-rf", "moving_glyphs_\u0430",
                 "\uff4doving", "ori\n", "Ori", "1x", "", "a" * 49, "a.b", "a-b", "*", "{dataset}", "${item.x}",
                 "a\x00b", "_x", "nul"]
# names a pattern lets through but some other part of the pipeline may hold dear
RESERVED_NAMES = ["persistence", "optical_flow", "all", "none", "validate", "forecast", "nan", "null", "true", "yes",
                  "eval_on", "ablations", "seed0", "a" * 48, "x", "metrics", "params", "tables", "figures", "con",
                  "simvp", "ori", "moving_glyphs", "sr4", "masked", "upstream", "tmp", "ingest"]
SCALARS = [0, -1, 1, 2, 3, 7, 16, 10 ** 9, 2 ** 31, 2 ** 63, 2 ** 64, -(2 ** 64), 0.0, 0.5, 1.0, 1.5, -0.5, 1e-9, 1e9,
           1e300, float("nan"), float("inf"), float("-inf"), 5e-324, "", "x", "6", "0.25", "1e-3", "true", "null",
           "ori", "persistence", "../x", "$(touch pwned)", "a" * 5000, "\u0430", True, False, None]
CONTAINERS = [[], [1], ["x"], [[1]], [None], [0.5, 0.5], [0, 1, 2], {}, {"a": 1}, {"kind": "x"}, {"method": "none"},
              {"0": 1}]
BOUNDS = [0, -1, 1, 10 ** 9, 1e9, 2 ** 64, -(2 ** 64), 2 ** 31 - 1, 2 ** 53 + 1, float("nan"), float("inf"),
          float("-inf"), 1e-300, 5e-324, 1e308, -0.0, 0.999999, 1.000001]
UNKNOWN_KEYS = ["foo", "enviroment_ratio", "Steps", "steps ", "seed", "replicate_seeds", "extends", "__proto__",
                "<<", "1", "kind", "method", "name", "__use_yte__", "params", "a" * 300, "\u0430", "", "null"]


def type_of(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if value is None:
        return "null"
    return {int: "int", float: "float", str: "str", list: "list", dict: "mapping"}[type(value)]


def nearby(rng: random.Random, value):
    """A value of the same type close to ``value``: what a user tuning the file writes."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return rng.choice([value + 1, max(value - 1, 0), 1, 2, 3, 5, 8, value * 2, max(value // 2, 1), value * 3,
                           value + 7, 0, 32, 64])
    if isinstance(value, float):
        return rng.choice([round(value * 0.5, 6), round(value * 2, 6), 0.01, 0.1, 0.5, 0.9, 0.99, round(value + 0.1, 6),
                           1e-6, 3.0, 10.0])
    if isinstance(value, str):
        return rng.choice(["x", value + "_b", value[:-1] or "y", value.upper(), value + " ", " " + value])
    return value


# ---------------------------------------------------------------------------------------------
# Mutations


@dataclass
class Mutation:
    seed: int
    index: int
    family: str                    # what kind of change (type, bounds, nearby, name, delete, ...)
    path: str                      # the dotted key it changes ('' for the whole file)
    detail: str                    # the change, in words (the key and the value written)
    text: str                      # the params file (latin-1 escaped when it is not UTF-8: see ``raw``)
    names: list = field(default_factory=list)   # what a refusal may name: dotted keys, key names, entry names
    yaml_level: bool = False       # damage that may leave no key to name (the line must be named then)
    raw: bool = False              # ``text`` holds bytes (latin-1) that are not valid UTF-8

    def data(self) -> bytes:
        return self.text.encode("latin-1") if self.raw else self.text.encode()

    def replay(self) -> str:
        return f"NUWA_MUTATION_SEED={self.seed} NUWA_MUTATION_INDEX={self.index}"

    def describe(self) -> str:
        return f"[{self.replay()}] {self.family}: {self.detail}"


def _entry_sections(params):
    """(section, name) of every named entry (datasets, tasks, variants, backbones, upstreams)."""
    return [(section, name) for section in ("datasets", "tasks", "variants", "backbones", "upstreams")
            for name in params[section]]


def _rename_everywhere(params, section, old, new):
    """``section.old`` renamed ``new``, and every reference to it (grid lists, comparisons, upstream, eval_on)."""
    entries = params[section]
    params[section] = {(new if key == old else key): value for key, value in entries.items()}
    grid_key = section
    if grid_key in params["grid"]:
        params["grid"][grid_key] = [new if v == old else v for v in params["grid"][grid_key]]
    if section == "variants":
        params["evaluation"]["comparisons"] = [[new if v == old else v for v in pair]
                                               for pair in params["evaluation"]["comparisons"]]
    if section == "upstreams":
        for entry in params["variants"].values():
            if entry.get("upstream") == old:
                entry["upstream"] = new
    if section == "datasets":
        for pair in params["grid"]["eval_on"]:
            for side in ("train", "test"):
                if pair[side] == old:
                    pair[side] = new
        for part in ("pretrain", "train"):
            by = params[part].get("steps_by_dataset")
            if by and old in by:
                by[new] = by.pop(old)


def _second_dataset(params, name="glyphs_b", **changes):
    entry = copy.deepcopy(params["datasets"]["moving_glyphs"])
    entry.update(seed=2, **changes)
    params["datasets"][name] = entry
    return name


# Edits a user makes on purpose: more of a grid axis, an optional key, an ablation. Each is a
# function of (params, rng) returning (path, detail, names); most should be accepted and run.
def _scenarios():
    def grid_append(axis, value):
        def edit(p, rng):
            p["grid"][axis].append(value)
            return ("grid", axis), f"grid.{axis} += [{value!r}]", [f"grid.{axis}"]
        return edit

    def set_key(path, value):
        def edit(p, rng):
            put(p, path, copy.deepcopy(value))
            return path, f"{dotted(path)} = {value!r}", [dotted(path)]
        return edit

    def second_dataset_in_grid(p, rng):
        name = _second_dataset(p, length=rng.choice([160, 120, 200]), glyphs=rng.choice([1, 2]))
        p["grid"]["datasets"].append(name)
        return ("datasets", name), f"datasets.{name} (a copy of moving_glyphs, seed 2) added to grid.datasets", [
            "grid.datasets", f"datasets.{name}"]

    def eval_on_pair(p, rng):
        name = _second_dataset(p)
        p["grid"]["eval_on"].append({"train": "moving_glyphs", "test": name})
        return ("grid", "eval_on"), f"grid.eval_on = [{{train: moving_glyphs, test: {name}}}] with datasets.{name}", [
            "grid.eval_on", f"datasets.{name}"]

    def eval_on_other_shape(p, rng):
        name = _second_dataset(p, height=32, width=32)
        p["grid"]["eval_on"].append({"train": "moving_glyphs", "test": name})
        return ("grid", "eval_on"), f"grid.eval_on with datasets.{name} of 32 x 32 (the trained: 16 x 16)", [
            "grid.eval_on", f"datasets.{name}"]

    def ablation(p, rng):
        upstream = rng.choice(["masked", "first_layer"])
        p["grid"]["upstreams"].append(upstream)
        variant = rng.choice(["nuwa", "random_matched", "saliency_inverted"])
        p["variants"][variant]["upstream"] = upstream
        if variant not in p["grid"]["variants"]:
            p["grid"]["variants"].append(variant)
        return ("variants", variant, "upstream"), f"variants.{variant}.upstream = {upstream} (in grid.upstreams)", [
            f"variants.{variant}.upstream", "grid.upstreams"]

    def upstream_not_in_grid(p, rng):
        p["variants"]["nuwa"]["upstream"] = "masked"
        return ("variants", "nuwa", "upstream"), "variants.nuwa.upstream = masked (not in grid.upstreams)", [
            "variants.nuwa.upstream"]

    def sr_task(p, rng):
        factor = rng.choice([2, 4, 8, 16, 3])
        p["tasks"]["sr4"]["factor"] = factor
        p["grid"]["tasks"].append("sr4")
        return ("tasks", "sr4", "factor"), f"grid.tasks += [sr4] with tasks.sr4.factor = {factor}", [
            "tasks.sr4.factor", "grid.tasks"]

    def backbone_kind(p, rng):
        from nuwa.backbones import backbone_kinds

        kind = rng.choice([k for k in backbone_kinds() if k not in ("simvp", "convlstm")])
        p["backbones"]["simvp"]["kind"] = kind
        return ("backbones", "simvp", "kind"), f"backbones.simvp.kind = {kind}", ["backbones.simvp.kind"]

    def backbone_override(p, rng):
        key, value = rng.choice([("hidden", 4), ("hidden_channels", 8), ("depth", 2), ("layers", 1), ("bogus", 1),
                                 ("kernel_size", 3), ("dropout", 0.1), ("hid_S", 8), ("hid_T", 16), ("N_S", 2),
                                 ("N_T", 2), ("num_layers", 1), ("embed_dim", 8), ("patch_size", 4)])
        name = rng.choice(["simvp", "convlstm"])
        p["backbones"][name][key] = value
        return ("backbones", name, key), f"backbones.{name}.{key} = {value!r} (a preset override)", [
            f"backbones.{name}.{key}", key]

    def init_from_upstream(p, rng):
        name = rng.choice(["simvp", "convlstm"])
        p["backbones"][name]["init_from_upstream"] = True
        return ("backbones", name, "init_from_upstream"), f"backbones.{name}.init_from_upstream = true", [
            f"backbones.{name}.init_from_upstream"]

    def vit_from_upstream(p, rng):
        p["backbones"]["vit"] = {"kind": "vit", "size": "small", "init_from_upstream": True}
        p["grid"]["backbones"] = ["vit"]
        return (("backbones", "vit"), "grid.backbones = [vit] with backbones.vit {kind: vit, init_from_upstream: true}",
                ["backbones.vit", "grid.backbones"])

    def gpus(p, rng):
        p["backbones"]["simvp"]["gpus"] = rng.choice([1, 2])
        return ("backbones", "simvp", "gpus"), f"backbones.simvp.gpus = {p['backbones']['simvp']['gpus']}", [
            "backbones.simvp.gpus"]

    def variant_knob(p, rng):
        variant = rng.choice(["nuwa", "random", "ori", "mixup", "random_matched"])
        knob, value = rng.choice([("copies", 2), ("sigma", 0.5), ("history", 0), ("history", 5), ("history_decay", 1.0),
                                  ("exclude_causal_neighbours", False), ("mix_fraction", 1.0), ("mix_fraction", 0.0),
                                  ("environment_ratio", 0.9), ("environment_ratio", 0.01), ("mixup_alpha", 1.0)])
        p["variants"][variant][knob] = value
        if variant not in p["grid"]["variants"]:
            p["grid"]["variants"].append(variant)
        return ("variants", variant, knob), f"variants.{variant}.{knob} = {value!r} (in the grid)", [
            f"variants.{variant}.{knob}", f"variants.{variant}", knob]

    def steps_by_dataset(p, rng):
        part = rng.choice(["train", "pretrain"])
        name = rng.choice(["moving_glyphs", "moving_glyphs", "nowhere"])
        p[part]["steps_by_dataset"] = {name: rng.choice([1, 2, 3])}
        return (part, "steps_by_dataset"), f"{part}.steps_by_dataset = {p[part]['steps_by_dataset']}", [
            f"{part}.steps_by_dataset"]

    def ingest_section(p, rng):
        p["ingest"] = rng.choice([{"chunk_frames": 7}, {"chunk_frames": 1}, {"scheduler": "threads"},
                                  {"scheduler": "local"}, {"scheduler": "tcp://127.0.0.1:1"}, {}])
        return ("ingest",), f"ingest = {p['ingest']!r}", ["ingest"]

    def single_everything(p, rng):
        p["grid"].update(backbones=["simvp"], variants=["ori"], baselines=[])
        p["evaluation"]["comparisons"] = []
        return (("grid",), "grid: one backbone, only ori, no baselines, no comparisons",
                ["grid", "evaluation.comparisons"])

    def comparisons_only_ori(p, rng):
        p["grid"]["variants"] = ["ori"]
        return ("grid", "variants"), "grid.variants = [ori] (comparisons name variants not in the grid)", [
            "grid.variants"]

    def diagnostics_layers(p, rng):
        choice = rng.choice([[[0]], [[-1], [0]], [[5]], [[-2]], [[0, -1]]])
        p["diagnostics"]["layer_choices"] = choice
        return ("diagnostics", "layer_choices"), f"diagnostics.layer_choices = {choice}", [
            "diagnostics.layer_choices"]

    def saliency_layers(p, rng):
        choice = rng.choice([[0], [1], [-2], [7], [0, -1]])
        p["saliency"]["layers"] = choice
        return ("saliency", "layers"), f"saliency.layers = {choice} (pretrain.depth = 1)", ["saliency.layers"]

    def train_percents(p, rng):
        choice = rng.choice([[100, 50], [50], [1], [10, 100], [25, 75]])
        p["grid"]["train_percents"] = choice
        return ("grid", "train_percents"), f"grid.train_percents = {choice}", ["grid.train_percents"]

    def block_windows(p, rng):
        value = rng.choice([1, 2, 5, 100])
        p["evaluation"]["block_windows"] = value
        return ("evaluation", "block_windows"), f"evaluation.block_windows = {value}", ["evaluation.block_windows"]

    return [grid_append("seeds", 1), grid_append("seeds", 7), grid_append("variants", "random_matched"),
            grid_append("variants", "saliency_inverted"), grid_append("variants", "mixup"),
            grid_append("train_percents", 50), grid_append("tasks", "sr4"), grid_append("upstreams", "masked"),
            set_key(("grid", "baselines"), []), set_key(("grid", "baselines"), ["optical_flow"]),
            set_key(("diagnostics", "steps"), 2), set_key(("diagnostics", "objectives"), ["next_frame"]),
            set_key(("diagnostics", "seeds"), [5]), set_key(("evaluation", "fss_scales"), []),
            set_key(("evaluation", "fss_scales"), [1, 16, 33]), set_key(("evaluation", "comparisons"), []),
            set_key(("datasets", "moving_glyphs", "csi_thresholds"), []),
            set_key(("datasets", "moving_glyphs", "csi_thresholds"), [0.1, 0.5, 0.9, 2.0]),
            set_key(("datasets", "moving_glyphs", "csi_thresholds"), [-1.0]),
            set_key(("pretrain", "objective"), "masked"), set_key(("pretrain", "objective"), "next_frame"),
            set_key(("train", "subset"), "seeded"),
            second_dataset_in_grid, eval_on_pair, eval_on_other_shape, ablation, upstream_not_in_grid, sr_task,
            backbone_kind, backbone_kind, backbone_override, backbone_override, init_from_upstream, vit_from_upstream,
            gpus, variant_knob, variant_knob, steps_by_dataset, ingest_section, single_everything, comparisons_only_ori,
            diagnostics_layers, saliency_layers, train_percents, block_windows]


SCENARIOS = _scenarios()


def _dict_mutation(rng: random.Random, family: str):
    """(path, detail, names, text) of a mutation made on the loaded dict."""
    params = base_params()
    nodes = [(path, value) for path, value in walk(params) if path]
    leaves = [(path, value) for path, value in nodes if not isinstance(value, (dict, list))]
    numbers = [(path, value) for path, value in leaves if type_of(value) in ("int", "float")]
    key_paths = [path for path, _ in nodes if isinstance(path[-1], str)]
    mappings = [(path, value) for path, value in walk(params) if isinstance(value, dict)]
    lists = [(path, value) for path, value in nodes if isinstance(value, list)]

    def names_for(path):
        return [dotted(path)]

    if family == "type":
        path, value = rng.choice(nodes)
        pool = [v for v in SCALARS + CONTAINERS if type_of(v) != type_of(value)]
        new = copy.deepcopy(rng.choice(pool))
        put(params, path, new)
        return path, f"{dotted(path)} = {_short(new)} (was {_short(value)})", names_for(path), dump(params)
    if family == "bounds":
        path, value = rng.choice(numbers)
        new = rng.choice(BOUNDS + [value * 10 ** rng.randint(1, 12), -value])
        if isinstance(value, int) and not isinstance(new, bool) and isinstance(new, float) and math.isfinite(new) \
                and new.is_integer() and rng.random() < 0.7:
            new = int(new)
        if new == value and type(new) is type(value):  # a change, not the same value again
            new = rng.choice([b for b in BOUNDS if b != value])
        put(params, path, new)
        return path, f"{dotted(path)} = {_short(new)} (was {_short(value)})", names_for(path), dump(params)
    if family == "nearby":
        path, value = rng.choice(leaves)
        new = nearby(rng, value)
        for _ in range(20):  # a change, not the same value again (None has no neighbour: another leaf)
            if new != value or type(new) is not type(value):
                break
            path, value = rng.choice(leaves)
            new = nearby(rng, value)
        put(params, path, new)
        return path, f"{dotted(path)} = {_short(new)} (was {_short(value)})", names_for(path), dump(params)
    if family == "enum":
        from nuwa.config import load_schema

        choices = _enum_paths(params, load_schema())
        path, allowed = rng.choice(choices)
        value = get(params, path)
        new = rng.choice([a for a in allowed if a != value] or allowed)
        put(params, path, new)
        return path, f"{dotted(path)} = {new!r} (was {value!r})", names_for(path), dump(params)
    if family == "name":
        section, old = rng.choice(_entry_sections(params))
        new = rng.choice(HOSTILE_NAMES + RESERVED_NAMES)
        how = rng.choice(["everywhere", "everywhere", "key", "grid"])
        if how == "everywhere":
            if new in params[section]:
                how = "key"
            else:
                _rename_everywhere(params, section, old, new)
        if how == "key":
            params[section] = {(new if key == old else key): value for key, value in params[section].items()}
        if how == "grid":
            if section in params["grid"]:
                params["grid"][section].append(new)
            else:
                params["evaluation"]["comparisons"].append([old, new])
        return (section, old), f"{section}.{old} renamed {new!r} ({how})", [section, f"grid.{section}", new, old,
                                                                            "evaluation.comparisons"], dump(params)
    if family == "delete":
        path = rng.choice(key_paths)
        value = get(params, path)
        del get(params, path[:-1])[path[-1]]
        return path, f"{dotted(path)} deleted (was {_short(value)})", names_for(path) + [path[-1]], dump(params)
    if family == "unknown_key":
        path, mapping = rng.choice(mappings)
        key = rng.choice(UNKNOWN_KEYS + [rng.choice(list(mapping) or ["x"]) + "s"])
        value = copy.deepcopy(rng.choice(SCALARS[:12] + CONTAINERS[:4] + ["../params.yaml", PARAMS_NAME]))
        if key in mapping:
            key = key + "_x"
        mapping[key] = value
        return path + (key,), f"{dotted(path + (key,))} = {_short(value)} (a key the file does not have)", [
            dotted(path + (key,)), dotted(path), key, repr(key)], dump(params)
    if family == "nesting":
        path, value = rng.choice(nodes)
        how = rng.choice(["in_list", "in_mapping", "unwrap", "to_list", "to_mapping"])
        if how == "in_list":
            new = [value]
        elif how == "in_mapping":
            new = {rng.choice(["value", str(path[-1]), "kind"]): value}
        elif how == "unwrap" and isinstance(value, (dict, list)) and value:
            new = next(iter(value.values())) if isinstance(value, dict) else value[0]
        elif how == "to_list" and isinstance(value, dict):
            new = list(value.values())
        elif isinstance(value, list):
            new = {str(i): item for i, item in enumerate(value)}
        else:
            new = [value, value]
        put(params, path, copy.deepcopy(new))
        return path, f"{dotted(path)} = {_short(new)} (was {_short(value)}; {how})", names_for(path), dump(params)
    if family == "list":
        path, value = rng.choice(lists)
        how = rng.choice(["empty", "duplicate", "drop", "reverse", "grow", "huge"])
        new = list(value)
        if how == "empty":
            new = []
        elif how == "duplicate" and value:
            new = value + [copy.deepcopy(rng.choice(value))]
        elif how == "drop" and value:
            new.pop(rng.randrange(len(new)))
        elif how == "reverse":
            new.reverse()
        elif how == "huge":
            new = [copy.deepcopy(value[0]) if value else 0 for _ in range(rng.choice([1000, 100000]))]
        else:
            template = value[-1] if value else 1
            new.append(nearby(rng, template) if not isinstance(template, (list, dict)) else copy.deepcopy(template))
        put(params, path, new)
        return path, f"{dotted(path)} = {_short(new)} (was {_short(value)}; {how})", names_for(path), dump(params)
    if family == "swap":
        first, a = rng.choice(nodes)
        same = [(p, v) for p, v in nodes if type_of(v) == type_of(a) and v != a and p[:len(first)] != first
                and first[:len(p)] != p]
        if not same:
            same = [(p, v) for p, v in nodes if v != a and p[:len(first)] != first and first[:len(p)] != p]
        second, b = rng.choice(same)
        put(params, first, copy.deepcopy(b))
        put(params, second, copy.deepcopy(a))
        return first, f"{dotted(first)} ({_short(a)}) and {dotted(second)} ({_short(b)}) swapped", [
            dotted(first), dotted(second)], dump(params)
    if family == "scenario":
        edit = rng.choice(SCENARIOS)
        path, detail, names = edit(params, rng)
        if rng.random() < 0.3:  # and a nearby value elsewhere
            leaves_now = [(p, v) for p, v in walk(params) if p and not isinstance(v, (dict, list))]
            other, value = rng.choice(leaves_now)
            new = nearby(rng, value)
            put(params, other, new)
            detail += f"; and {dotted(other)} = {_short(new)} (was {_short(value)})"
            names = names + [dotted(other)]
        return path, detail, names, dump(params)
    raise ValueError(family)


def _enum_paths(params, schema):
    """(path, allowed values) of the leaves the schema gives an enum (or a registry chooses)."""
    from nuwa.backbones import backbone_kinds
    from nuwa.datasets import dataset_kinds

    found = []
    for path, value in walk(params):
        if not path or isinstance(value, (dict, list)):
            continue
        key = path[-1]
        if key == "kind" and path[0] == "backbones":
            found.append((path, backbone_kinds()))
        elif key == "kind" and path[0] == "datasets":
            found.append((path, dataset_kinds()))
        elif key == "kind" and path[0] == "tasks":
            found.append((path, ["forecast", "super_resolution"]))
        elif key == "size":
            found.append((path, ["small", "reference"]))
        elif key == "method":
            found.append((path, ["none", "saliency", "random", "random_matched", "saliency_inverted", "mixup"]))
        elif key in ("objective",) or (len(path) >= 2 and path[-2] == "objectives"):
            found.append((path, ["reconstruct", "masked", "next_frame"]))
        elif key == "subset":
            found.append((path, ["recent", "seeded"]))
        elif len(path) >= 2 and path[-2] == "baselines":
            found.append((path, ["persistence", "optical_flow"]))
    return found


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + f"... ({len(text)} characters)"


# --- YAML-level mutations: edits of the text itself


@functools.lru_cache(maxsize=1)
def _key_nodes(text):
    """(path, key node, value node) of every mapping entry of the composed ``text``."""
    found = []

    def visit(node, path):
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = path + (key.value,)
                found.append((child, key, value))
                visit(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                found.append((path + (index,), None, item))
                visit(item, path + (index,))

    visit(yaml.compose(text, Loader=yaml.SafeLoader), ())
    return found


def _inline(node) -> bool:
    """A node written on one line (a scalar or a flow collection): its text can be replaced in place."""
    return isinstance(node, yaml.ScalarNode) or (getattr(node, "flow_style", False)
                                                 and node.start_mark.line == node.end_mark.line)


def _replace(text, node, new):
    return text[:node.start_mark.index] + new + text[node.end_mark.index:]


TAGGED = ["!!str", "!!int", "!!float", "!!bool", "!!null", "!!binary", "!!timestamp", "!!python/object:os.system",
          "!!python/name:os.system", "!custom", "!!set", "!!map", "!!seq", "!<tag:yaml.org,2002:int>", "!!omap",
          "!!merge", "!!value"]
IMPLICIT = ["yes", "no", "on", "off", "Y", "~", "0x10", "0o10", "010", "1_0", "1:30", ".5", "+6", "6.", "1e3", "1.0e+3",
            "2020-01-01", "2020-01-01 10:00:00", "'6'", '"6"', ".NaN", "-.inf", "0b101", "1,000", "null", "NULL",
            "=", "<<", "|\n  6", ">-\n  6", "[]", "{}", "'' ", "- 6"]


def _yaml_mutation(rng: random.Random):
    """(path, detail, names, text, yaml_level, raw) of a mutation of the file's text."""
    text = base_text()
    entries = _key_nodes(text)
    inline = [(path, key, value) for path, key, value in entries if _inline(value)]
    keyed = [(path, key, value) for path, key, value in entries if key is not None]
    how = rng.choice(["alias", "alias", "merge", "merge", "undefined_alias", "duplicate_key", "duplicate_flow_key",
                      "tag", "tag", "implicit", "implicit", "syntax", "syntax", "encoding", "shape", "bomb", "deep",
                      "anchor_only", "alias_cycle", "complex_key", "extends"])
    if how == "alias":  # a value written as an alias of an earlier one (of another key)
        (p1, k1, v1), (p2, k2, v2) = sorted(rng.sample(inline, 2), key=lambda e: e[2].start_mark.index)
        if v2.start_mark.index < v1.end_mark.index:
            return _yaml_mutation(rng)
        new = _replace(text, v2, "*m")
        new = new[:v1.start_mark.index] + "&m " + new[v1.start_mark.index:]
        return (p2, f"{dotted(p2)} = *m, an alias of {dotted(p1)} ({text[v1.start_mark.index:v1.end_mark.index]})",
                [dotted(p2)], new, False, False)
    if how in ("merge", "anchor_only"):  # `<<: *m` (every key of another mapping) in a mapping
        maps = [(path, key, value) for path, key, value in keyed if isinstance(value, yaml.MappingNode)]
        (p1, k1, v1), (p2, k2, v2) = sorted(rng.sample(maps, 2), key=lambda e: e[2].start_mark.index)
        if p2[:len(p1)] == p1:
            return _yaml_mutation(rng)
        anchor_at = v1.start_mark.index if v1.flow_style else k1.end_mark.index + 1
        if v2.flow_style:
            edit_at, insert = v2.start_mark.index + 1, "<<: *m, "
        else:
            first = v2.value[0][0]
            edit_at = first.start_mark.index - first.start_mark.column
            insert = " " * first.start_mark.column + "<<: *m\n"
        if how == "anchor_only":
            insert, detail = "", f"an anchor &m on {dotted(p1)}, never used"
        else:
            detail = f"{dotted(p2)} merges {dotted(p1)} (<<: *m)"
        new = text[:edit_at] + insert + text[edit_at:]
        new = new[:anchor_at] + (" &m" if not v1.flow_style else "&m ") + new[anchor_at:]
        return p2, detail, [dotted(p2), dotted(p1)], new, False, False
    if how == "undefined_alias":
        path, key, value = rng.choice(inline)
        return path, f"{dotted(path)} = *nowhere (no such anchor)", [dotted(path)], _replace(text, value, "*nowhere"), \
            True, False
    if how == "duplicate_key":  # a key line written again below itself, another value
        block = [(p, k, v) for p, k, v in keyed if _inline(v)
                 and not text[k.start_mark.index - k.start_mark.column:k.start_mark.index].strip()]
        path, key, value = rng.choice(block)
        line_start = key.start_mark.index - key.start_mark.column
        line_end = text.index("\n", value.end_mark.index) + 1
        original = text[line_start:line_end]
        repeated = original.replace(text[value.start_mark.index:value.end_mark.index], rng.choice(["0", "x", "[]"]),
                                    1) if isinstance(value, yaml.ScalarNode) else original
        new = text[:line_end] + repeated + text[line_end:]
        return path, f"{dotted(path)} written twice (lines {key.start_mark.line + 1} and {key.start_mark.line + 2})", [
            dotted(path), dotted(path[:-1]), str(path[-1])], new, True, False
    if how == "duplicate_flow_key":
        flows = [(p, k, v) for p, k, v in keyed if isinstance(v, yaml.MappingNode) and v.flow_style and v.value]
        path, key, value = rng.choice(flows)
        first_key = value.value[0][0].value
        new = text[:value.end_mark.index - 1] + f", {first_key}: x" + text[value.end_mark.index - 1:]
        return path + (first_key,), f"{dotted(path)}.{first_key} written twice in one flow mapping", [
            dotted(path), first_key], new, True, False
    if how == "tag":
        path, key, value = rng.choice(inline)
        tag = rng.choice(TAGGED)
        written = text[value.start_mark.index:value.end_mark.index]
        if tag in ("!!set", "!!map", "!!omap") and isinstance(value, yaml.ScalarNode):
            written = "{" + written + "}" if tag != "!!omap" else "[a: " + written + "]"
        return path, f"{dotted(path)} = {tag} {written}", [dotted(path)], _replace(text, value, f"{tag} {written}"), \
            True, False
    if how == "implicit":
        path, key, value = rng.choice([e for e in inline if isinstance(e[2], yaml.ScalarNode)])
        written = rng.choice(IMPLICIT)
        if "\n" in written:
            indent = " " * ((key.start_mark.column if key is not None else value.start_mark.column) + 2)
            written = written.replace("\n  ", "\n" + indent)
        return path, f"{dotted(path)} written {written!r}", [dotted(path)], _replace(text, value, written), True, False
    if how == "syntax":
        lines = text.splitlines(keepends=True)
        body = [i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")]
        at = rng.choice(body)
        kind = rng.choice(["tab", "colon", "bracket", "dedent", "indent", "truncate", "document", "directive",
                           "quote", "bom", "crlf", "flow_open", "comment_value", "key_only", "dash", "percent"])
        line = lines[at]
        if kind == "tab":
            lines[at] = "\t" + line.lstrip(" ") if line.startswith(" ") else "\t" + line
        elif kind == "colon":
            lines[at] = line.replace(":", "", 1)
        elif kind == "bracket":
            lines[at] = line.replace("]", "", 1) if "]" in line else line.replace("}", "", 1) if "}" in line else \
                line.rstrip("\n") + " ]\n"
        elif kind == "dedent":
            lines[at] = line[1:] if line.startswith(" ") else " " + line
        elif kind == "indent":
            lines[at] = "   " + line
        elif kind == "truncate":
            lines = lines[:at] + [line[:len(line) // 2]]
            try:
                kept = yaml.safe_load("".join(lines[:at])) if at else None
            except yaml.YAMLError:
                kept = None
            cut = [key for key in _base_params() if not isinstance(kept, dict) or key not in kept]
        elif kind == "document":
            lines.insert(at, "---\n")
        elif kind == "directive":
            lines.insert(0, rng.choice(["%YAML 1.1\n---\n", "%YAML 2.0\n---\n", "%TAG ! tag:x,2000:\n---\n"]))
        elif kind == "quote":
            lines[at] = line.rstrip("\n") + ' "\n'
        elif kind == "bom":
            lines[0] = "\ufeff" + lines[0]
        elif kind == "crlf":
            lines = [item.replace("\n", "\r\n") for item in lines]
        elif kind == "flow_open":
            lines[at] = line.replace(": ", ": {", 1)
        elif kind == "comment_value":
            lines[at] = re.sub(r":\s+(.*)$", r": # \1", line.rstrip("\n"), count=1) + "\n"
        elif kind == "key_only":
            lines[at] = line.split(":")[0].rstrip() + "\n"
        elif kind == "dash":
            lines[at] = line.replace(line.lstrip(), "- " + line.lstrip(), 1)
        elif kind == "percent":
            lines[at] = line.replace(": ", ": %", 1) if ": " in line else "%" + line
        path = _path_at_line(entries, at)
        names = [dotted(path), str(path[-1]) if path else ""] + (cut if kind == "truncate" else [])
        return path, f"line {at + 1} ({line.strip()!r}): {kind}", names, "".join(lines), True, False
    if how == "encoding":
        kind = rng.choice(["latin1", "nul", "control", "empty", "comments", "utf16", "surrogate", "lone_bytes"])
        if kind == "latin1":  # a value in latin-1: not UTF-8
            return ("train", "subset"), "train.subset = 'r\\xe9cent' written in latin-1 (not UTF-8)", [], \
                text.replace("subset: recent", "subset: r\xe9cent", 1), True, True
        if kind == "lone_bytes":
            return (), "bytes \\xff\\xfe at the start of the file", [], "\xff\xfe" + text, True, True
        if kind == "utf16":
            data = text.encode("utf-16")
            return (), "the file written in UTF-16 (with its BOM)", [], data.decode("latin-1"), True, True
        if kind == "nul":
            return ("train", "subset"), "a NUL character in train.subset", [], \
                text.replace("subset: recent", "subset: rec\x00ent", 1), True, False
        if kind == "control":
            return ("train", "subset"), "a control character (\\x07) in train.subset", [], \
                text.replace("subset: recent", "subset: rec\x07ent", 1), True, False
        if kind == "surrogate":
            return ("train", "subset"), 'train.subset = "\\ud800" (an escaped lone surrogate)', [], \
                text.replace("subset: recent", 'subset: "\\ud800"', 1), True, False
        if kind == "empty":
            return (), "an empty file", [], "", True, False
        return (), "a file of comments only", [], "# nothing\n# here\n", True, False
    if how == "shape":
        new = rng.choice(["- grid\n- datasets\n", "42\n", "just text\n", "[]\n", "{}\n", "null\n", "!!binary aGk=\n",
                          "? [a, b]\n: c\n", "'grid': 1\n"])
        return (), f"the whole file is {new!r}", [], new, True, False
    if how == "bomb":  # a billion laughs: nine levels of nine aliases (anchors under an unknown key first)
        target = rng.choice([("grid", "seeds"), ("evaluation", "fss_scales"), ("saliency", "layers"),
                             ("datasets", "moving_glyphs", "csi_thresholds"), ("diagnostics", "layer_choices"),
                             ("grid", "train_percents"), ("evaluation", "comparisons")])
        levels = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
        for level in range(1, 9):
            levels.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]")
        node = [v for p, k, v in entries if p == target][0]
        used = rng.random() < 0.8
        new = _replace(text, node, "[*a8, *a8, *a8]") if used else text
        new = "x_anchors: {" + ", ".join(levels) + "}\n" + new
        detail = (f"{dotted(target)} = three aliases of a 9^9-item nested list (a billion laughs)" if used else
                  "a billion laughs under an unknown top-level key, used nowhere")
        return target if used else ("x_anchors",), detail, [dotted(target), "x_anchors"], new, True, False
    if how == "deep":
        depth = rng.choice([100, 1000, 10000, 100000])
        path, key, value = rng.choice(inline)
        return path, f"{dotted(path)} = a list nested {depth} deep", [dotted(path)], \
            _replace(text, value, "[" * depth + "1" + "]" * depth), True, False
    if how == "alias_cycle":
        path, key, value = rng.choice([e for e in inline if e[1] is not None])
        return path, f"{dotted(path)} = &loop [*loop] (a list that contains itself)", [dotted(path)], \
            _replace(text, value, "&loop [*loop]"), True, False
    if how == "complex_key":
        path, key, value = rng.choice(keyed)
        written = rng.choice(["[a, b]", "{a: 1}", "1.5", "null", "true", "2020-01-01", "0x1"])
        replacement = f"? {written}\n" + " " * key.start_mark.column + ":" if written.startswith(("[", "{")) \
            else written
        new = text[:key.start_mark.index] + replacement + text[key.end_mark.index:]
        return path, f"the key {dotted(path)} written {written!r}", [dotted(path[:-1]), dotted(path), written], new, \
            True, False
    if how == "extends":
        base = rng.choice(["params.yaml", "./params.yaml", "nowhere.yaml", "/dev/null", "/etc/hostname", "/dev/zero",
                           "..", "", "[1]", "/proc/self/environ", "tiny.yaml", "*/params.yaml"])
        written = json.dumps(base) if base not in ("[1]",) else base
        return ("extends",), f"extends: {base!r} at the top of the file", ["extends", base], \
            f"extends: {written}\n" + text, True, False
    raise ValueError(how)


def _path_at_line(entries, line):
    """The key path of the entry written on ``line`` (0-based), or of the nearest one above it."""
    best = ()
    for path, key, value in entries:
        node = key if key is not None else value
        if node.start_mark.line <= line:
            if not best or node.start_mark.line >= best[1]:
                best = (path, node.start_mark.line)
    return best[0] if best else ()


FAMILIES = (("type", 14), ("bounds", 12), ("nearby", 14), ("enum", 5), ("name", 10), ("delete", 8),
            ("unknown_key", 6), ("nesting", 7), ("list", 7), ("swap", 6), ("scenario", 12), ("yaml", 18))


def mutation(seed: int, index: int) -> Mutation:
    """Mutation ``index`` of ``seed`` (the same one on every machine and Python)."""
    rng = random.Random(f"{seed}/{index}")
    family = rng.choices([name for name, _ in FAMILIES], [weight for _, weight in FAMILIES])[0]
    if family == "yaml":
        path, detail, names, text, yaml_level, raw = _yaml_mutation(rng)
    else:
        path, detail, names, text = _dict_mutation(rng, family)
        yaml_level, raw = False, False
    return Mutation(seed, index, family, dotted(path) if path else "", detail, text, [n for n in names if n],
                    yaml_level, raw)


# ---------------------------------------------------------------------------------------------
# Outcome 1: `nuwa validate`


@dataclass
class Verdict:
    index: int
    outcome: str          # refused | accepted | third
    why: str = ""         # for a third outcome: traceback, several_lines, unnamed, hang, crash, exit_<n>, ...
    status: int | None = None
    err: str = ""          # what validate printed on stderr (or the traceback)
    seconds: float = 0.0


ENTRY_SECTIONS = ("datasets", "tasks", "variants", "backbones", "upstreams")


class _Alarm(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Alarm()


def names_the_key(line: str, mutation: Mutation) -> bool:
    """Does a refusal ``line`` (after ``nuwa validate: error: params.yaml: ``) name what the mutation changed?"""
    message = line.split(f"{PARAMS_NAME}: ", 1)[1] if f"{PARAMS_NAME}: " in line else line
    head = message.split(": ", 1)[0]
    if mutation.yaml_level and re.search(r"\bline \d+|lines \d+", message):
        return True
    candidates = [mutation.path, *mutation.names]
    for candidate in filter(None, candidates):
        if candidate in message:
            return True
        # a named entry (datasets.x, variants.y, ...) judged through the grid list that names it
        if head == f"grid.{candidate.split('.')[0]}" and candidate.split(".")[0] in ENTRY_SECTIONS:
            return True
        parts, head_parts = candidate.split("."), head.split(".") if head else []
        # the refusal's key is the mutated one, its parent, a list above it, or a key inside it
        if head_parts and head_parts == parts[:len(head_parts)] and (
                len(head_parts) >= len(parts) - 1 or all(p.isdigit() for p in parts[len(head_parts):])):
            return True
        if head_parts and head_parts[:len(parts)] == parts:
            return True
        # or the mutated key's own name (e.g. "missing required key 'height'")
        words = [p for p in parts if not p.isdigit()]
        if words and re.search(rf"(?<![\w.])'?{re.escape(words[-1])}'?(?![\w])", message):
            return True
    return False


def judge_validation(mutation: Mutation, status, out: str, err: str) -> tuple[str, str]:
    """(outcome, why) of `nuwa validate` on the mutation."""
    lines = [line for line in err.splitlines() if line.strip()]
    if status == 0:
        return ("accepted", "") if not lines else ("third", "accepted_with_stderr")
    if status != 2:
        return "third", f"exit_{status}"
    if len(lines) != 1:
        return "third", "several_lines"
    # the file (or a file it extends, which the mutation names)
    named = lines[0].removeprefix("nuwa validate: error: ").split(": ", 1)[0]
    if not lines[0].startswith("nuwa validate: error: ") or (named != PARAMS_NAME and named not in mutation.names):
        return "third", "no_file_named"
    if not mutation.path:  # the whole file: no key to name
        return "refused", ""
    # the file's size (a huge list or text): the file is the culprit
    if lines[0].removeprefix("nuwa validate: error: ").split(": ", 1)[-1].startswith("larger than"):
        return "refused", ""
    if not names_the_key(lines[0], mutation):
        return "third", "key_not_named"
    return "refused", ""


def validate_in_process(mutation: Mutation, directory: Path) -> Verdict:
    """`nuwa validate --params params.yaml` in ``directory`` (the current one is changed), in this process."""
    from nuwa.cli import main

    os.chdir(directory)
    (directory / PARAMS_NAME).write_bytes(mutation.data())
    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(VALIDATE_TIMEOUT_S)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            status = main(["validate", "--params", PARAMS_NAME])
    except _Alarm:
        return Verdict(mutation.index, "third", "hang", None, f"no answer within {VALIDATE_TIMEOUT_S} s",
                       time.monotonic() - started)
    except BaseException as exc:  # noqa: BLE001 (the point: nothing may escape)
        signal.alarm(0)
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-6))
        return Verdict(mutation.index, "third", f"traceback:{type(exc).__name__}", None, text[-3000:],
                       time.monotonic() - started)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    outcome, why = judge_validation(mutation, status, out.getvalue(), err.getvalue())
    return Verdict(mutation.index, outcome, why, status, err.getvalue()[-3000:], time.monotonic() - started)


def _limit_memory(limit):
    """A child's limits: ``limit`` bytes of address space, files of at most FILE_LIMIT bytes, lower priority."""
    def apply():
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))
        os.nice(5)
    return apply


def _worker_env():
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("NUWA_THREADS", "1")
    env.pop("NUWA_DEBUG", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


def validate_all(seed: int, indices: list[int], progress=None) -> dict[int, Verdict]:
    """Every mutation of ``indices`` through `nuwa validate`, in worker processes (one at a time,
    each limited to VALIDATE_MEMORY of address space; a new one after a crash or a hang)."""
    verdicts: dict[int, Verdict] = {}
    pending = list(indices)
    with tempfile.TemporaryDirectory(prefix="nuwa-mutations-") as directory:
        while pending:
            # stderr to a file: a full pipe would stop a worker that prints (a library's warnings)
            errors = open(Path(directory) / "worker.err", "w+")
            process = subprocess.Popen([sys.executable, str(HERE / "mutations.py"), "_validate_worker", str(seed),
                                        directory], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                       cwd=directory, env=_worker_env(), preexec_fn=_limit_memory(VALIDATE_MEMORY),
                                       stderr=errors)
            process.stdin.write(" ".join(map(str, pending)) + "\n")
            process.stdin.flush()
            current = pending[0]
            started = time.monotonic()
            while pending:
                ready, _, _ = select.select([process.stdout], [], [], 1.0)
                if ready:
                    line = process.stdout.readline()
                    if not line:
                        break  # the worker died
                    verdict = Verdict(**json.loads(line))
                    verdicts[verdict.index] = verdict
                    pending.remove(verdict.index)
                    if progress:
                        progress(verdict)
                    current = pending[0] if pending else None
                    started = time.monotonic()
                elif time.monotonic() - started > VALIDATE_TIMEOUT_S * 3 + 30:
                    process.kill()
                    break
            if not pending:
                process.stdin.close()
                process.wait()
                errors.close()
                break
            process.kill()
            process.wait()
            errors.seek(0)
            stderr = errors.read()
            errors.close()
            why = "hang" if process.returncode == -signal.SIGKILL else f"crash_{process.returncode}"
            verdicts[current] = Verdict(current, "third", why, process.returncode, stderr[-3000:],
                                        time.monotonic() - started)
            pending.remove(current)
            if progress:
                progress(verdicts[current])
    return verdicts


def _validate_worker(seed: int, directory: str) -> None:
    indices = [int(i) for i in sys.stdin.readline().split()]
    real_stdout = sys.stdout
    for index in indices:
        mutation_dir = Path(directory) / "m"
        mutation_dir.mkdir(exist_ok=True)
        for child in mutation_dir.iterdir():
            if child.is_file():
                child.unlink()
        real_stdout.write(json.dumps(asdict(validate_in_process(mutation(seed, index), mutation_dir))) + "\n")
        real_stdout.flush()


# ---------------------------------------------------------------------------------------------
# Outcome 2: every stage of the grid, as Snakemake would run it


def pipeline_jobs(params: dict, params_file: str = PARAMS_NAME) -> list[dict]:
    """Every job of the grid: {stage, wildcards, argv (for nuwa.cli.main), outputs}, in the stage table's order."""
    import shlex

    from nuwa import grid
    from nuwa.stages import STAGES, _dvc_matrix_axes, _render

    jobs = []
    for stage in STAGES.values():
        choices = [{}]
        for axis in _dvc_matrix_axes(stage.axes):
            choices = [{**c, **choice} for c in choices for choice in grid.axis_choices(params, axis)]
        for wildcards in choices:
            values = {axis: str(value) for axis, value in wildcards.items()}
            command = _render(stage, lambda axis: values.get(axis, "{" + axis + "}"))
            argv = shlex.split(command)[1:] + ["--params", params_file, "--threads", "1", "--mem-mb",
                                               str(stage.mem_mb), "--mem-rule", stage.name]
            outputs = []
            for spec in stage.outputs.values():
                outputs += spec.files(params) if spec.files else [spec.path.format(**values)]
            jobs.append({"stage": stage.name, "wildcards": values, "argv": argv, "outputs": outputs})
    return jobs


def wrong_results(params_file: str) -> list[str]:
    """What a finished run holds that its params do not say (in the current folder): a cell's
    metrics.json for another cell or budget, a metric that is not finite, a summary row missing
    or counting other seeds, a file outside data/ and results/."""
    import pandas as pd

    from nuwa import grid
    from nuwa.config import load_params

    params = load_params(params_file)
    problems = []
    for cell in grid.train_cells(params):
        metrics = json.loads(Path(cell.file("metrics.json")).read_text())
        for axis in grid.AXES:
            if metrics.get(axis) != getattr(cell, axis):
                problems.append(f"{cell.file('metrics.json')}: {axis} {metrics.get(axis)!r} (the cell's: "
                                f"{getattr(cell, axis)!r})")
        if metrics.get("steps") != grid.train_steps(params, cell.dataset):
            problems.append(f"{cell.file('metrics.json')}: steps {metrics.get('steps')!r} (params: "
                            f"{grid.train_steps(params, cell.dataset)})")
        if metrics.get("method") != params["variants"][cell.variant]["method"]:
            problems.append(f"{cell.file('metrics.json')}: method {metrics.get('method')!r}")
        for name in ("mse", "mae"):
            if not isinstance(metrics.get(name), (int, float)) or not math.isfinite(metrics[name]):
                problems.append(f"{cell.file('metrics.json')}: {name} {metrics.get(name)!r}")
    summary = pd.read_csv(grid.SUMMARY_CSV, keep_default_na=False, na_values=[""])  # a name may be 'nan' or 'null'
    settings = {(c.dataset, c.task, c.train_percent, c.backbone, c.variant) for c in grid.train_cells(params)}
    trained = summary[summary["variant"] != "-"]  # not the baselines' rows (variant -)
    rows = {(d, t, int(p), b, v) for d, t, p, b, v in trained[["dataset", "task", "train_percent", "backbone",
                                                                "variant"]].itertuples(index=False, name=None)}
    if rows != settings:
        problems.append(f"{grid.SUMMARY_CSV}: rows {sorted(rows - settings, key=str)[:4]} not in the grid, "
                        f"settings {sorted(settings - rows, key=str)[:4]} without a row")
    elif set(trained["seeds"]) != {len(params["grid"]["seeds"])}:
        problems.append(f"{grid.SUMMARY_CSV}: seeds {sorted(set(trained['seeds']))} (grid.seeds: "
                        f"{len(params['grid']['seeds'])})")
    # a name pandas reads as NaN by default ('nan', 'null') is lost to whoever reads the tables (the
    # figures stage included): the empty figure or missing row that follows says nothing
    names = {name for axis in ("dataset", "task", "backbone", "variant") for name in grid.axis_values(params, axis)}
    for table in sorted(Path("results").glob("*/*.csv")):
        plain = pd.read_csv(table, keep_default_na=False, dtype=str)
        read = pd.read_csv(table, dtype=str)
        for column in ("dataset", "task", "backbone", "variant"):
            if column in plain.columns:
                lost = sorted(set(plain[column][read[column].isna()]) & names)
                if lost:
                    problems.append(f"{table}: {column} {', '.join(map(repr, lost))} reads as NaN with "
                                    "pandas' defaults")
    stray = [str(p) for p in Path(".").rglob("*") if p.is_file() and p.parts[0] not in ("data", "results", ".nuwa")
             and str(p) != params_file]
    if stray:
        problems.append(f"files outside data/ and results/: {', '.join(sorted(stray)[:5])}")
    return problems


def _pipeline_worker(params_file: str) -> None:
    """Run every job in this process (the current folder); print one JSON line: how it went."""
    from nuwa.cli import main
    from nuwa.config import load_params

    started = time.monotonic()
    report = {"ok": False, "jobs": 0, "stage": None, "argv": None, "status": None, "err": "", "seconds": 0.0}
    real_stdout = sys.stdout
    from nuwa.config import ParamsError

    try:
        try:
            params = load_params(params_file)
        except ParamsError as exc:  # validate accepted it (in another process, maybe another version of the code)
            report.update(why="refused_at_run", err=str(exc))
            real_stdout.write("\n" + json.dumps(report) + "\n")
            return
        jobs = pipeline_jobs(params, params_file)
        for job in jobs:
            report.update(stage=job["stage"], argv=job["argv"])
            err = io.StringIO()
            with redirect_stdout(io.StringIO()), redirect_stderr(err):
                status = main(job["argv"])
            report["status"], report["err"] = status, err.getvalue()[-3000:]
            if status != 0:
                report["why"] = "stage_failed"
                break
            missing = [path for path in job["outputs"] if not Path(path).is_file() or Path(path).stat().st_size == 0]
            if missing:
                report.update(why="missing_output", err=f"exit 0 without (or with empty) {', '.join(missing)}")
                break
            report["jobs"] += 1
        else:
            wrong = wrong_results(params_file)
            if wrong:
                report.update(stage="results", argv=None, why="wrong_result", err="; ".join(wrong[:5]))
            else:
                report.update(ok=True, stage=None, argv=None, status=0, err="", why="")
    except BaseException as exc:  # noqa: BLE001
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-6))
        report.update(why=f"traceback:{type(exc).__name__}", err=text[-3000:])
    report["seconds"] = round(time.monotonic() - started, 1)
    real_stdout.write("\n" + json.dumps(report) + "\n")
    real_stdout.flush()


def run_pipeline(mutation: Mutation, directory: Path, timeout_s: float = PIPELINE_TIMEOUT_S) -> dict:
    """Every stage on the mutation's params, in ``directory``, in a process of its own (timeout, memory limit)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / PARAMS_NAME).write_bytes(mutation.data())
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, str(HERE / "mutations.py"), "_pipeline_worker", PARAMS_NAME],
                               cwd=directory, env=_worker_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True, preexec_fn=_limit_memory(PIPELINE_MEMORY))
    try:
        out, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        done = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
        return {"ok": False, "why": "hang", "err": f"no end within {timeout_s:.0f} s; files so far: {len(done)}",
                "seconds": round(time.monotonic() - started, 1), "stage": None}
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            report = json.loads(line)
            report["seconds"] = round(time.monotonic() - started, 1)
            return report
    return {"ok": False, "why": f"crash_{process.returncode}", "err": err[-3000:], "stage": None,
            "seconds": round(time.monotonic() - started, 1)}


# the order in which families give their accepted mutations a run: the edits that change the grid and
# the registries first (they reach code the tiny run never does), plain value changes last
RUN_PRIORITY = ("scenario", "enum", "yaml", "swap", "list", "type", "bounds", "nesting", "name", "unknown_key",
                "delete", "nearby")


def pick_runs(accepted: list[Mutation], count: int) -> list[Mutation]:
    """Up to ``count`` accepted mutations, as different as can be: one per family in RUN_PRIORITY
    order, round after round; within a family, the top-level sections it changes in turn (lowest
    index first). Deterministic."""
    families: dict[str, dict[str, list[Mutation]]] = {}
    for item in sorted(accepted, key=lambda m: m.index):
        families.setdefault(item.family, {}).setdefault(item.path.split(".")[0], []).append(item)
    turn = {family: 0 for family in families}
    chosen: list[Mutation] = []
    while len(chosen) < count and any(any(sections.values()) for sections in families.values()):
        for family in sorted(families, key=lambda f: RUN_PRIORITY.index(f) if f in RUN_PRIORITY else len(RUN_PRIORITY)):
            sections = [key for key, items in families[family].items() if items]
            if not sections:
                continue
            key = sections[turn[family] % len(sections)]
            turn[family] += 1
            chosen.append(families[family][key].pop(0))
            if len(chosen) == count:
                break
    return chosen


# ---------------------------------------------------------------------------------------------
# Failure classes (for the report)


def failure_class(stage: str, why: str, err: str) -> str:
    """A short key that groups third outcomes of the same cause."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    frame = ""
    for line in reversed(lines):
        match = re.match(r'\s*File "([^"]*/(nuwa|yaml|jsonschema|numpy|torch)/[^"]*)", line (\d+), in (\S+)', line)
        if match:
            frame = f"{match.group(1).split('/site-packages/')[-1].split('/main/')[-1]}:{match.group(4)}"
            break
    last = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", last)
    last = re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "N", last)
    return f"{stage}|{why}|{frame}|{last[:140]}"


def _campaign(seed: int, count: int, runs: int, report_path: str | None, families: list[str] | None = None) -> None:
    """Validate ``count`` mutations, run ``runs`` of the accepted ones (of ``families`` only, if
    given); print the failures grouped by class."""
    started = time.monotonic()
    verdicts = validate_all(seed, list(range(count)),
                            progress=lambda v: print(f"{v.index} {v.outcome} {v.why}", file=sys.stderr)
                            if v.outcome == "third" else None)
    validate_seconds = time.monotonic() - started
    mutations = {i: mutation(seed, i) for i in range(count)}
    accepted = [mutations[i] for i, v in verdicts.items() if v.outcome == "accepted"]
    candidates = pick_runs([m for m in accepted if not families or m.family in families], len(accepted))
    run_reports, refused_at_run = {}, {}
    with tempfile.TemporaryDirectory(prefix="nuwa-mutation-runs-") as root:
        for item in candidates:
            if len(run_reports) == runs:
                break
            report = run_pipeline(item, Path(root) / str(item.index))
            print(f"run {item.describe()}: {'ok' if report['ok'] else report.get('why')} "
                  f"({report['seconds']} s)", file=sys.stderr, flush=True)
            if report.get("why") == "refused_at_run":  # the code changed since: validate refuses it now
                refused_at_run[item.index] = report["err"]
                continue
            run_reports[item.index] = report
    classes: dict[str, list] = {}
    for index, verdict in verdicts.items():
        if verdict.outcome == "third":
            classes.setdefault(failure_class("validate", verdict.why, verdict.err), []).append(index)
    for index, report in run_reports.items():
        if not report["ok"]:
            key = failure_class(report.get("stage") or "run", report.get("why", ""), report.get("err", ""))
            classes.setdefault(key, []).append(index)
    def output(index):  # what the first of a class printed: validate's error, or the failed stage's
        return run_reports[index]["err"] if index in run_reports else verdicts[index].err

    summary = {
        "seed": seed, "tried": count,
        "refused": sum(v.outcome == "refused" for v in verdicts.values()),
        "accepted": len(accepted),
        "third_at_validate": sum(v.outcome == "third" for v in verdicts.values()),
        "runs": len(run_reports), "runs_ok": sum(r["ok"] for r in run_reports.values()),
        "validate_seconds": round(validate_seconds, 1),
        "run_seconds": [r["seconds"] for r in run_reports.values()],
        "families": {name: sum(m.family == name for m in mutations.values()) for name, _ in FAMILIES},
        "classes": {key: {"count": len(indices), "indices": indices[:20], "example": mutations[indices[0]].describe(),
                          "output": output(indices[0])[-1500:]}
                    for key, indices in sorted(classes.items(), key=lambda kv: -len(kv[1]))},
        "runs_detail": {i: {"mutation": mutations[i].describe(), **r} for i, r in run_reports.items()},
        "refused_at_run": {i: {"mutation": mutations[i].describe(), "err": e} for i, e in refused_at_run.items()},
    }
    text = json.dumps(summary, indent=1, default=str)
    if report_path:
        Path(report_path).write_text(text)
    print(text)


def main(argv: list[str]) -> None:
    command, *rest = argv
    if command == "_validate_worker":
        _validate_worker(int(rest[0]), rest[1])
    elif command == "_pipeline_worker":
        _pipeline_worker(rest[0])
    elif command == "show":
        item = mutation(int(rest[0]), int(rest[1]))
        print(item.describe(), file=sys.stderr)
        sys.stdout.buffer.write(item.data())
    elif command == "check":
        item = mutation(int(rest[0]), int(rest[1]))
        print(item.describe())
        verdict = validate_all(item.seed, [item.index])[item.index]
        print(f"validate: {verdict.outcome} {verdict.why}\n{verdict.err}")
        if verdict.outcome == "accepted":
            with tempfile.TemporaryDirectory(prefix="nuwa-mutation-run-") as root:
                print(json.dumps(run_pipeline(item, Path(root)), indent=1))
    elif command == "campaign":
        report = rest[rest.index("--report") + 1] if "--report" in rest else None
        families = rest[rest.index("--families") + 1].split(",") if "--families" in rest else None
        _campaign(int(rest[0]), int(rest[1]), int(rest[2]), report, families)
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main(sys.argv[1:])
