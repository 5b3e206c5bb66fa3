"""The README's Results tables are those of the committed results (docs/results/readme_tables.py):
a number changed by hand, or a result republished without the README, fails here; a dataset still
training stays out of every table."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "results" / "readme_tables.py"


def tables(*arguments: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *arguments], cwd=cwd, capture_output=True, text=True)


def block(text: str, name: str) -> list[str]:
    lines = text.split("\n")
    start = lines.index(f"<!-- results-table: {name} -->") + 1
    return lines[start:lines.index("<!-- /results-table -->", start)]


def test_the_readmes_tables_are_those_of_the_committed_results():
    result = tables("--check", "README.md", "docs/results/README.md")
    assert result.returncode == 0, result.stderr


def test_a_number_changed_by_hand_fails_the_check_and_a_rewrite_restores_it(tmp_path):
    readme = (ROOT / "README.md").read_text()
    row = next(line for line in block(readme, "table1") if line.startswith("| swin | nuwa - ori |"))
    edited = row.replace(" → ", " → 1", 1)  # one digit more in a mean
    copy = tmp_path / "README.md"
    copy.write_text(readme.replace(row, edited, 1))
    result = tables("--check", str(copy))
    assert result.returncode == 1
    assert "table1" in result.stderr and str(copy) in result.stderr
    assert tables(str(copy)).returncode == 0
    assert copy.read_text() == readme


def test_bad_markers_are_named(tmp_path):
    copy = tmp_path / "README.md"
    copy.write_text("x\n<!-- results-table: table3 -->\n<!-- /results-table -->\n")
    result = tables("--check", str(copy))
    assert result.returncode != 0 and "table3" in result.stderr and f"{copy}:2" in result.stderr
    copy.write_text("<!-- results-table: table1 -->\n| a |\n")
    result = tables("--check", str(copy))
    assert result.returncode != 0 and "no closing" in result.stderr


def test_a_dataset_still_training_stays_out_of_every_table(tmp_path):
    """A checkout whose table1 publication lacks one radar run: the radar leaves Table 1, the skill
    table and the finished count, and nothing else changes."""
    shutil.copytree(ROOT / "experiments", tmp_path / "experiments")
    shutil.copy(ROOT / "params.yaml", tmp_path)
    shutil.copytree(ROOT / "docs" / "results", tmp_path / "docs" / "results",
                    ignore=shutil.ignore_patterns("figures", "report.html"))
    runs_file = tmp_path / "docs" / "results" / "table1_cpu" / "runs.csv"
    runs = pd.read_csv(runs_file)
    radar = runs.index[runs["dataset"] == "radar_pool"]
    assert len(radar) == 60, "the committed table1 has every radar run"
    runs.drop(radar[:1]).to_csv(runs_file, index=False)
    readme = (ROOT / "README.md").read_text()
    shutil.copy(ROOT / "README.md", tmp_path)

    result = tables("README.md", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "README.md").read_text()
    assert "radar_pool" in block(readme, "table1")[0] and "radar_pool" not in block(text, "table1")[0]
    assert "nytaxi" in block(text, "table1")[0] and "wfde5_precip" in block(text, "table1")[0]
    assert not any(line.startswith("| radar_pool |") for line in block(text, "skill"))
    assert "radar_pool 59 of 60" in "\n".join(block(text, "state"))
    for name in ("generalisation", "ablations", "diagnostics"):
        assert block(text, name) == block(readme, name)
