"""Resources: a write that runs out of space, and a job that exceeds its declared memory.

Out of space is simulated with a file size limit (RLIMIT_FSIZE, `ulimit -f`) set in the real
`nuwa <stage>` process: past it the kernel refuses the write (EFBIG, and SIGXFSZ, which nuwa
handles instead of dying of it), exactly where a full disk refuses one (ENOSPC). Each stage
must exit non-zero with `nuwa <stage>: error: <file>: cannot write: file size limit ...`, and
leave neither the file nor a temporary beside it.

Memory: Snakemake rules pass their `resources.mem_mb` to nuwa (`--mem-mb N --mem-rule RULE`),
and nuwa stops a job whose resident memory (with its children) exceeds it. The memory bounds
of the streaming stages themselves are proven by tests/test_ingest_memory.py and
tests/test_bench_bank.py (peak memory does not grow with the dataset).
"""

from __future__ import annotations

import errno
import os
import re
import resource
import signal
import subprocess

import pytest
import yaml

from conftest import TINY_PARAMS, make_workdir, tool_env
from nuwa import cli
from nuwa.resources import space_problem

DATASET = "moving_glyphs"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny pipeline's inputs in the standard layout (in-process, short training)."""
    directory = tmp_path_factory.mktemp("resources")
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["train"].update(steps=2, eval_every=1, checkpoint_every=1)
    params["grid"]["backbones"] = ["simvp"]
    (directory / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    common = ["--params", "params.yaml", "--dataset", DATASET, "--threads", "1"]
    cwd = os.getcwd()
    os.chdir(directory)
    try:
        for argv in (["ingest"], ["baseline", "--baseline", "persistence"], ["baseline", "--baseline", "optical_flow"],
                     ["pretrain"], ["saliency"],
                     *(["bank", "--variant", v, "--seed", "0"] for v in params["grid"]["variants"]),
                     *(["train", "--backbone", "simvp", "--variant", v, "--seed", "0", "--device", "cpu"]
                       for v in params["grid"]["variants"])):
            assert cli.main([argv[0], *common, *argv[1:]]) == 0, argv
    finally:
        os.chdir(cwd)
    return directory


def _file_size_limit(limit: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        # SIGXFSZ's default action (this process may ignore it: an ignored signal is inherited)
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    return apply


# stage, extra arguments, the file it fails to write (relative to out/), limit in bytes, format
CASES = [
    ("ingest", ["--out", "out/data.nc"], "data.nc", 20_000, "NetCDF"),
    ("bank", ["--variant", "random", "--seed", "0", "--out", "out/bank.nc"], "bank.nc", 50_000, "NetCDF, streamed"),
    ("train", ["--backbone", "simvp", "--variant", "ori", "--seed", "0", "--device", "cpu", "--out-dir", "out"],
     "checkpoint.pt", 4_000, "torch checkpoint"),
    ("baseline", ["--baseline", "persistence", "--out", "out/persistence.json", "--losses-out", "out/losses.nc"],
     "losses.nc", 2_000, "NetCDF"),
    ("figures", ["--out-predictions", "out/predictions.png", "--out-saliency", "out/saliency.png"],
     "predictions.png", 8_000, "PNG"),
]


@pytest.mark.parametrize("stage, extra, target, limit, kind", CASES, ids=[c[0] for c in CASES])
def test_a_write_past_the_file_size_limit_is_a_clear_error_and_leaves_nothing(built, stage, extra, target, limit,
                                                                               kind):
    out = built / "out"
    if out.exists():
        for leftover in out.iterdir():
            leftover.unlink()
    command = ["nuwa", stage, "--params", "params.yaml", "--dataset", DATASET, "--threads", "1", *extra]
    result = subprocess.run(command, cwd=built, env=tool_env(), capture_output=True, text=True, timeout=300,
                            preexec_fn=_file_size_limit(limit), check=False)
    assert result.returncode != -25, f"{stage}: killed by SIGXFSZ instead of reporting the error"
    assert result.returncode == 2, f"{stage} ({kind}): exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    # (maybe right after a progress bar, on its line)
    assert re.search(rf"nuwa {stage}: error: out/{re.escape(target)}: cannot write: file size limit reached",
                     result.stderr), result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert target not in left, f"{stage}: a partial {target} is visible"
    assert not [name for name in left if name.endswith(".tmp")], f"{stage}: temporary files left: {left}"


def test_space_errors_name_the_cause():
    """The errno mapping used by every write (full disk, quota, size limit)."""
    assert "disk is full" in space_problem(OSError(errno.ENOSPC, "No space left on device"))
    assert "file size limit" in space_problem(OSError(errno.EFBIG, "File too large"))
    assert "quota" in space_problem(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert space_problem(OSError(errno.EACCES, "Permission denied")) is None
    assert space_problem(RuntimeError("NetCDF: HDF error")) is None  # no limit hit, disk not full


MEMORY_ERROR = r"nuwa ingest: error: job exceeded its declared mem_mb=(\d+) \(peak RSS (\d+) MB\); " \
               r"raise resources.mem_mb for rule ingest"


def test_a_job_over_its_declared_mem_mb_is_stopped_and_named(tmp_path):
    out = tmp_path / "data.nc"
    command = ["nuwa", "ingest", "--params", str(TINY_PARAMS), "--dataset", DATASET, "--threads", "1",
               "--out", str(out), "--mem-mb", "40", "--mem-rule", "ingest"]
    result = subprocess.run(command, env=tool_env(), capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    match = re.search(MEMORY_ERROR, result.stderr)
    assert match, result.stderr
    assert int(match.group(1)) == 40 and int(match.group(2)) > 40
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))
    # within its declared memory the same job runs
    ok = subprocess.run(command[:-4] + ["--mem-mb", "4000"], env=tool_env(), capture_output=True, text=True,
                        timeout=300, check=False)
    assert ok.returncode == 0 and out.exists(), ok.stderr


def test_a_job_whose_memory_interrupt_was_swallowed_publishes_no_output(tmp_path):
    """Seen twice (CI, the suite): a library's clean-up swallowed the watchdog's interrupt and the
    ingest ran on to its end. Once the watch has seen the job over its limit, an output that is
    finished is still not moved into place: no file, no temporary left, the interrupt raised."""
    from nuwa.io import atomic_path
    from nuwa.resources import MemoryLimitExceeded, MemoryWatch

    out = tmp_path / "data.nc"
    with MemoryWatch(10**6, "ingest", "ingest") as watch:
        with atomic_path(tmp_path / "before.nc") as tmp:
            tmp.write_text("written within the limit")
        watch.exceeded = True  # what the watchdog sets past the limit; its interrupt was swallowed
        with pytest.raises(MemoryLimitExceeded, match=r"data.nc: not written: job exceeded its declared mem_mb"):
            with atomic_path(out) as tmp:
                tmp.write_text("finished after the interrupt")
    assert (tmp_path / "before.nc").exists()
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))
    with atomic_path(out) as tmp:  # the watch has ended: writes go through again
        tmp.write_text("x")
    assert out.read_text() == "x"


def test_snakemake_passes_each_rules_mem_mb_to_nuwa(tmp_path):
    """A rule's declared mem_mb, lowered with --set-resources, stops its job with the message."""
    directory = make_workdir(tmp_path)
    target = f"data/processed/{DATASET}.nc"
    result = subprocess.run(["snakemake", target, "--cores", "1", "--set-resources", "ingest:mem_mb=40"],
                            cwd=directory, env=tool_env(), capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode != 0
    log = (directory / f"logs/ingest/{DATASET}.log").read_text()
    assert re.search(MEMORY_ERROR, log), log
    assert f"logs/ingest/{DATASET}.log" in result.stdout + result.stderr  # Snakemake points to the log
    assert not (directory / target).exists()
