"""A processed file does not depend on where the checkout and the data lie: the same params entry
ingested in two checkouts whose ``../shared/data`` are two copies at different absolute paths
writes the same bytes (the readers once recorded the resolved absolute source path, so CI's
machine, whose checkout lies elsewhere, wrote different bytes than this one)."""
from __future__ import annotations

import shutil
from pathlib import Path

import netCDF4
import pytest

from nuwa.cli import main

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"

# dataset -> the folders under shared/data it reads (radar_pool: its KNMI and MeteoSwiss members)
CASES = {
    "wfde5_precip": ["weather/wfde5"],
    "radar_pool": ["radar/KNMI", "radar/mch"],
    "nycbike": ["traffic/NYCBike1"],
}


def _checkout_with_data(root: Path, folders: list[str]) -> Path:
    """``root/<deep>/checkout`` holding params.yaml, with ``../shared/data`` a real copy (not a link,
    which would resolve to the one original)."""
    checkout = root / "checkout"
    checkout.mkdir(parents=True)
    shutil.copy(REPO / "params.yaml", checkout / "params.yaml")
    for folder in folders:
        shutil.copytree(SHARED / folder, root / "shared" / "data" / folder)
    return checkout


@pytest.mark.parametrize("dataset", sorted(CASES))
def test_the_same_entry_ingested_from_data_elsewhere_writes_the_same_bytes(dataset, tmp_path, monkeypatch):
    folders = CASES[dataset]
    missing = [f for f in folders if not (SHARED / f).exists()]
    if missing:
        pytest.skip(f"real data not present: {', '.join(str(SHARED / f) for f in missing)}")
    outs = []
    for place in (tmp_path / "a", tmp_path / "b" / "somewhere" / "deeper"):
        checkout = _checkout_with_data(place, folders)
        monkeypatch.chdir(checkout)  # params.yaml names the sources relative to the checkout
        out = checkout / "processed.nc"
        assert main(["ingest", "--params", "params.yaml", "--dataset", dataset, "--out", str(out),
                     "--threads", "1"]) == 0
        outs.append(out)
    assert outs[0].read_bytes() == outs[1].read_bytes()
    with netCDF4.Dataset(outs[0]) as processed:
        attrs = {name: processed[name].ncattrs() for name in processed.variables}
        sources = [processed[name].getncattr("source") for name, keys in attrs.items() if "source" in keys]
    assert sources and all(not Path(s).is_absolute() for s in sources), sources
