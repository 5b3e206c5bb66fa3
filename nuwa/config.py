"""Load and validate params.yaml: one schema, one set of checks, for Snakemake, DVC and `nuwa`.

Every error is a :class:`ParamsError` whose message names the file, the key (as a dotted
path), the bad value and what is allowed, so a typo is fixed without reading code.
"""

from __future__ import annotations

import hashlib
import math
import os
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


def load_params(path: str | Path = "params.yaml", models: bool = False) -> dict:
    """The validated parameters of ``path``. A file with ``extends: <file>`` (an experiment file,
    e.g. experiments/table1_cpu.yaml with ``extends: ../params.yaml``) overlays that file:
    mappings merge key by key, any other value (a list, a number) replaces the base's; the
    merged parameters are validated as one file. ``models``: also build every backbone of the
    grid on torch's meta device (:func:`validate_params`), which imports torch: ``nuwa validate``
    does, the stages' own reads (and Snakemake's, each time it reads the file) need not."""
    path = Path(path)
    params, bases = _read_params_file(path, ())
    source = str(path) + (f" (extends {' -> '.join(map(str, bases))})" if bases else "")
    validate_params(params, source=source, models=models)
    return params


# Bounds on what a params file may hold, checked while it is read (before anything is built from
# it). params.yaml is 17 KB: 885 keys and values, 7 levels deep.
MAX_FILE_BYTES = 1 << 20
# YAML anchors and aliases are allowed (experiments/table2_cpu.yaml merges `<<: *pollutant64`),
# but every alias counts as a copy of what it names: Snakemake's JSON of a job's parameters and
# DVC's parser (dvc/parsing/context.py, which converts all of params.yaml before any stage runs)
# copy every alias out, so that a 1.6 KB "alias bomb" becomes gigabytes there.
MAX_YAML_VALUES = 100_000
MAX_YAML_DEPTH = 32  # PyYAML composes recursively: deeper nesting ends in a RecursionError


