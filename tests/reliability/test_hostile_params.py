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


def _alias_bomb(levels: int, width: int) -> str:
    """A flow list of anchors, each holding `width` aliases of the one before: about
    width**levels values once every alias is copied out (as Snakemake's JSON and DVC's parser do)."""
    items = ["&a0 [" + ", ".join(["1"] * width) + "]"]
    items += [f"&a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]" for level in range(1, levels)]
    return "[" + ", ".join(items) + "]"


def _in_simvp(extra: str):
    """`extra: <text>` added to the simvp backbone entry (line 68 of the tiny params)."""
    return _text(lambda t: t.replace("  simvp: {kind: simvp, size: small}\n",
                                     f"  simvp: {{kind: simvp, size: small, extra: {extra}}}\n", 1))


def _backbone(name: str, entry: dict, in_grid: bool = True):
    """A backbones entry `name` (appended to grid.backbones)."""
    def edit(params):
        params["backbones"][name] = entry
        if in_grid:
            params["grid"]["backbones"].append(name)
        return _dump(params)
    return edit


def _bytes(data: bytes):
    return lambda params: data


SEED_MAX = "9223372036854775807 (2^63 - 1)"
SIMVP_KEYS = ("N_S, N_T, gpus, groups, hid_S, hid_T, incep_ker, init_from_upstream, kind, size, spatio_kernel_dec, "
              "spatio_kernel_enc")
GLYPHS_SHAPE = "datasets.moving_glyphs (4 -> 4 frames of 16 x 16)"
BASELINE_RULE = "would read as the baseline's; reserved: optical_flow, persistence)"
BOMB_RULE = ("takes the file past 100,000 keys and values once its aliases are copied out (an alias bomb? allowed: at "
             "most 100,000, every alias counted as the copy that Snakemake and DVC make of it)")
