"""Progress in a log file reads as lines (no carriage-return frames), with the training loss."""

from __future__ import annotations

import io
import sys

from nuwa import progress as progress_module


def test_a_log_file_gets_one_line_per_redraw_and_no_carriage_returns(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)  # not a terminal
    bar = progress_module.progress(total=3, desc="train x", unit="step")
    for step in range(3):
        bar.set_postfix({"loss": f"{1.0 / (step + 1):.4g}"}, refresh=False)
        bar.update(1)
    bar.close()
    text = log.getvalue()
    assert "\r" not in text
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines and all(line.startswith("train x") for line in lines)
    assert "3/3" in lines[-1] and "loss=0.3333" in lines[-1]