def _read_text(path: Path, chain: tuple[Path, ...]) -> str:
    """The file's text: at most MAX_FILE_BYTES bytes of UTF-8."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        where = f" (named by {EXTENDS!r} in {chain[-1]})" if chain else ""
        raise ParamsError(f"{path}: parameter file not found{where}") from None
    except IsADirectoryError:
        raise ParamsError(f"{path}: is a folder (allowed: a YAML params file)") from None
    if len(data) > MAX_FILE_BYTES:
        raise ParamsError(f"{path}: larger than {MAX_FILE_BYTES:,} bytes (allowed: a params file of at most "
                          f"{MAX_FILE_BYTES:,} bytes; params.yaml is about 17,000)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ParamsError(f"{path}: line {line}: byte 0x{data[exc.start]:02x} at offset {exc.start} is not UTF-8 text "
                          "(a binary file? allowed: a YAML text file in UTF-8)") from None


def _node_children(node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _expanded_size(node, sizes: dict) -> int:
    """Keys and values under ``node`` (itself included) with every alias copied out, memoised in
    ``sizes`` by node id: linear in the nodes, however often they are aliased. A node that
    contains itself (an alias cycle, refused after loading) counts once where it recurs."""
    if id(node) in sizes:
        return sizes[id(node)]
    stack, open_ = [(node, False)], set()
    while stack:
        current, children_done = stack.pop()
        key = id(current)
        if children_done:
            open_.discard(key)
            sizes[key] = 1 + sum(sizes.get(id(child), 1) for child in _node_children(current))
            continue
        if key in sizes or key in open_:
            continue
        open_.add(key)
        stack.append((current, True))
        stack.extend((child, False) for child in _node_children(current)
                     if id(child) not in sizes and id(child) not in open_)
    return sizes[id(node)]


class _BoundedLoader(yaml.SafeLoader):
    """yaml.safe_load's loader that counts, while it composes, the keys and values the file
    would have with every alias copied out, and how deep they nest: over MAX_YAML_VALUES or
    MAX_YAML_DEPTH it stops with a ParamsError naming the line and the key. A value that a tag
    cannot be made from (``!!float none``) is a YAML error naming its line."""

    def __init__(self, text: str, path: Path):
        super().__init__(text)
        self._path, self._values, self._sizes, self._parts = path, 0, {}, []

    def _refuse(self, problem: str):
        keys = []  # the mapping keys down to the first list item: the key a user looks for
        for part in self._parts:
            if not isinstance(part, str) or len(keys) == 6:
                break
            keys.append(part)
        raise ParamsError(f"{self._path}: {'.'.join(keys) + ': ' if keys else ''}{problem}")

    def compose_node(self, parent, index):
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(parent, yaml.MappingNode) and isinstance(index, yaml.Node):  # a value: its key
            part = index.value if isinstance(index, yaml.ScalarNode) else "?"
        elif isinstance(parent, yaml.SequenceNode):
            part = index
        else:  # the document, or a key
            part = None
        if part is not None:
            self._parts.append(part)
        try:
            if isinstance(event, yaml.AliasEvent):
                node = super().compose_node(parent, index)
                self._values += _expanded_size(node, self._sizes)
                if self._values > MAX_YAML_VALUES:
                    self._refuse(f"alias *{event.anchor} at line {line} takes the file past {MAX_YAML_VALUES:,} keys "
                                 f"and values once its aliases are copied out (an alias bomb? allowed: at most "
                                 f"{MAX_YAML_VALUES:,}, every alias counted as the copy that Snakemake and DVC make "
                                 "of it)")
                return node
            self._values += 1
            if self._values > MAX_YAML_VALUES:
                self._refuse(f"more than {MAX_YAML_VALUES:,} keys and values by line {line} (allowed: at most "
                             f"{MAX_YAML_VALUES:,} in a params file)")
            if len(self._parts) > MAX_YAML_DEPTH:
                self._refuse(f"values nested more than {MAX_YAML_DEPTH} levels deep at line {line} (allowed: at "
                             f"most {MAX_YAML_DEPTH})")
            return super().compose_node(parent, index)
        finally:
            if part is not None:
                self._parts.pop()

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep=deep)
        # e.g. float('none') for `!!float none`; PyYAML's bool and timestamp constructors raise
        # KeyError (`!!bool -1`) and AttributeError (`!!timestamp 0.2`) on a value they cannot read
        except (ValueError, TypeError, OverflowError, KeyError, AttributeError) as exc:
            why = "" if isinstance(exc, (KeyError, AttributeError)) else f": {exc}"  # theirs say nothing useful
            raise yaml.constructor.ConstructorError(
                None, None, f"{node.tag} cannot be made from {getattr(node, 'value', '')!r}{why}"
                if isinstance(node, yaml.ScalarNode) else f"{node.tag}: {exc}", node.start_mark) from None


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """One line for a YAML syntax error: where, what, and the construct it was inside."""
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        character = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return f"line {line}: not valid YAML: unacceptable character #x{character:04x}: {exc.reason}"
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: not valid YAML: {exc.problem}"
        if exc.context and exc.context_mark is not None:
            where += f" ({exc.context} at line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1})"
        elif exc.context:
            where += f" ({exc.context})"
        return where
    return "not valid YAML: " + " ".join(str(exc).split())


def _load_yaml(text: str, path: Path):
    """(the parsed file, the first duplicate key or None), bounded by _BoundedLoader."""
    try:
        loader = _BoundedLoader(text, path)  # its reader checks every character first
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: {_yaml_problem(exc, text)}") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        duplicate = _duplicate_key(node)
        return loader.construct_document(node), duplicate
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: {_yaml_problem(exc, text)}") from None
    except ParamsError as exc:  # raised deep in the composer's recursion: a short traceback (Snakemake prints it)
        raise ParamsError(str(exc)) from None
    finally:
        loader.dispose()


def _read_params_file(path: Path, chain: tuple[Path, ...]) -> tuple[object, list[Path]]:
    """(the file's parameters with the files it extends overlaid, the files it extends in order)."""
    text = _read_text(path, chain)
    params, duplicate = _load_yaml(text, path)
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


def with_overrides(params: dict, overrides: dict, source: str, models: bool = False) -> dict:
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
    validate_params(merged, source=source, models=models)
    return merged


JOB_PARAMS_FILE = ".nuwa/params.yaml"
# set by the workflow in each Snakemake process, inherited by its jobs: "<path>\t<sha256 of its text>"
JOB_PARAMS_ENV = "NUWA_JOB_PARAMS"


def job_params_text(params: dict, source: str = "params.yaml") -> str:
    """The text of the file every job of a Snakemake run reads (:func:`write_params`)."""
    return (f"# written by the workflow from {source}: the parameters every job of the run reads; "
            "edit params.yaml, not this file\n" + yaml.safe_dump(params, sort_keys=False))


def write_params(params: dict, path: str | Path = JOB_PARAMS_FILE, source: str = "params.yaml") -> Path:
    """``params`` (validated, merged: an experiment file's overlay, command-line overrides) as the
    one file every job of a Snakemake run reads. Its path never changes, so that a job's rerun
    follows the stage's own params keys, never the file's name; it is rewritten only when its
    text changes. The workflow writes it once the run holds Snakemake's lock (``onstart``), never
    on a dry run: a dry run of another experiment file in the same checkout once rewrote it under
    a running workflow, whose next jobs read the other file's params."""
    from nuwa.io import write_text

    path = Path(path)
    text = job_params_text(params, source)
    if not path.exists() or path.read_text() != text:
        write_text(text, path)
    return path


def job_params_env(params: dict, path: str | Path = JOB_PARAMS_FILE, source: str = "params.yaml") -> str:
    """The value of ``NUWA_JOB_PARAMS`` for a run with ``params``: what its jobs check the file against."""
    return f"{path}\t{hashlib.sha256(job_params_text(params, source).encode()).hexdigest()}"


def check_job_params(path: str | Path) -> None:
    """Refuse a job's params file that is not the one its Snakemake run planned with (``NUWA_JOB_PARAMS``
    names the file and the digest of its text): another run in the same checkout, with other
    params, rewrote it since. A job of that run would otherwise compute with the other params and
    Snakemake would record them as this run's."""
    expected = os.environ.get(JOB_PARAMS_ENV)
    if not expected or "\t" not in expected:
        return
    job_path, digest = expected.split("\t", 1)
    path = Path(path)
    try:
        same = path.exists() and Path(job_path).exists() and os.path.samefile(path, job_path)
    except OSError:
        same = False
    if not same:
        return
    found = hashlib.sha256(path.read_bytes()).hexdigest()
    if found != digest:
        first = path.read_text().splitlines()[0] if path.stat().st_size else "(empty)"
        raise ParamsError(f"{path}: not the params this job's Snakemake run planned with (sha256 {found[:12]}, "
                          f"expected {digest[:12]}); another Snakemake run in this checkout rewrote it "
                          f"({first.lstrip('# ')[:160]}). Rerun this workflow once the other has finished; "
                          "run experiments with other params at the same time in separate checkouts")


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
            bounds.append(f"<= {_bound(schema['maximum'])}")
        if "exclusiveMaximum" in schema:
            bounds.append(f"< {_bound(schema['exclusiveMaximum'])}")
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


def _bound(value) -> str:
    """A schema bound as written in messages: 9223372036854775807 (2^63 - 1) says where it comes from."""
    if isinstance(value, int) and value > 1 << 20 and ((value + 1) & value == 0):
        return f"{value} (2^{value.bit_length()} - 1)"
    return str(value)


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


def validate_params(params: Any, source: str = "params.yaml", models: bool = False) -> None:
    """Raise ParamsError on the first problem found; return None when params are usable.
    Every backbone entry is checked against its presets and its builder's own checks, without
    torch. ``models``: also build each backbone of the grid on torch's meta device for every grid
    dataset and task, as `nuwa train` would build it, which runs the checks of its modules'
    constructors and bounds its size (imports torch, about 2 s; then 0.01-0.2 s a model)."""
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
        if error.validator == "oneOf" and error.context:
            # `null` or a bounded integer: say what is wrong with the integer, not "not valid under any schema"
            error = next((inner for inner in error.context if inner.validator != "type"), error)
        if error.validator == "oneOf" and error.context and all(inner.validator == "type" for inner in error.context):
            expected = " or ".join(str(inner.schema["type"]) for inner in error.context)
            hint = " (write it without a decimal point)" if isinstance(error.instance, float) else ""
            raise ParamsError(f"{source}: {_dotted(error.absolute_path)}: {error.instance!r} has type "
                              f"{type(error.instance).__name__}, expected {expected}{hint}")
        if error.validator == "propertyNames":
            inner = _deepest(error)
            raise ParamsError(f"{source}: {_dotted(error.absolute_path)}: name {inner.instance!r} is not allowed "
                              "(names are lower-case ASCII letters, digits and underscores, starting with a letter, "
                              "at most 48 characters)")
        raise ParamsError(f"{source}: {_describe(error)}")
    for message in _cross_checks(params):
        raise ParamsError(f"{source}: {message}")
    if models:
        for message in _model_checks(params):
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


MAX_GENERATED_VALUES = 1 << 30
# the lower-case names pandas reads as NaN by default (any other name of grid.NAME_PATTERN is safe)
MISSING_VALUE_NAMES = ("nan", "null")


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
    labels = [f"{threshold:g}" for threshold in entry["csi_thresholds"]]
    if len(set(labels)) < len(labels):  # the metric keys (csi_0.5, ...) are the thresholds as :g writes them
        yield (f"{key}.csi_thresholds: {entry['csi_thresholds']} name the same threshold twice (as the metric keys "
               f"write them: {labels}; allowed: distinct thresholds)")
    patch = entry["patch_size"]
    for side in ("height", "width"):
        if entry[side] % patch:
            yield (f"{key}.patch_size: {patch} does not divide {side} {entry[side]} "
                   f"(allowed: a divisor of both height {entry['height']} and width {entry['width']})")
    if isinstance(entry.get("length"), int):  # a generated series, made in memory at once
        values = entry["length"] * entry["height"] * entry["width"]
        if values > MAX_GENERATED_VALUES:
            yield (f"{key}: length x height x width = {entry['length']} x {entry['height']} x {entry['width']} = "
                   f"{values:,} values (allowed: at most {MAX_GENERATED_VALUES:,}: a generated series is made in "
                   f"memory, {MAX_GENERATED_VALUES * 4 // 2**30} GiB in float32)")
            return
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

    scheduler = (params.get("ingest") or {}).get("scheduler")
    if scheduler not in (None, "local", "threads"):  # an address: refused unless loopback (dask imported only then)
        from nuwa.ingest import check_scheduler_address

        problem = check_scheduler_address(scheduler)
        if problem:
            yield problem
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
    yield from _later_stage_checks(params)
    yield from _backbone_checks(params)


def _baseline_names() -> list[str]:
    return list(load_schema()["properties"]["grid"]["properties"]["baselines"]["items"]["enum"])


# A grid this large would make Snakemake's and DVC's graphs of jobs too large to plan.
MAX_TRAINING_RUNS = 100_000
GRID_AXES = ("datasets", "tasks", "train_percents", "backbones", "variants", "seeds")


def _later_stage_checks(params: dict):
    """Checks of the upstream ViT, the names, the GPUs and the grid's size that a later stage
    would otherwise refuse, or fail on, after earlier stages ran. Yields messages."""
    pretrain = params["pretrain"]
    if pretrain["embed_dim"] % pretrain["num_heads"]:
        yield (f"pretrain.num_heads: {pretrain['num_heads']} does not divide pretrain.embed_dim {pretrain['embed_dim']} "
               f"(each head attends over embed_dim / num_heads channels; allowed: a divisor of {pretrain['embed_dim']})")
    depth = pretrain["depth"]
    layer_lists = [("saliency.layers", params["saliency"]["layers"])]
    layer_lists += [(f"upstreams.{name}.layers", entry["layers"]) for name, entry in params["upstreams"].items()
                    if "layers" in entry]
    layer_lists += [(f"diagnostics.layer_choices.{index}", layers)
                    for index, layers in enumerate(params["diagnostics"]["layer_choices"])]
    for key, layers in layer_lists:
        for index, layer in enumerate(layers):
            if not -depth <= layer < depth:
                yield (f"{key}.{index}: {layer} is not a block of the upstream ViT (pretrain.depth {depth}; allowed: "
                       f"{-depth} to {depth - 1}, negative counting from the last)")
    # names CSV readers take for a missing value (pandas' defaults): a row named so loses its name
    for section in ("datasets", "tasks", "backbones", "variants", "upstreams"):
        for name in params.get(section) or {}:
            if name in MISSING_VALUE_NAMES:
                yield (f"{section}: name {name!r} is reserved (CSV readers such as pandas read it as a missing "
                       f"value: the tables and figures would lose the name; reserved: {', '.join(MISSING_VALUE_NAMES)})")
    baselines = _baseline_names()
    for section in ("backbones", "variants"):
        for name in params[section]:
            if name in baselines:
                yield (f"{section}: name {name!r} is reserved for the baseline of that name (a table row named "
                       f"{name!r} would read as the baseline's; reserved: {', '.join(sorted(baselines))})")
    batch_size = params["train"]["batch_size"]
    for name, entry in params["backbones"].items():
        gpus = entry.get("gpus", 1)
        if batch_size % gpus:
            yield (f"backbones.{name}.gpus: {gpus} does not divide train.batch_size {batch_size} (every GPU trains on "
                   f"an equal share of the batch; allowed: a divisor of {batch_size})")
    grid = params["grid"]
    counts = [len(grid[axis]) for axis in GRID_AXES]
    if math.prod(counts) > MAX_TRAINING_RUNS:
        yield (f"grid: {math.prod(counts):,} training runs ({' x '.join(GRID_AXES)} = {' x '.join(map(str, counts))}; "
               f"allowed: at most {MAX_TRAINING_RUNS:,})")


# The backbones' checks. Without torch (always): each backbone entry against its presets (the
# override names and their types, nuwa.backbones._specs.<kind>.PRESETS) and every backbone of the
# grid checked with its builder's own checks (`check`) for every grid dataset and task, with the
# shapes `nuwa train` builds it for, and its upstream transfer. With `models=True` (`nuwa validate`),
# also built on torch's meta device (no memory, no random draw), which runs the checks of every
# module's constructor and bounds the model's size. One channel: the channel count is known after
# ingest, and no builder's checks depend on it.
MAX_MODEL_PARAMETERS = 1_000_000_000  # 4 GB of float32 weights, 12 GB more with gradients and Adam's state
MAX_MODEL_MODULES = 10_000            # the largest preset (rainformer reference) has 515
MAX_HYPERPARAMETER = 65_536           # any number in an override: no width, depth, kernel or ratio is larger
MAX_OVERRIDE_ITEMS = 64               # items of a list in an override (the presets' longest has 4)
MAX_OVERRIDE_TEXT = 256               # characters of a text in an override ("3,5,7,11", "video_swin_2x8")
PIPELINE_KEYS = ("kind", "init_from_upstream", "gpus")  # not the builder's (nuwa.train.PIPELINE_KEYS)


def _override_items(value, path):
    """(dotted path, value) of an override value and of everything in its lists and mappings."""
    yield path, value
    if isinstance(value, list):
        for index, item in enumerate(value):
            yield from _override_items(item, f"{path}.{index}")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _override_items(item, f"{path}.{key}")


def _override_problem(key: str, value, preset_values: list):
    """What is wrong with one override, from its presets' values (None: nothing found). Sizes
    are bounded here, before a builder loops over them; the model's size is bounded by
    ``models=True`` (a few hundred blocks of a small width are within every single bound)."""
    for path, item in _override_items(value, key):
        if isinstance(item, (int, float)) and not isinstance(item, bool) and abs(item) > MAX_HYPERPARAMETER:
            return (f"{path}: {item} is out of range (allowed: >= -{MAX_HYPERPARAMETER} and <= {MAX_HYPERPARAMETER} "
                    "for a backbone hyperparameter)")
        if isinstance(item, (list, dict)) and len(item) > MAX_OVERRIDE_ITEMS:
            return f"{path}: {len(item)} items (allowed: at most {MAX_OVERRIDE_ITEMS} in a backbone hyperparameter)"
        if isinstance(item, str) and len(item) > MAX_OVERRIDE_TEXT:
            return (f"{path}: text of {len(item)} characters (allowed: at most {MAX_OVERRIDE_TEXT} in a backbone "
                    "hyperparameter)")
    types = {type(preset) for preset in preset_values}
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if types == {int} and not is_int:
        hint = " (write it without a decimal point)" if isinstance(value, float) else ""
        return f"{key}: {value!r} has type {type(value).__name__}, expected integer{hint}"
    if types == {bool} and not isinstance(value, bool):
        return f"{key}: {value!r} has type {type(value).__name__}, expected boolean"
    if float in types and types <= {int, float} and not (is_int or isinstance(value, float)):
        return f"{key}: {value!r} has type {type(value).__name__}, expected number"
    return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, ValueError) and text else f"{type(exc).__name__}: {text}".rstrip(": ")