UPSTREAM = "the upstream ViT (pretrain.embed_dim 16, depth 1, num_heads 2, mlp_ratio 2.0)"


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
    "steps_zero": (_set("train.steps", 0), "train.steps: 0 is out of range (allowed: >= 1 and <= 10000000)"),
    "height_negative": (_set("datasets.moving_glyphs.height", -16),
                        "datasets.moving_glyphs.height: -16 is out of range (allowed: >= 1 and <= 8192)"),
    "patch_zero": (_set("datasets.moving_glyphs.patch_size", 0),
                   "datasets.moving_glyphs.patch_size: 0 is out of range (allowed: >= 1 and <= 8192)"),
    "batch_negative": (_set("pretrain.batch_size", -8),
                       "pretrain.batch_size: -8 is out of range (allowed: >= 1 and <= 65536)"),
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
    "seed_negative": (_set("grid.seeds", [0, -1]), f"grid.seeds.1: -1 is out of range (allowed: >= 0 and <= {SEED_MAX})"),
    "grid_seed_fraction": (_set("grid.seeds", [2.5]),
                           "grid.seeds.0: 2.5 has type float, expected integer (write it without a decimal point)"),
    "steps_float_integral": (_set("train.steps", 6.0),
                             "train.steps: 6.0 has type float, expected integer (write it without a decimal point)"),
    # a YAML alias that contains itself
    "alias_cycle": (_text(lambda t: t.replace("  simvp: {kind: simvp, size: small}\n",
                                              "  simvp: {kind: simvp, size: small, extra: &loop [*loop]}\n", 1)),
                    "backbones.simvp.extra.0: the value contains itself (a YAML alias cycle; allowed: plain values)"),
    # the file itself: refused while it is read, naming the line
    "alias_bomb": (_in_simvp(_alias_bomb(5, 10)), f"backbones.simvp.extra: alias *a3 at line 68 {BOMB_RULE}"),
    "alias_bomb_billion": (_in_simvp(_alias_bomb(9, 10)), f"backbones.simvp.extra: alias *a3 at line 68 {BOMB_RULE}"),
    "nested_too_deep": (_in_simvp("[" * 40 + "]" * 40),
                        "backbones.simvp.extra: values nested more than 32 levels deep at line 68 (allowed: at most "
                        "32)"),
    "value_a_tag_cannot_make": (_text(lambda t: t.replace("  ori: {method: none}", "  ori: {method: !!float none}", 1)),
                                "line 61, column 17: not valid YAML: tag:yaml.org,2002:float cannot be made from "
                                "'none': could not convert string to float: 'none'"),
    "binary_file": (_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
                    "line 1: byte 0x89 at offset 0 is not UTF-8 text (a binary file? allowed: a YAML text file in UTF-8)"),
    "latin1_comment": (lambda params: TINY_PARAMS.read_text().replace("# Tiny configuration", "# Tiny configuration "
                                                                      "(r\xe9sum\xe9)", 1).encode("latin-1"),
                       "line 1: byte 0xe9 at offset 23 is not UTF-8 text (a binary file? allowed: a YAML text file "
                       "in UTF-8)"),
    "nul_character": (_text(lambda t: t.replace("  seed: 0\n", "  seed: 0\x00\n", 1)),
                      "line 34: not valid YAML: unacceptable character #x0000: special characters are not allowed"),
    "unclosed_list": (_text(lambda t: t.replace("  seed: 0\n", "  seed: [0\n", 1)),
                      "line 35, column 12: not valid YAML: expected ',' or ']', but got ':' (while parsing a flow "
                      "sequence at line 34, column 9)"),
    "file_too_large": (_text(lambda t: t + "#" * (1 << 20) + "\n"),
                       "larger than 1,048,576 bytes (allowed: a params file of at most 1,048,576 bytes; params.yaml is "
                       "about 17,000)"),
    # backbone entries: names and types against the backbone's presets, its builder's own checks
    # on every grid dataset and task, its upstream transfer (before: refused by `train` only)
    "backbone_override_typo": (_set("backbones.simvp", {"kind": "simvp", "size": "small", "hid_t": 32}),
                               f"backbones.simvp: unknown key 'hid_t' (allowed: {SIMVP_KEYS})"),
    "backbone_override_float": (_set("backbones.simvp", {"kind": "simvp", "size": "small", "hid_T": 64.5}),
                                "backbones.simvp.hid_T: 64.5 has type float, expected integer (write it without a "
                                "decimal point)"),
    "backbone_override_text_bool": (_set("backbones.convlstm", {"kind": "convlstm", "size": "small",
                                                                "layer_norm": "nope"}),
                                    "backbones.convlstm.layer_norm: 'nope' has type str, expected boolean"),
    "backbone_override_huge": (_set("backbones.simvp", {"kind": "simvp", "size": "small", "hid_T": 10**8}),
                               "backbones.simvp.hid_T: 100000000 is out of range (allowed: >= -65536 and <= 65536 for "
                               "a backbone hyperparameter)"),
    "backbone_override_long_list": (_set("backbones.simvp", {"kind": "simvp", "size": "small",
                                                             "incep_ker": [3] * 1000}),
                                    "backbones.simvp.incep_ker: 1000 items (allowed: at most 64 in a backbone "
                                    "hyperparameter)"),
    "backbone_heads_not_dividing": (_backbone("vit", {"kind": "vit", "size": "small", "num_heads": 3}),
                                    f"backbones.vit: cannot be built for {GLYPHS_SHAPE}: vit: hid_T=64 is not "
                                    "divisible by num_heads=3"),
    "backbone_downsampling_too_deep": (_set("backbones.simvp", {"kind": "simvp", "size": "small", "N_S": 10}),
                                       f"backbones.simvp: cannot be built for {GLYPHS_SHAPE}: simvp: H=16 is not "
                                       "divisible by 32"),
    "backbone_super_resolution_shape": (_text(lambda t: t.replace("  tasks: [forecast]", "  tasks: [forecast, sr4]", 1)
                                              .replace("  convlstm: {kind: convlstm, size: small}",
                                                       "  convlstm: {kind: convlstm, size: small, patch_size: 8}", 1)),
                                        "backbones.convlstm: cannot be built for datasets.moving_glyphs (4 -> 4 frames "
                                        "of 4 x 4: inputs / tasks.sr4.factor 4): convlstm: H=4 is not divisible by 8"),
    "backbone_not_in_grid_typo": (_backbone("swin", {"kind": "swin", "size": "small", "window": 4}, in_grid=False),
                                  "backbones.swin: unknown key 'window' (allowed: N_S, N_T, drop, drop_path, gpus, "
                                  "hid_S, hid_T, init_from_upstream, kind, mlp_ratio, num_heads, size, "
                                  "spatio_kernel_dec, spatio_kernel_enc, window_size)"),
    "init_from_upstream_wrong_kind": (_set("backbones.simvp", {"kind": "simvp", "size": "small",
                                                               "init_from_upstream": True}),
                                      "backbones.simvp.init_from_upstream: backbone kind 'simvp' cannot start from the "
                                      "upstream ViT's weights (allowed: false for this kind)"),
    "init_from_upstream_other_width": (_backbone("vit", {"kind": "vit", "size": "small", "init_from_upstream": True,
                                                         "N_T": 1, "num_heads": 2, "mlp_ratio": 2.0}),
                                       f"backbones.vit.init_from_upstream: {UPSTREAM} does not fit: hid_T=64 != the "
                                       "upstream's embed_dim 16 (build with hid_T=16)"),
    "gpus_not_dividing_batch": (_set("backbones.simvp", {"kind": "simvp", "size": "small", "gpus": 3}),
                                "backbones.simvp.gpus: 3 does not divide train.batch_size 4 (every GPU trains on an "
                                "equal share of the batch; allowed: a divisor of 4)"),
    "backbone_named_like_a_baseline": (_backbone("persistence", {"kind": "simvp", "size": "small"}),
                                       f"backbones: name 'persistence' is reserved for the baseline of that name (a "
                                       f"table row named 'persistence' {BASELINE_RULE}"),
    "variant_named_like_a_baseline": (_grid_name("variants", "optical_flow", "ori"),
                                      f"variants: name 'optical_flow' is reserved for the baseline of that name (a "
                                      f"table row named 'optical_flow' {BASELINE_RULE}"),
    # the upstream ViT (before: pretrain failed with timm's AssertionError; layer 7 silently meant block 0)
    "pretrain_heads_not_dividing": (_set("pretrain.num_heads", 3),
                                    "pretrain.num_heads: 3 does not divide pretrain.embed_dim 16 (each head attends "
                                    "over embed_dim / num_heads channels; allowed: a divisor of 16)"),
    "saliency_layer_past_depth": (_set("saliency.layers", [7]),
                                  "saliency.layers.0: 7 is not a block of the upstream ViT (pretrain.depth 1; allowed: "
                                  "-1 to 0, negative counting from the last)"),
    "upstream_layer_past_depth": (_set("upstreams.first_layer", {"layers": [1]}),
                                  "upstreams.first_layer.layers.0: 1 is not a block of the upstream ViT (pretrain.depth "
                                  "1; allowed: -1 to 0, negative counting from the last)"),
    "diagnostics_layer_past_depth": (_set("diagnostics.layer_choices", [[-1], [-2]]),
                                     "diagnostics.layer_choices.1.0: -2 is not a block of the upstream ViT "
                                     "(pretrain.depth 1; allowed: -1 to 0, negative counting from the last)"),
    # sizes and counts past their bounds (before: accepted, then a traceback, memory exhausted or no end)
    "seed_2_64": (_set("grid.seeds", [2**64]), f"grid.seeds.0: 18446744073709551616 is out of range (allowed: >= 0 "
                                               f"and <= {SEED_MAX})"),
    "seed_2_63": (_set("pretrain.seed", 2**63), f"pretrain.seed: 9223372036854775808 is out of range (allowed: >= 0 "
                                                f"and <= {SEED_MAX})"),
    "height_65536": (_set("datasets.moving_glyphs.height", 65536),
                     "datasets.moving_glyphs.height: 65536 is out of range (allowed: >= 1 and <= 8192)"),
    "generated_series_too_large": (_text(lambda t: t.replace("    height: 16\n    width: 16\n",
                                                             "    height: 8192\n    width: 8192\n", 1)),
                                   "datasets.moving_glyphs: length x height x width = 160 x 8192 x 8192 = "
                                   "10,737,418,240 values (allowed: at most 1,073,741,824: a generated series is made "
                                   "in memory, 4 GiB in float32)"),
    "copies_billion": (_set("bank.copies", 10**9), "bank.copies: 1000000000 is out of range (allowed: >= 1 and <= 100)"),
    "frames_huge": (_set("datasets.moving_glyphs.output_frames", 100000),
                    "datasets.moving_glyphs.output_frames: 100000 is out of range (allowed: >= 1 and <= 1024)"),
    "steps_billion": (_set("train.steps", 10**9), "train.steps: 1000000000 is out of range (allowed: >= 1 and "
                                                  "<= 10000000)"),
    "batch_million": (_set("train.batch_size", 10**6),
                      "train.batch_size: 1000000 is out of range (allowed: >= 1 and <= 65536)"),
    "diagnostics_steps_billion": (_set("diagnostics.steps", 10**9),
                                  "diagnostics.steps: 1000000000 is out of range (allowed: >= 1 and <= 10000000)"),
    "grid_too_large": (_set("grid.seeds", list(range(16667))),
                       "grid: 100,002 training runs (datasets x tasks x train_percents x backbones x variants x seeds = "
                       "1 x 1 x 1 x 2 x 3 x 16667; allowed: at most 100,000)"),
}
# names: in the grid (and as a key), as a key of the map only, in the grid only
for label, name in HOSTILE_NAMES.items():
    CASES[f"dataset_in_grid_{label}"] = (_grid_name("datasets", name, "moving_glyphs"),
                                         f"datasets: name {name!r} is not allowed {NAME_RULE}")
    CASES[f"backbone_key_{label}"] = (_key_only("backbones", name, "simvp"),
                                      f"backbones: name {name!r} is not allowed {NAME_RULE}")
    CASES[f"variant_in_grid_only_{label}"] = (_grid_only("variants", name),
                                              f"grid.variants.3: name {name!r} is not allowed {NAME_RULE}")


def _write(path: Path, content: str | bytes) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_in_process_with_key_value_and_rule(case, tmp_path, monkeypatch):
    make, expected = CASES[case]
    monkeypatch.chdir(tmp_path)
    _write(Path("params.yaml"), make(_tiny()))
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
    "alias_bomb",               # DVC's own parser copies its aliases out (111,111 values here) before `validate` runs
    "backbone_override_typo",   # before: every stage up to `train` ran first
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
    _write(directory / "params.yaml", make(_tiny()))
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
