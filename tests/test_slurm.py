"""The workflow on a real Slurm cluster (workflow/scripts/local_slurm.sh) through workflow/profiles/slurm.

Runs where Slurm's daemons can run: as root (CI runs as root). The script installs Debian's
slurm-wlm, slurmdbd, mariadb-server and munge if they are missing, starts them, and stops
every daemon it started at the end of the module.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
import yaml

from conftest import REPO, TINY_PARAMS, comparable, make_workdir, output_files, tool_env

SCRIPT = REPO / "workflow" / "scripts" / "local_slurm.sh"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="a local Slurm cluster needs root (CI runs as root)"),
]

# status polling every second instead of the plugin's cluster-friendly defaults (40 s first wait)
FAST_POLLING = ["--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1"]


def small_params() -> dict:
    """The tiny params cut down to two cells (simvp x ori, nuwa): every job the run keeps has the
    tiny params of the suite's shared local run (conftest's `uninterrupted_tiny_run`), so that run
    is this one's reference."""
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["grid"].update(backbones=["simvp"], variants=["ori", "nuwa"])
    return params


@pytest.fixture(scope="module")
def cluster():
    began = time.perf_counter()
    subprocess.run([str(SCRIPT), "start"], check=True, capture_output=True, text=True, timeout=600)
    print(f"local Slurm cluster start-up: {time.perf_counter() - began:.1f} s")
    try:
        yield
    finally:
        subprocess.run([str(SCRIPT), "stop"], check=False, capture_output=True, text=True, timeout=120)


def sacct_rows(since: str) -> list[dict]:
    result = subprocess.run(["sacct", "-X", "-n", "-P", "-S", since, "-o", "JobID,State,Comment,AllocTRES"],
                            check=True, capture_output=True, text=True)
    keys = ("job_id", "state", "comment", "tres")
    return [dict(zip(keys, line.split("|"))) for line in result.stdout.splitlines() if line.strip()]


def running_train_job() -> str | None:
    result = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i|%k"], capture_output=True, text=True)
    for line in result.stdout.splitlines():
        job_id, _, comment = line.partition("|")
        if comment.startswith("rule_train_"):
            return job_id
    return None


def test_workflow_on_slurm_equals_local_and_survives_a_cancelled_job(cluster, uninterrupted_tiny_run, tmp_path):
    local = uninterrupted_tiny_run[0]  # the same jobs, run by `snakemake --cores 2` without Slurm
    (tmp_path / "slurm").mkdir()
    on_slurm = make_workdir(tmp_path / "slurm", small_params())
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 2))
    began = time.perf_counter()
    log = open(tmp_path / "slurm.log", "w")
    run = subprocess.Popen(["snakemake", "--profile", "workflow/profiles/slurm", *FAST_POLLING], cwd=on_slurm,
                           env=tool_env(), stdout=log, stderr=subprocess.STDOUT)
    cancelled = None
    try:
        deadline = time.time() + 600
        while run.poll() is None and cancelled is None and time.time() < deadline:
            job = running_train_job()
            if job is not None:
                # at once: the tiny cell's job lasts seconds (a Snakemake start and the imports
                # before its first step), and a cancel must not come after its end
                subprocess.run(["scancel", job], check=True)
                cancelled = job
            time.sleep(0.3)
        returncode = run.wait(timeout=900)
    finally:
        if run.poll() is None:
            run.kill()
        log.close()
    slurm_seconds = time.perf_counter() - began
    log_text = (tmp_path / "slurm.log").read_text()
    assert returncode == 0, log_text[-5000:]
    assert cancelled is not None, "no training job was seen running"

    # same bytes as the local run (the cancelled cell restarted deterministically): every file of
    # the two cells and of the stages before them (history.csv without its wall-clock column); the summary table's rows are the local one's
    cells = [f"results/runs/moving_glyphs/forecast/100pct/simvp/{variant}/seed0" for variant in ("ori", "nuwa")]
    produced = output_files(on_slurm)
    assert produced <= output_files(local), produced - output_files(local)
    for relative in sorted(produced):
        if relative.startswith(("results/tables/", "results/figures/", "results/metrics/", "results/plots/")):
            continue  # the tables stage's, drawn from the whole grid: the local run's has more cells
        assert comparable(on_slurm / relative) == comparable(local / relative), relative
    assert {f"{cell}/{name}" for cell in cells for name in ("model.pt", "metrics.json")} <= produced
    summary, local_summary = ((d / "results/tables/summary.csv").read_text().splitlines() for d in (on_slurm, local))
    assert summary[0] == local_summary[0] and len(summary) == 5  # header, two cells, persistence, optical flow
    assert set(summary) <= set(local_summary), (summary, local_summary)

    rows = sacct_rows(since)
    by_rule: dict[str, list[dict]] = {}
    for row in rows:
        rule = row["comment"].removeprefix("rule_").split("_wildcards_")[0]
        by_rule.setdefault(rule, []).append(row)
    assert {"ingest", "pretrain", "saliency", "bank", "train", "tables", "figures"} <= set(by_rule), rows
    for row in by_rule["train"] + by_rule["pretrain"] + by_rule["saliency"]:
        assert "gres/gpu=1" in row["tres"], row  # GPU rules ask for a GPU
    for row in by_rule["ingest"] + by_rule["bank"] + by_rule["tables"]:
        assert "gres/gpu" not in row["tres"], row  # the others do not
    cancelled_row = next(row for row in rows if row["job_id"] == cancelled)
    assert cancelled_row["state"].startswith("CANCELLED")
    retried = [row for row in by_rule["train"] if row["comment"] == cancelled_row["comment"] and row["job_id"] != cancelled]
    assert retried and retried[-1]["state"] == "COMPLETED", rows
    jobs = len(rows)
    print(f"Slurm run: {slurm_seconds:.1f} s for {jobs} Slurm jobs (one cancelled and retried)")
