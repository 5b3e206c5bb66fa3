"""Ingest streams: peak memory does not grow with the dataset's length.

Each case runs in a fresh interpreter (peak RSS is per process) and ingests a lazily
generated field 4x and 16x larger than the chunk it is streamed in; the difference in
peak memory between the two must be a small fraction of the difference in data size.
"""

import json
import subprocess
import sys
import textwrap

import xarray as xr


SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import dask.array as da
    import numpy as np
    import xarray as xr
    from nuwa.ingest import build_processed
    from nuwa.io import write_netcdf

    frames, chunk_frames, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    values = da.random.RandomState(0).random_sample((frames, 2, 96, 96), chunks=(chunk_frames, 2, 96, 96))
    field = xr.DataArray(values.astype(np.float32), dims=("time", "channel", "y", "x"), name="v",
                         coords={"channel": ["a", "b"]}, attrs={"units": "1", "long_name": "noise"})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    processed = build_processed(field, {"kind": "noise", "split": {"train": 0.7, "val": 0.1, "test": 0.2}},
                                "noise", chunk_frames=chunk_frames)
    write_netcdf(processed, out)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_growth_mib": (after - before) / 1024, "data_mib": values.nbytes / 2 / 2**20}))
""")

CHUNK_FRAMES = 32


def run_ingest(frames: int, out) -> dict:
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(frames), str(CHUNK_FRAMES), str(out)],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_ingest_peak_memory_does_not_grow_with_length(tmp_path):
    small = run_ingest(4 * CHUNK_FRAMES * 4, tmp_path / "small.nc")
    large = run_ingest(16 * CHUNK_FRAMES * 4, tmp_path / "large.nc")
    extra_data = large["data_mib"] - small["data_mib"]
    extra_peak = large["peak_growth_mib"] - small["peak_growth_mib"]
    assert extra_data > 100
    # holding the field in memory would add at least extra_data; streaming adds next to nothing
    assert extra_peak < 0.15 * extra_data, (small, large)
    written = xr.open_dataset(tmp_path / "large.nc")
    assert written["v"].shape == (16 * CHUNK_FRAMES * 4, 2, 96, 96)
    assert int(written.attrs["segments"]) == 1



def ingest_cli(params_path, out) -> subprocess.CompletedProcess:
    from conftest import tool_env

    return subprocess.run([sys.executable, "-m", "nuwa", "ingest", "--params", str(params_path), "--dataset",
                           "moving_glyphs", "--out", str(out)], capture_output=True, text=True, env=tool_env())


def test_ingest_on_an_existing_dask_cluster_and_a_local_one(tmp_path):
    """ingest.scheduler: a tcp:// address sends the work to that cluster; results equal the plain scheduler's."""
    import yaml
    from distributed import Client, LocalCluster

    from conftest import TINY_PARAMS

    params = yaml.safe_load(TINY_PARAMS.read_text())
    results = {}
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        for scheduler in ("threads", "local", cluster.scheduler_address):
            params["ingest"] = {"scheduler": scheduler, "chunk_frames": 16}
            path = tmp_path / f"params_{len(results)}.yaml"
            path.write_text(yaml.safe_dump(params))
            out = tmp_path / f"out_{len(results)}.nc"
            result = ingest_cli(path, out)
            assert result.returncode == 0, result.stderr
            # this test's cluster holds port 8787 (dask's default) if it was free: a job's own
            # cluster takes a free port instead of warning that 8787 is in use
            assert "already in use" not in result.stderr, result.stderr
            results[scheduler] = xr.open_dataset(out).load()
        # the external cluster ran the work (the other two runs never contact it)
        assert client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.task_prefixes)) > 0
    reference = results.pop("threads")
    for scheduler, dataset in results.items():
        assert dataset.identical(reference), scheduler
    params["ingest"] = {"scheduler": "tcp://127.0.0.1:9"}  # nothing listens there
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(params))
    unreachable = ingest_cli(tmp_path / "bad.yaml", tmp_path / "bad.nc")
    assert unreachable.returncode == 2 and "tcp://127.0.0.1:9" in unreachable.stderr
    assert not (tmp_path / "bad.nc").exists()
