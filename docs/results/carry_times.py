"""Give a resumed experiment's finished outputs times in pipeline order, after the data was copied afresh.

The shared data directory (../shared/data) is copied anew, with new modification times and the
same bytes, at the start of each sitting of this machine. Snakemake compares times: every job from
ingest on would look out of date and rerun, hours of finished training thrown away. When the data's
contents are the ones the experiment's first sitting read (a SHA-256 over every file, kept in
``data_fingerprint.txt``), this touches every existing output of the stage table, stage by stage
in pipeline order (ingest, then pretraining, saliency, banks, runs ...), so each is newer than what
it was made from, and Snakemake's other triggers (params, code, missing or incomplete outputs)
decide what runs. If the contents differ it touches nothing and exits 2: the finished cells were
made from other data.

    python docs/results/carry_times.py [--data ../shared/data]
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import os
import re
import sys
import time
from pathlib import Path

from nuwa.stages import STAGES

FINGERPRINT = Path("data_fingerprint.txt")


def data_fingerprint(root: Path) -> str:
    """SHA-256 over every file's relative path and bytes, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def output_globs() -> list[list[str]]:
    """Each stage's output path templates as globs, in the stage table's (pipeline) order.

    With the stage's benchmark files: Snakemake counts a job's benchmark among its outputs when it
    asks whether an input is newer than them."""
    return [[re.sub(r"\{[^}]*\}", "*", spec.path) for spec in stage.outputs.values()]
            + [f"logs/benchmarks/{name}/**/*.tsv"]
            for name, stage in STAGES.items() if name != "validate"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data", type=Path, help="the shared data directory")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"{args.data}: no such directory; nothing to carry", file=sys.stderr)
        return 0
    now = data_fingerprint(args.data)
    if not FINGERPRINT.exists():
        FINGERPRINT.write_text(now + "\n")
        print(f"first sitting: recorded the contents of {args.data} ({now[:16]}) in {FINGERPRINT}")
        return 0
    before = FINGERPRINT.read_text().strip()
    if before != now:
        print(f"refusing to resume: the contents of {args.data} changed since the first sitting "
              f"({FINGERPRINT}: {before[:16]}, now {now[:16]}); move results/ and data/processed/ "
              "away to start afresh", file=sys.stderr)
        return 2
    start = time.time()
    touched = 0
    for step, patterns in enumerate(output_globs()):
        stamp = start + step  # a second per stage: each stage strictly newer than the one before
        for pattern in patterns:
            for path in glob.glob(pattern, recursive=True):
                if os.path.isfile(path):
                    os.utime(path, (stamp, stamp))
                    touched += 1
                elif os.path.isdir(path):  # a folder output: its files too
                    for inner in Path(path).rglob("*"):
                        os.utime(inner, (stamp, stamp))
                        touched += 1
                    os.utime(path, (stamp, stamp))
    print(f"{args.data} unchanged ({now[:16]}): {touched} finished outputs given times in pipeline order")
    return 0


if __name__ == "__main__":
    sys.exit(main())
