"""Load and validate params.yaml: one schema, one set of checks, for Snakemake, DVC and `nuwa`.

Every error is a :class:`ParamsError` whose message names the file, the key (as a dotted
path), the bad value and what is allowed, so a typo is fixed without reading code.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_FILE = "params.schema.yaml"


class ParamsError(ValueError):
    """params.yaml is missing, malformed or inconsistent."""


def load_schema() -> dict:
    text = resources.files("nuwa").joinpath("schemas", SCHEMA_FILE).read_text()
    return yaml.safe_load(text)


EXTENDS = "extends"  # an experiment file's key: the params file it overlays (a path relative to it)


def load_params(path: str | Path = "params.yaml") -> dict:
    """The validated parameters of ``path``. A file with ``extends: <file>`` (an experiment file,
    e.g. experiments/table1_cpu.yaml with ``extends: ../params.yaml``) overlays that file:
    mappings merge key by key, any other value (a list, a number) replaces the base's; the
    merged parameters are validated as one file."""
    path = Path(path)
    params, bases = _read_params_file(path, ())
    source = str(path) + (f" (extends {' -> '.join(map(str, bases))})" if bases else "")
    validate_params(params, source=source)
    return params


def _read_params_file(path: Path, chain: tuple[Path, ...]) -> tuple[object, list[Path]]:
    """(the file's parameters with the files it extends overlaid, the files it extends in order)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        where = f" (named by {EXTENDS!r} in {chain[-1]})" if chain else ""
        raise ParamsError(f"{path}: parameter file not found{where}") from None
    try:
        params = yaml.safe_load(text)
        duplicate = _duplicate_key(yaml.compose(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if duplicate:
        raise ParamsError(f"{path}: {duplicate}")
    if not isinstance(params, dict) or EXTENDS not in params:
        return params, []
    base = params.pop(EXTENDS)
    if not isinstance(base, str) or not base:
        raise ParamsError(f"{path}: {EXTENDS}: expected the path of the params file this one overlays "
                          f"(relative to {path.parent or '.'}), got {base!r}")
    base_path = path.parent / base
    if base_path.resolve() in (*chain, path.resolve()):
        raise ParamsError(f"{path}: {EXTENDS}: {base!r} extends this file again (a cycle)")
    if len(chain) >= 8:
        raise ParamsError(f"{path}: {EXTENDS}: more than 8 files deep")
    merged, bases = _read_params_file(base_path, (*chain, path.resolve()))
    if not isinstance(merged, dict):
        raise ParamsError(f"{base_path}: expected a mapping of keys at the top level (named by {EXTENDS!r} in {path})")
    return overlay(merged, params), [base_path, *bases]


def with_overrides(params: dict, overrides: dict, source: str) -> dict:
    """``params`` with command-line overrides (``snakemake --config key=value``) merged in and
    validated as one file. Snakemake hands nested values over as strings (``train={"steps": 10}``
    gives ``"10"``): every string that YAML reads as a number, a boolean or null is typed as the
    same text would be in params.yaml. Errors name ``source`` (the command line), not the file."""
    def typed(value):
        if isinstance(value, dict):
            return {key: typed(item) for key, item in value.items()}
        if isinstance(value, list):
            return [typed(item) for item in value]
        if isinstance(value, str):
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                return value
            return parsed if parsed is None or isinstance(parsed, (bool, int, float)) else value
        return value

    merged = overlay(params, typed(dict(overrides)))
    validate_params(merged, source=source)
    return merged


def write_params(params: dict, path: str | Path = ".nuwa/params.yaml", source: str = "params.yaml") -> Path:
    """``params`` (validated, merged: an experiment file's overlay, command-line overrides) as the
    one file every job of a Snakemake run reads. Its path never changes, so that a job's rerun
    follows the stage's own params keys, never the file's name; it is rewritten only when its
    text changes."""
    from nuwa.io import write_text

    path = Path(path)
    text = (f"# written by the workflow from {source}: the parameters every job of the run reads; "
            "edit params.yaml, not this file\n" + yaml.safe_dump(params, sort_keys=False))
    if not path.exists() or path.read_text() != text:
        write_text(text, path)
    return path


def overlay(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` applied: mappings merged key by key, other values replaced (a new dict)."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = overlay(merged[key], value)
        else:
            merged[key] = value
    return merged


def _duplicate_key(node, path=(), done=None) -> str | None:
    """The first key that appears twice in one mapping (YAML would silently keep the last)."""
    done = set() if done is None else done
    if id(node) in done:  # an alias of a node already checked (no exponential walk)
        return None
    done.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key in seen:
                where = _dotted(path) if path else "top level"
                return (f"{where}: key {key!r} appears twice (lines {seen[key]} and {key_node.start_mark.line + 1}; "
                        "allowed: each key once)")
            seen[key] = key_node.start_mark.line + 1
            found = _duplicate_key(value_node, path + (key,), done)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found = _duplicate_key(item, path + (index,), done)
            if found:
                return found
    return None


def _unusable_value(value, path=(), done=None, open_=None) -> str | None:
    """The first NaN or infinite number (YAML's .nan / .inf pass every range check) or
    container that contains itself (a YAML alias cycle)."""
    done = set() if done is None else done
    open_ = set() if open_ is None else open_
    if isinstance(value, float) and not math.isfinite(value):
        return f"{_dotted(path)}: {value!r} is not allowed (allowed: a finite number)"
    if not isinstance(value, (dict, list)):
        return None
    if id(value) in open_:
        return f"{_dotted(path)}: the value contains itself (a YAML alias cycle; allowed: plain values)"
    if id(value) in done:
        return None
    open_.add(id(value))
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        found = _unusable_value(item, path + (key,), done, open_)
        if found:
            return found
    open_.discard(id(value))
    done.add(id(value))
    return None


def _search(validator, pattern, instance, schema):
    """`pattern` with ECMA-262's `$` (end of text): Python's `$` also matches before a final
    newline, which would let a name such as 'ori\\n' through."""
    if validator.is_type(instance, "string"):
        anchored = pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith(r"\$") else pattern
        if not re.search(anchored, instance):
            yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


def _is_integer(checker, instance) -> bool:
    # JSON Schema counts 1.0 as an integer; a seed or size written 1.0 would reach argparse
    # (`--seed 1.0`) or range() and fail there, after earlier jobs ran
    return isinstance(instance, int) and not isinstance(instance, bool)


_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    validators={"pattern": _search},
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer),
)


def _dotted(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _describe(error: jsonschema.ValidationError) -> str:
    """One human sentence for a schema violation: key, bad value, what is allowed."""
    key = _dotted(error.absolute_path)
    schema = error.schema
    value = error.instance
    kind = error.validator
    if kind == "additionalProperties":
        allowed = ", ".join(sorted(schema.get("properties", {})))
        extra = sorted(set(value) - set(schema.get("properties", {})), key=str)
        where = key if error.absolute_path else "top level"
        return f"{where}: unknown key {extra[0]!r} (allowed: {allowed})"
    if kind == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return f"{key}: missing required key {missing!r}"
    if kind == "enum":
        return f"{key}: {value!r} is not allowed (allowed: {', '.join(map(repr, schema['enum']))})"
    if kind == "pattern":
        return (f"{key}: name {value!r} is not allowed (names are lower-case ASCII letters, digits and "
                f"underscores, starting with a letter, at most 48 characters: pattern {schema['pattern']})")
    if kind == "type":
        hint = ""
        if schema["type"] == "number" and isinstance(value, str) and _is_number(value):
            hint = f" (YAML reads {value} as text: write it with a decimal point, e.g. {float(value)!r})"
        elif schema["type"] == "integer" and isinstance(value, float):
            hint = " (write it without a decimal point)"
        return f"{key}: {value!r} has type {type(value).__name__}, expected {schema['type']}{hint}"
    if kind in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        bounds = []
        if "minimum" in schema:
            bounds.append(f">= {schema['minimum']}")
        if "exclusiveMinimum" in schema:
            bounds.append(f"> {schema['exclusiveMinimum']}")
        if "maximum" in schema:
            bounds.append(f"<= {schema['maximum']}")
        if "exclusiveMaximum" in schema:
            bounds.append(f"< {schema['exclusiveMaximum']}")
        return f"{key}: {value!r} is out of range (allowed: {' and '.join(bounds)})"
    if kind == "minItems":
        return f"{key}: {value!r} must have at least {schema['minItems']} item(s)"
    if kind == "minProperties":
        return f"{key}: must have at least {schema['minProperties']} entry"
    if kind == "uniqueItems":
        counts = Counter(map(repr, value))
        dupes = [item for item, count in counts.items() if count > 1]
        return f"{key}: duplicate item(s) {', '.join(dupes)} in {value!r} (items must be unique)"
    return f"{key}: {error.message}"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _deepest(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    # propertyNames errors wrap the pattern error about the name itself
    while error.context:
        error = max(error.context, key=lambda e: len(e.absolute_path))
    return error


def validate_params(params: Any, source: str = "params.yaml") -> None:
    """Raise ParamsError on the first problem found; return None when params are usable."""
    if not isinstance(params, dict):
        raise ParamsError(f"{source}: expected a mapping of keys at the top level, got {type(params).__name__}")
    unusable = _unusable_value(params)
    if unusable:
        raise ParamsError(f"{source}: {unusable}")
    for message in _moved_keys(params):
        raise ParamsError(f"{source}: {message}")
    validator = _Validator(load_schema())
    errors = sorted(validator.iter_errors(params), key=lambda e: (list(map(str, e.absolute_path)), e.validator))
    if errors:
        error = errors[0]
        if error.validator == "propertyNames":
            inner = _deepest(error)
            raise ParamsError(f"{source}: {_dotted(error.absolute_path)}: name {inner.instance!r} is not allowed "
                              "(names are lower-case ASCII letters, digits and underscores, starting with a letter, "
                              "at most 48 characters)")
        raise ParamsError(f"{source}: {_describe(error)}")
    for message in _cross_checks(params):
        raise ParamsError(f"{source}: {message}")


# Keys of the layout before seeds became one grid axis (see README, 'Migrating from replicate_seeds'),
# and figures.backbone (before the figures showed every backbone): a file written for it is refused
# with what to write instead, not with a bare 'unknown key'.
MOVED_KEYS = (
    (("seed",), "moved: the training seeds are grid.seeds (e.g. seed: 0 with replicate_seeds: [1, 2] "
                "becomes grid.seeds: [0, 1, 2]) and the upstream ViT's seed is pretrain.seed"),
    (("grid", "replicate_seeds"), "moved: list every training seed in grid.seeds (the old `seed` first)"),
    (("saliency", "environment_ratio"), "moved: the environment ratio belongs to the bank variants: set "
                                        "bank.environment_ratio (the default) or variants.<name>.environment_ratio"),
    (("figures", "backbone"), "removed: the figures show every backbone of grid.backbones; delete this key"),
)


# Keys added with the task and train-percent axes (and the figures' animation): a file written before
# them is told what to add.
NEW_KEYS = (
    (("grid", "tasks"), "new grid axis: add `tasks: [forecast]` under grid and a `tasks:` section with "
                        "`forecast: {kind: forecast}` (see params.yaml)"),
    (("grid", "train_percents"), "new grid axis: add `train_percents: [100]` under grid (all training windows)"),
    (("grid", "eval_on"), "new grid key: add `eval_on: []` under grid (datasets a trained cell is also evaluated on)"),
    (("grid", "upstreams"), "new grid key: add `upstreams: []` under grid (other upstream ViTs for ablations)"),
    (("upstreams",), "new section: `upstreams: {}` (other upstream ViTs, named by variants' `upstream`)"),
    (("tasks",), "new section: `tasks: {forecast: {kind: forecast}}` (see params.yaml)"),
    (("train", "subset"), "new key: `subset: recent` under train (which windows a train_percent below 100 keeps)"),
    (("figures", "animation_frame_ms"), "new key: `animation_frame_ms: 600` under figures (per lead time in the GIF "
                                        "of the predictions; figures.backbone goes: every backbone is shown)"),
)


def _moved_keys(params: dict):
    for keys, present in ((NEW_KEYS, False), (MOVED_KEYS, True)):  # a new key missing, an old one present
        for path, message in keys:
            value = params
            for part in path[:-1]:
                value = value.get(part) if isinstance(value, dict) else None
            if isinstance(value, dict) and (path[-1] in value) == present:
                yield f"{_dotted(path)}: {message}"


def validate_dataset_entry(name: str, entry: Any, source: str = "datasets entry") -> None:
    """Raise ParamsError on the first problem of one ``datasets:`` entry, checked exactly as
    :func:`validate_params` checks the entries of a params file (the main schema's dataset keys,
    the kind's own schema, then the checks across keys); ``nuwa inspect`` checks its suggestion
    with it."""
    schema = load_schema()
    datasets_schema = {"$defs": schema.get("$defs", {}), **schema["properties"]["datasets"]}
    errors = sorted(_Validator(datasets_schema).iter_errors({name: entry}),
                    key=lambda e: (list(map(str, e.absolute_path)), e.validator))
    if errors:
        error = errors[0]
        error.path.appendleft("datasets")
        if error.validator == "propertyNames":
            raise ParamsError(f"{source}: datasets: name {name!r} is not allowed (names are lower-case ASCII letters, "
                              "digits and underscores, starting with a letter, at most 48 characters)")
        raise ParamsError(f"{source}: {_describe(error)}")
    unusable = _unusable_value(entry, ("datasets", name))
    if unusable:
        raise ParamsError(f"{source}: {unusable}")
    for message in _dataset_checks(name, entry):
        raise ParamsError(f"{source}: {message}")


def _dataset_checks(name: str, entry: dict):
    """Checks of one dataset entry that need its kind's schema or more than one key. Yields messages."""
    from nuwa.datasets import dataset_config_schema, dataset_kinds
    from nuwa.windows import empty_split_message, split_flags

    key = f"datasets.{name}"
    kinds = dataset_kinds()
    if entry["kind"] not in kinds:
        yield f"{key}.kind: unknown dataset kind {entry['kind']!r} (registered: {', '.join(kinds)})"
        return
    kind_schema = dataset_config_schema(entry["kind"])
    validator = _Validator(kind_schema)
    kind_errors = sorted(validator.iter_errors(entry), key=lambda e: list(map(str, e.absolute_path)))
    if kind_errors:
        error = kind_errors[0]
        error.path.extendleft(reversed(["datasets", name]))
        yield _describe(error)
        return
    patch = entry["patch_size"]
    for side in ("height", "width"):
        if entry[side] % patch:
            yield (f"{key}.patch_size: {patch} does not divide {side} {entry[side]} "
                   f"(allowed: a divisor of both height {entry['height']} and width {entry['width']})")
    if "split" not in entry:  # the kind defines its own split (its schema says so): known at ingest only
        return
    split = entry["split"]
    total = split["train"] + split["val"] + split["test"]
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        yield f"{key}.split: fractions {split} sum to {total:g} (allowed: train + val + test = 1)"
        return
    if "length" in entry:  # a generated series: its frames are known now (one segment; ingest checks the rest)
        message = empty_split_message(split_flags(entry["length"], split), entry, frames_from=f"(length {entry['length']})")
        if message:
            yield f"{key}: {message}"


def _cross_checks(params: dict):
    """Checks that need more than one key, or the registries. Yields messages."""
    from nuwa.backbones import backbone_kinds
    from nuwa.grid import BANK_KNOBS, BANKLESS_METHODS, IMPORTANCE_METHODS

    grid = params["grid"]
    for section, grid_key in (("datasets", "datasets"), ("tasks", "tasks"), ("backbones", "backbones"),
                              ("variants", "variants")):
        for name in grid[grid_key]:
            if name not in params[section]:
                yield (f"grid.{grid_key}: {name!r} has no entry under {section} "
                       f"(defined: {', '.join(sorted(params[section]))})")
    for name, entry in params["datasets"].items():
        yield from _dataset_checks(name, entry)
    for name in grid["upstreams"]:
        if name not in params["upstreams"]:
            yield (f"grid.upstreams: {name!r} has no entry under upstreams "
                   f"(defined: {', '.join(sorted(params['upstreams'])) or 'none'})")
    for name, entry in params["variants"].items():
        upstream = entry.get("upstream")
        if upstream is None:
            continue
        if entry["method"] not in IMPORTANCE_METHODS:
            yield (f"variants.{name}.upstream: method {entry['method']!r} reads no saliency (only "
                   f"{', '.join(IMPORTANCE_METHODS)} do)")
        elif name in grid["variants"] and upstream not in grid["upstreams"]:
            yield (f"variants.{name}.upstream: {upstream!r} is not in grid.upstreams "
                   f"({', '.join(grid['upstreams']) or 'empty'}): add it there to pretrain it")
    for index, pair in enumerate(grid["eval_on"]):
        key = f"grid.eval_on.{index}"
        if pair["train"] not in grid["datasets"]:
            yield (f"{key}.train: {pair['train']!r} is not in grid.datasets (only trained cells can be evaluated "
                   f"elsewhere; grid.datasets: {', '.join(grid['datasets'])})")
            continue
        if pair["test"] not in params["datasets"]:
            yield (f"{key}.test: {pair['test']!r} has no entry under datasets "
                   f"(defined: {', '.join(sorted(params['datasets']))})")
            continue
        if pair["test"] == pair["train"]:
            yield f"{key}: {pair['train']!r} is evaluated on itself (its own test split is in the tables already)"
            continue
        trained, other = params["datasets"][pair["train"]], params["datasets"][pair["test"]]
        shape = ("height", "width", "input_frames", "output_frames")
        if any(trained.get(k) != other.get(k) for k in shape):
            describe = lambda entry: " x ".join(str(entry.get(k)) for k in shape)  # noqa: E731
            yield (f"{key}: datasets.{pair['train']} ({describe(trained)}) and datasets.{pair['test']} "
                   f"({describe(other)}) differ in height x width x input_frames x output_frames: a model "
                   "trained on one cannot be evaluated on the other")
    for task in grid["tasks"]:
        factor = params["tasks"].get(task, {}).get("factor")
        for name in grid["datasets"] if factor else ():
            entry = params["datasets"].get(name, {})
            for side in ("height", "width"):
                if side in entry and entry[side] % factor:
                    yield (f"tasks.{task}.factor: {factor} does not divide datasets.{name}.{side} {entry[side]} "
                           "(the inputs are block-averaged by factor x factor)")
    registered_backbones = backbone_kinds()
    for name, entry in params["backbones"].items():
        if entry["kind"] not in registered_backbones:
            yield (f"backbones.{name}.kind: unknown backbone kind {entry['kind']!r} "
                   f"(registered: {', '.join(registered_backbones)})")
    for name in params["train"].get("steps_by_dataset", {}):
        if name not in params["datasets"]:
            yield (f"train.steps_by_dataset: {name!r} has no entry under datasets "
                   f"(defined: {', '.join(sorted(params['datasets']))})")
    for index, pair in enumerate(params["evaluation"]["comparisons"]):
        for name in pair:
            if name not in params["variants"]:
                yield (f"evaluation.comparisons.{index}: {name!r} has no entry under variants "
                       f"(defined: {', '.join(sorted(params['variants']))})")
        if pair[0] == pair[1]:
            yield f"evaluation.comparisons.{index}: {pair!r} compares a variant with itself"
    for name, entry in params["variants"].items():
        if entry["method"] == "mixup" and "mixup_alpha" not in entry:
            yield (f"variants.{name}: method 'mixup' needs mixup_alpha (lambda ~ Beta(alpha, alpha); "
                   "0.2 is Zhang et al.'s choice)")
        if entry["method"] != "mixup" and "mixup_alpha" in entry:
            yield f"variants.{name}.mixup_alpha: only a variant with method 'mixup' reads it (method {entry['method']!r})"
        if entry["method"] in BANKLESS_METHODS:
            unread = sorted(set(entry) & set(BANK_KNOBS))
            if unread:
                yield (f"variants.{name}: method {entry['method']!r} builds no bank, so {', '.join(unread)} would "
                       "be ignored; remove it")
    methods = {params["variants"][v]["method"] for v in grid["variants"]}
    if "none" not in methods:
        yield "grid.variants: no variant with method 'none' (the Ori baseline every comparison needs)"
