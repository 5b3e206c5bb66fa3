"""Benchmarks: `nuwa bench NAME`. Each prints CSV rows

    benchmark,case,value,unit,reference,reference_value,ratio

to stdout and writes them to results/bench/NAME.csv. ``ratio`` = value / reference_value with
both measured in the same run on the same inputs, oriented so that bigger is better.
"""

from __future__ import annotations

import pandas as pd

COLUMNS = ["benchmark", "case", "value", "unit", "reference", "reference_value", "ratio"]


def rows_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS)
