"""Seconds per training step of the backbones and shapes of the CPU experiment files
(experiments/*_cpu.yaml), on this machine: what their budgets are sized from.

    python docs/measurements/step_times.py > docs/measurements/2026-12-07-step-times.csv

One forward + backward + Adam step of a batch of 16 (train.batch_size), each backbone's own
training method (nuwa.methods), small size, torch on 1 thread (the workflow's --threads 1 jobs,
two at a time on the 2 cores), median of the timed repeats after two warm-up steps.
"""

from __future__ import annotations

import csv
import platform
import statistics
import sys
import time

import torch

from nuwa.backbones import create_backbone
from nuwa.methods import training_loss

CASES = [  # (experiment, dataset, in_shape T,C,H,W at the model's input, out_frames, scale, backbones)
    ("table1_cpu", "nytaxi", (4, 2, 16, 12), 4, 1, ("swin", "convlstm", "simvp")),
    ("table1_cpu", "wfde5_precip", (6, 1, 20, 28), 6, 1, ("swin", "convlstm", "simvp")),
    ("table1_cpu", "radar_pool / pollutant", (6, 1, 32, 32), 6, 1, ("swin", "convlstm", "simvp")),
    ("table2_cpu", "pollutant64 sr4 6->6", (6, 1, 16, 16), 6, 4, ("simvp", "predrnn_v2", "earthformer")),
    ("table2_cpu", "pollutant64 sr4 6->12", (6, 1, 16, 16), 12, 4, ("simvp", "predrnn_v2", "earthformer")),
    ("table2_cpu", "radar_pool sr4", (6, 1, 8, 8), 6, 4, ("simvp", "predrnn_v2", "earthformer")),
]


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def seconds_per_step(kind, in_shape, out_frames, scale, batch=16, repeats=8) -> float:
    torch.manual_seed(0)
    model = create_backbone(kind, in_shape=in_shape, out_frames=out_frames, size="small", scale=scale)
    t, c, h, w = in_shape
    inputs = torch.randn(batch, *in_shape)
    targets = torch.randn(batch, out_frames, c, h * scale, w * scale)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    model.train()
    times = []
    for i in range(2 + repeats):
        started = time.perf_counter()
        loss = training_loss(model, inputs, targets, progress=0.5, generator=generator)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if i >= 2:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(1)
    out = csv.writer(sys.stdout)
    out.writerow(["experiment", "dataset", "backbone", "in_shape", "out_frames", "scale", "batch",
                  "seconds_per_step", "cpu", "torch"])
    for experiment, dataset, in_shape, out_frames, scale, backbones in CASES:
        for kind in backbones:
            seconds = seconds_per_step(kind, in_shape, out_frames, scale)
            out.writerow([experiment, dataset, kind, "x".join(map(str, in_shape)), out_frames, scale, 16,
                          f"{seconds:.4f}", cpu_model(), torch.__version__])
            sys.stdout.flush()


if __name__ == "__main__":
    main()
