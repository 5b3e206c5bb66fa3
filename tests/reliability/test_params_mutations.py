"""Mutated params files have one of two outcomes, never a third (issue 23).

Seeded mutations of the tiny params file (tests/reliability/mutations.py: types, bounds,
nearby values, hostile and reserved names, deleted and unknown keys, nesting, lists, swapped
values, ablation and grid edits, and YAML-level damage: aliases, merge keys, duplicated keys,
tags, syntax, encodings, alias bombs, deep nesting). For each:

1. `nuwa validate` refuses it: exit 2, one stderr line naming the file and the mutated key
   (or, for YAML damage, its line); or
2. validate accepts it and every job of its grid (the stage table's commands over the
   grid's axes, as Snakemake runs them) exits 0, writes its declared outputs, and the run's
   metrics and summary are those of its params.

Anything else (a traceback, a refusal of several lines or naming nothing, a hang, a crash,
a stage failing on params validate accepted, a wrong result) fails the test, with the
mutation's replay line. Every mutation is validated; the full pipeline runs for a sample of
the accepted ones, as different as can be (one family after another).

    NUWA_MUTATIONS=N          mutations validated (default 200, about 10 s per hundred)
    NUWA_MUTATION_RUNS=M      accepted mutations run through every stage (default 3, ~20 s each)
    NUWA_MUTATION_SEED=S      another set of mutations (default 23)
    NUWA_MUTATION_INDEX=i,j   only these mutations (a replay); every accepted one of them is run
    NUWA_MUTATION_REPORT=F    write the counts and every outcome to F (JSON)

A larger campaign, its failures grouped by class: `python tests/reliability/mutations.py
campaign SEED N M --report out.json`.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from mutations import DEFAULT_SEED, FAMILIES, mutation, pick_runs, run_pipeline, validate_all

SEED = int(os.environ.get("NUWA_MUTATION_SEED", DEFAULT_SEED))
COUNT = int(os.environ.get("NUWA_MUTATIONS", "200"))
RUNS = int(os.environ.get("NUWA_MUTATION_RUNS", "3"))
ONLY = [int(i) for i in os.environ.get("NUWA_MUTATION_INDEX", "").replace(",", " ").split()]
REPORT = os.environ.get("NUWA_MUTATION_REPORT")


def _say(capsys, text: str) -> None:
    """To the terminal even under -q (the counts are the point of the report)."""
    with capsys.disabled():
        print(f"\n{text}", flush=True)


def _report(section: str, data) -> None:
    if not REPORT:
        return
    existing = json.loads(open(REPORT).read()) if os.path.exists(REPORT) else {}
    existing[section] = data
    with open(REPORT, "w") as handle:
        json.dump(existing, handle, indent=1, default=str)


@pytest.fixture(scope="module")
def validated():
    """(mutations by index, verdicts by index, seconds) of every mutation through `nuwa validate`."""
    indices = ONLY or list(range(COUNT))
    started = time.monotonic()
    verdicts = validate_all(SEED, indices)
    return {i: mutation(SEED, i) for i in indices}, verdicts, time.monotonic() - started


def test_the_generator_replays_and_covers_every_family():
    first = [mutation(SEED, i).data() for i in range(40)]
    assert first == [mutation(SEED, i).data() for i in range(40)]  # one index, one mutation, every time
    if COUNT >= 200 and not ONLY:
        families = {mutation(SEED, i).family for i in range(COUNT)}
        assert families == {name for name, _ in FAMILIES}


def test_every_mutation_is_refused_in_one_line_naming_the_key_or_accepted(validated, capsys):
    mutations, verdicts, seconds = validated
    counts = {outcome: sum(v.outcome == outcome for v in verdicts.values()) for outcome in ("refused", "accepted",
                                                                                            "third")}
    _say(capsys, f"params mutations (seed {SEED}): {len(verdicts)} validated in {seconds:.0f} s: "
                 f"{counts['refused']} refused, {counts['accepted']} accepted, {counts['third']} third outcomes")
    _report("validate", {"seed": SEED, "tried": len(verdicts), **counts, "seconds": round(seconds, 1),
                         "third": {i: {"mutation": mutations[i].describe(), "why": v.why, "output": v.err}
                                   for i, v in verdicts.items() if v.outcome == "third"}})
    assert set(verdicts) == set(mutations)
    third = [f"{mutations[i].describe()}\n    -> {v.why}: {v.err.strip()[:400]}"
             for i, v in sorted(verdicts.items()) if v.outcome == "third"]
    assert not third, f"{len(third)} of {len(verdicts)} mutations had a third outcome:\n" + "\n".join(third)


def test_accepted_mutations_run_every_stage(validated, tmp_path, capsys):
    mutations, verdicts, _ = validated
    accepted = [mutations[i] for i, v in sorted(verdicts.items()) if v.outcome == "accepted"]
    chosen = accepted if ONLY else pick_runs(accepted, RUNS)
    if not chosen:
        pytest.skip("no mutation accepted" if ONLY else "NUWA_MUTATION_RUNS=0")
    started = time.monotonic()
    reports = {item.index: run_pipeline(item, tmp_path / str(item.index)) for item in chosen}
    seconds = time.monotonic() - started
    ok = sum(report["ok"] for report in reports.values())
    _say(capsys, f"params mutations (seed {SEED}): {len(chosen)} of {len(accepted)} accepted run through every "
                 f"stage in {seconds:.0f} s ({', '.join(str(r['seconds']) for r in reports.values())} s): {ok} ok")
    _report("runs", {i: {"mutation": mutations[i].describe(), **r} for i, r in reports.items()})
    failed = [f"{mutations[i].describe()}\n    -> {r.get('why')} at {r.get('stage')} "
              f"({' '.join(r.get('argv') or [])}): {r.get('err', '').strip()[-600:]}"
              for i, r in reports.items() if not r["ok"]]
    assert not failed, (f"{len(failed)} of {len(chosen)} accepted mutations did not run through every stage:\n"
                        + "\n".join(failed))
