"""Tests for batch.report.html.drawer: the report's page is drawn in a process of its own (matplotlib never
loads into the caller's), and a drawing process that does not answer costs a warning, never the run."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import batch
from batch.report.html import drawer


def test_a_python_call_gets_its_report_page_without_loading_matplotlib(tmp_path: Path) -> None:
    code = f"""
import sys
import pandas as pd
import batch
out = batch.run(pd.DataFrame({{"q": ["one", "two"]}}), model="openai/gpt-oss-20b", prompt="Say ${{q}}",
                simulate=True, progress=False, output={str(tmp_path / "out.parquet")!r})
print(list(out["text"].notna()), "matplotlib" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[-2] == "[True, True] False"
    page = (tmp_path / "out.parquet.report.html").read_text(encoding="utf-8")
    assert "<svg" in page and 'data-key="rows_ok"' in page


def test_a_drawing_that_does_not_answer_costs_a_warning_not_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(drawer, "DRAW_S", 0.0)  # no drawing process answers that fast
    with caplog.at_level(logging.WARNING, logger="batch"):
        out = batch.run(pd.DataFrame({"q": ["one", "two"]}), model="openai/gpt-oss-20b", prompt="Say ${q}",
                        simulate=True, progress=False, output=str(tmp_path / "out.parquet"))
    assert out["text"].notna().all() and out.attrs["batch"]["rows_ok"] == 2
    assert (tmp_path / "out.parquet.report.json").exists()
    assert not (tmp_path / "out.parquet.report.html").exists()
    assert any("report.html" in r.getMessage() and "did not answer" in r.getMessage() for r in caplog.records)
