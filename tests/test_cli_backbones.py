"""`nuwa backbones` and `nuwa bench backbones`: real runs, checked against the registry."""

from __future__ import annotations

import io
import subprocess

import pandas as pd

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