def _grid_shapes(params: dict) -> list[tuple]:
    """(where, in_shape, out_frames, scale, dataset) of every grid dataset and task: the shapes
    `nuwa train` builds a backbone for (nuwa.train.build_model)."""
    grid, shapes = params["grid"], []
    for dataset in grid["datasets"]:
        config = params["datasets"][dataset]
        for task in grid["tasks"]:
            factor = params["tasks"][task].get("factor", 1)
            in_shape = (config["input_frames"], 1, config["height"] // factor, config["width"] // factor)
            where = (f"datasets.{dataset} ({in_shape[0]} -> {config['output_frames']} frames of {in_shape[2]} x "
                     f"{in_shape[3]}{f': inputs / tasks.{task}.factor {factor}' if factor > 1 else ''})")
            shapes.append((where, in_shape, config["output_frames"], factor, dataset))
    return shapes


def _backbone_checks(params: dict):
    """The torch-free backbone checks. Yields messages."""
    from nuwa.backbones import ENTRY_KEYS, backbone_spec
    from nuwa.backbones._specs import resolve_hparams

    specs = {}
    for name, entry in params["backbones"].items():
        spec = specs[name] = backbone_spec(entry["kind"])
        if spec is None:  # registered at run time, without a spec: its builder checks its overrides
            continue
        if entry["size"] not in spec.PRESETS:
            yield (f"backbones.{name}.size: {entry['size']!r} is not allowed "
                   f"(allowed: {', '.join(map(repr, spec.PRESETS))})")
            continue
        hparams = spec.PRESETS[entry["size"]]
        overrides = {key: value for key, value in entry.items() if key not in ENTRY_KEYS}
        unknown = sorted(set(overrides) - set(hparams), key=str)
        if unknown:
            allowed = ", ".join(sorted({*ENTRY_KEYS, *hparams}))
            yield f"backbones.{name}: unknown key {unknown[0]!r} (allowed: {allowed})"
            continue
        for key, value in overrides.items():
            problem = _override_problem(f"backbones.{name}.{key}", value,
                                        [preset[key] for preset in spec.PRESETS.values() if key in preset])
            if problem:
                yield problem
    shapes = _grid_shapes(params)
    for name in params["grid"]["backbones"]:
        entry, spec = params["backbones"][name], specs[name]
        if spec is None:
            continue
        overrides = {key: value for key, value in entry.items() if key not in ENTRY_KEYS}
        hp = resolve_hparams(entry["kind"], spec.PRESETS, entry["size"], overrides)
        for where, in_shape, out_frames, scale, _ in shapes:
            try:
                spec.check(hp, in_shape, out_frames, scale)
            except Exception as exc:  # noqa: BLE001  whatever the builder's checks raise
                yield f"backbones.{name}: cannot be built for {where}: {_one_line(exc)}"
        if entry.get("init_from_upstream"):
            check_upstream = getattr(spec, "check_upstream", None)
            if check_upstream is None:
                yield (f"backbones.{name}.init_from_upstream: backbone kind {entry['kind']!r} cannot start from the "
                       "upstream ViT's weights (allowed: false for this kind)")
                continue
            try:
                check_upstream(hp, params["pretrain"])
            except (TypeError, ValueError) as exc:
                yield f"backbones.{name}.init_from_upstream: {_upstream(params)} does not fit: {_one_line(exc)}"


def _upstream(params: dict) -> str:
    pretrain = params["pretrain"]
    return (f"the upstream ViT (pretrain.embed_dim {pretrain['embed_dim']}, depth {pretrain['depth']}, "
            f"num_heads {pretrain['num_heads']}, mlp_ratio {pretrain['mlp_ratio']})")


def _meta_upstream(pretrain: dict, dataset_config: dict):
    import torch

    from nuwa.upstream import build_upstream

    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return build_upstream(pretrain, dataset_config, channels=1)


def _model_checks(params: dict):
    """Every backbone of the grid built on torch's meta device for every grid dataset and task
    (``models=True``). Yields messages."""
    from nuwa.backbones import ModelTooLarge, build_on_meta

    built = set()
    for name in params["grid"]["backbones"]:
        entry = params["backbones"][name]
        hparams = {key: value for key, value in entry.items() if key not in PIPELINE_KEYS}
        transfer = bool(entry.get("init_from_upstream"))
        for where, in_shape, out_frames, scale, dataset in _grid_shapes(params):
            signature = (entry["kind"], repr(sorted(hparams.items())), in_shape, out_frames, scale, transfer and dataset)
            if signature in built:
                continue
            built.add(signature)
            try:
                model, _ = build_on_meta(entry["kind"], in_shape=in_shape, out_frames=out_frames, scale=scale,
                                         max_parameters=MAX_MODEL_PARAMETERS, max_modules=MAX_MODEL_MODULES, **hparams)
            except ModelTooLarge as exc:
                yield (f"backbones.{name}: {exc} for {where} (allowed: at most {MAX_MODEL_PARAMETERS:,} parameters "
                       f"and {MAX_MODEL_MODULES:,} modules in a model)")
                continue
            except Exception as exc:  # noqa: BLE001  whatever the builder or a module's constructor raises
                yield f"backbones.{name}: cannot be built for {where}: {_one_line(exc)}"
                continue
            if not transfer:
                continue
            if not hasattr(model, "load_upstream"):
                yield (f"backbones.{name}.init_from_upstream: backbone kind {entry['kind']!r} cannot start from the "
                       "upstream ViT's weights (allowed: false for this kind)")
                continue
            upstream = _meta_upstream(params["pretrain"], params["datasets"][dataset])
            try:
                model.load_upstream({"kind": "upstream_vit", "state_dict": upstream.state_dict(),
                                     "model_config": dict(upstream.config)})
            except ValueError as exc:
                yield f"backbones.{name}.init_from_upstream: {_upstream(params)} does not fit: {_one_line(exc)}"
