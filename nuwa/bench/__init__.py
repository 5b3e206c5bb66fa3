"""Benchmarks: `nuwa bench NAME`. Each prints CSV rows

    benchmark,case,value,unit,reference,reference_value,ratio

to stdout and writes them to results/bench/NAME.csv. ``ratio`` = value / reference_value with
both measured in the same run on the same inputs, oriented so that bigger is better.
"""

from __future__ import annotations

import importlib

COLUMNS = ["benchmark", "case", "value", "unit", "reference", "reference_value", "ratio"]


# `nuwa bench NAME` runs nuwa.bench.NAME, a module light to import (heavy imports inside its
# functions) that defines SUMMARY, add_arguments(parser) and run(args, progress) -> rows
BENCHMARKS = ("backbones", "bank", "dag", "loader", "saliency")


def bench_module(name: str):
    return importlib.import_module(f"nuwa.bench.{name}")


def rows_frame(rows: list[dict]):
    import pandas as pd

    return pd.DataFrame(rows, columns=COLUMNS)
