"""The DVC experiment queue: two experiments queued and run two at once (`dvc queue start -j 2`)
give the bytes of the same experiments computed one after the other (`dvc repro --no-run-cache`).

Real `dvc` with its celery queue workers, on the tiny params cut down to two cells.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import TINY_PARAMS, digest, output_files
from test_concurrency import _dvc_workdir, run, wait_for

pytestmark = pytest.mark.slow


EXPERIMENTS = {"a": {"train.learning_rate": 0.002, "variants.random.environment_ratio": 0.5},
               "b": {"train.learning_rate": 0.004, "variants.random.environment_ratio": 0.75}}


def _queue_params() -> dict:
    """The tiny params cut down to two cells (simvp x ori, random) of two training steps."""
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["grid"].update(backbones=["simvp"], variants=["ori", "random"])
    params["train"].update(steps=2, eval_every=2, checkpoint_every=2)
    params["pretrain"]["steps"] = 2
    return params


def _results(directory: Path) -> dict[str, str]:
    """Digests of the files an experiment decides: metrics, banks, summary table."""
    return {name: digest(directory / name) for name in output_files(directory)
            if name.endswith(("metrics.json", ".nc", "summary.csv")) and "results/" in name}


def _set_args(values: dict) -> list[str]:
    return [arg for key, value in values.items() for arg in ("-S", f"{key}={value}")]


@pytest.fixture(scope="module")
def queued_and_sequential(tmp_path_factory):
    directory = _dvc_workdir(tmp_path_factory.mktemp("dvcqueue"), _queue_params())
    # the baseline commit holds the workflow and params only: each queued experiment computes
    # every stage itself (a baseline `dvc repro` first would cost a whole pipeline run)
    run(["git", "add", "-A"], directory)
    run(["git", "commit", "-q", "-m", "baseline"], directory)
    try:
        for name, values in EXPERIMENTS.items():
            run(["dvc", "exp", "run", "--queue", "-n", f"queued-{name}", *_set_args(values)], directory)
        run(["dvc", "queue", "start", "-j", "2"], directory)

        def finished():
            status = run(["dvc", "queue", "status"], directory).stdout
            done = {name: re.search(rf"queued-{name}\s.*\b(Success|Failed)\b", status) for name in EXPERIMENTS}
            return status if all(done.values()) else None

        def logs() -> str:
            return "".join(f"\n--- dvc queue logs queued-{name}:\n"
                           + run(["dvc", "queue", "logs", f"queued-{name}"], directory, check=False).stdout[-3000:]
                           for name in EXPERIMENTS)

        try:
            status = wait_for(finished, "both queued experiments finished", poll=1.0)
        except AssertionError as error:
            status = run(["dvc", "queue", "status"], directory, check=False).stdout
            raise AssertionError(f"{error}\ndvc queue status:\n{status}{logs()}") from None
        for name in EXPERIMENTS:
            assert re.search(rf"queued-{name}\s.*\bSuccess\b", status), status + logs()
    finally:
        run(["dvc", "queue", "stop", "--kill"], directory, check=False)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], directory).stdout)
    queued, sequential = {}, {}
    for name in EXPERIMENTS:
        run(["dvc", "exp", "apply", f"queued-{name}"], directory)
        queued[name] = _results(directory)
    # one after the other, computed afresh: `dvc exp run` would restore the queued runs' stages
    # from DVC's run cache (equal bytes by construction), so the params are set in the file and
    # `dvc repro --no-run-cache` recomputes every stage they change
    baseline = _queue_params()
    for name, values in EXPERIMENTS.items():
        params = copy.deepcopy(baseline)
        for key, value in values.items():
            *parents, last = key.split(".")
            node = params
            for part in parents:
                node = node[part]
            node[last] = value
        (directory / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        ran = run(["dvc", "repro", "--no-run-cache"], directory).stdout
        assert "Running stage 'train@" in ran, ran[-2000:]  # computed, not restored
        sequential[name] = _results(directory)
    return directory, shown, queued, sequential


def test_queued_experiments_run_two_at_once_give_the_results_of_one_after_the_other(queued_and_sequential):
    _, shown, queued, sequential = queued_and_sequential
    for name in EXPERIMENTS:
        assert any(path.endswith("metrics.json") for path in queued[name])
        assert any("results/bank/" in path for path in queued[name])
        assert queued[name] == sequential[name], name
    assert queued["a"] != queued["b"]  # the parameters did change the results
    text = json.dumps(shown)
    assert all(f"queued-{name}" in text for name in EXPERIMENTS)
