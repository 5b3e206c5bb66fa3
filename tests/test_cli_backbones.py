"""`nuwa backbones` and `nuwa bench backbones`: real runs, checked against the registry."""

from __future__ import annotations

import io
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tool_env
from nuwa.backbones import backbone_kinds, create_backbone


def test_backbones_csv_lists_every_registered_backbone_with_its_size():
    result = subprocess.run(["nuwa", "backbones", "--size", "small", "--in-shape", "4,1,16,16", "--out-frames", "2"],
                            env=tool_env(), capture_output=True, text=True, check=True)
    assert result.stdout.splitlines()[0] == "name,params,flops"
    table = pd.read_csv(io.StringIO(result.stdout))
    assert sorted(table["name"]) == backbone_kinds()
    for row in table.itertuples():
        model = create_backbone(row.name, in_shape=(4, 1, 16, 16), out_frames=2, size="small")
        assert row.params == sum(p.numel() for p in model.parameters())
        assert row.flops > 0


def test_flops_scale_with_the_input():
    from nuwa.bench.backbones import flops_per_sample

    model = create_backbone("simvp", in_shape=(4, 1, 16, 16), out_frames=4, size="small")
    bigger = create_backbone("simvp", in_shape=(4, 1, 32, 32), out_frames=4, size="small")
    ratio = flops_per_sample(bigger, (4, 1, 32, 32)) / flops_per_sample(model, (4, 1, 16, 16))
    assert 3.5 < ratio < 4.5  # convolutions: FLOPs grow with the pixel count


def _bench(*options):
    result = subprocess.run(["nuwa", "bench", "backbones", *options, "--device", "cpu", "--threads", "1"],
                            env=tool_env(), capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return pd.read_csv(io.StringIO(result.stdout))


def test_bench_backbones_times_plain_torch_and_timm_references(tmp_path):
    table = _bench("--sizes", "small", "--backbones", "vit,swin", "--in-shape", "4,1,16,16", "--out-frames", "4",
                   "--batch-size", "2", "--min-seconds", "0.01", "--out", str(tmp_path / "backbones.csv"))
    plain = table[table["reference"] != "simvp/small"]
    kinds = plain["case"].str.split("/").str[0]
    assert sorted(zip(kinds, plain["reference"])) == sorted([
        ("vit", "timm:VisionTransformer"), ("vit", "torch:nn.TransformerEncoder"), ("swin", "timm:SwinTransformer"),
        ("vit.translator", "timm:VisionTransformer"), ("vit.translator", "torch:nn.TransformerEncoder"),
        ("swin.translator", "timm:SwinTransformer")])
    assert np.isfinite(plain["ratio"]).all() and (plain["ratio"] > 0).all()
    np.testing.assert_allclose(plain["ratio"], plain["value"] / plain["reference_value"], rtol=1e-3)
    # one measurement per reference: every row naming it carries the same reference value
    assert (plain.groupby("reference")["reference_value"].nunique() == 1).all()


@pytest.mark.parametrize("kind,size", [("vit", "small"), ("vit", "reference"), ("swin", "small")])
def test_plain_references_have_our_transformer_blocks(kind, size):
    from nuwa.bench.backbones import PLAIN_REFERENCES, plain_reference, transformer_setting

    in_shape = (4, 2, 32, 32)
    ours = create_backbone(kind, in_shape=in_shape, out_frames=4, size=size)
    setting = transformer_setting(ours)
    ours_blocks = sum(p.numel() for p in ours.translator.blocks.parameters())
    for name in PLAIN_REFERENCES[kind]:
        reference = plain_reference(name, setting, in_shape, 4)
        blocks = reference.encoder.layers if name.startswith("torch:") else (
            reference.layers[0].blocks if kind == "swin" else reference.blocks)
        assert len(blocks) == len(ours.translator.blocks)
        assert sum(p.numel() for p in blocks.parameters()) == ours_blocks, name
        # the same tokens, and as many output values per sample as our T_out*C*H*W
        output = reference(torch.zeros(1, 8, 32, 32))
        assert output.shape[1:-1].numel() == setting["grid"][0] * setting["grid"][1]
        assert output.numel() == 4 * 2 * 32 * 32


def test_bench_backbones_openstl_reports_published_taxibj_fps(tmp_path):
    table = _bench("--openstl", "--sizes", "small", "--batch-size", "1", "--min-seconds", "0.01",
                   "--out", str(tmp_path / "backbones.csv"))
    published = {"convlstm": 815, "predrnn_v2": 378, "e3d_lstm": 60, "simvp": 533, "vit": 1301, "swin": 1506}
    kinds = table["case"].str.split("/").str[0]
    assert dict(zip(kinds, table["reference_value"])) == published
    assert (table["reference"] == "openstl-v100-fps").all()
    assert table["case"].str.contains("/in4x2x32x32/out4/b1/inference").all()  # OpenSTL's TaxiBJ shape
    assert np.isfinite(table["value"]).all() and (table["value"] > 0).all()
    np.testing.assert_allclose(table["ratio"], table["value"] / table["reference_value"], rtol=1e-3)


def test_every_cli_option_has_help_text():
    """Every option of every `nuwa` command says what it is (and, where it has one, its default)."""
    import argparse

    from nuwa.cli import build_parser

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    yield from walk(child, [*path, name])
            if not isinstance(action, argparse._HelpAction) and not action.help:
                yield " ".join(path), action.option_strings or action.dest

    assert list(walk(build_parser(), ["nuwa"])) == []
