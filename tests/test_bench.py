"""Every `nuwa bench NAME` runs at a tiny size: the CSV header, finite positive ratios that are
value / reference_value, and the same rows in the --out file."""

from __future__ import annotations

import io
import subprocess

import numpy as np
import pandas as pd
import pytest

from conftest import TINY_PARAMS, tool_env
from nuwa.bench import BENCHMARKS

# the tiny options of each benchmark (a few seconds each)
TINY_BENCH = {
    "bank": ["--samples", "4", "--frames", "3", "--size", "32", "--patch", "8", "--repeats", "1"],
    "backbones": ["--sizes", "small", "--backbones", "convlstm", "--in-shape", "4,1,16,16", "--out-frames", "4",
                  "--batch-size", "2", "--min-seconds", "0.05", "--device", "cpu", "--threads", "1"],
    "dag": ["--params", str(TINY_PARAMS), "--repeats", "1"],
    "loader": ["--batch-size", "4", "--frames", "3", "--size", "16", "--bank-windows", "40", "--batches", "5",
               "--loop-steps", "3", "--rounds", "1", "--python-ops", "20",
               "--cold-batches", "2", "--min-seconds", "0.05", "--device", "cpu", "--threads", "1"],
    "saliency": ["--small", "16,2,2,16,16", "--large", "32,3,4,32,16", "--batch-size", "2", "--large-batch-size",
                 "1", "--frames", "3", "--repeats", "1", "--device", "cpu", "--threads", "1"],
}
# references each benchmark must report
REFERENCES = {
    "bank": {"authors", "memcopy", "patch_loop"},
    "dag": {"trivial_snakefile"},
    "loader": {"simvp_small_train_step", "simvp_small_train_step_alone", "python_bound_step_alone",
               "loader_peak_rss_growth"},
    "saliency": {"forward"},
}


def test_every_bench_has_a_tiny_case():
    assert sorted(BENCHMARKS) == sorted(TINY_BENCH)


@pytest.mark.parametrize("name", sorted(TINY_BENCH))
def test_bench_runs_tiny_and_prints_header_and_finite_ratios(tmp_path, name):
    out = tmp_path / f"{name}.csv"
    result = subprocess.run(["nuwa", "bench", name, *TINY_BENCH[name], "--out", str(out)], env=tool_env(),
                            capture_output=True, text=True, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "benchmark,case,value,unit,reference,reference_value,ratio"
    table = pd.read_csv(io.StringIO(result.stdout))
    assert len(table) >= 1 and (table["benchmark"] == name).all()
    assert np.isfinite(table["ratio"]).all() and (table["ratio"] > 0).all()
    np.testing.assert_allclose(table["ratio"], table["value"] / table["reference_value"], rtol=1e-3)
    assert pd.read_csv(out).shape == table.shape
    if name in REFERENCES:
        assert REFERENCES[name] <= set(table["reference"])
