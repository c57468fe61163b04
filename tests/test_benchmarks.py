"""The benchmarks run in quick mode so they cannot rot; their numbers come from full runs, not from tests."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_side_by_side_benchmark_quick(tmp_path):
    out = tmp_path / "run.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--threads", "1", "--out", str(out)],
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {(r["case"], r["peer"], r["variant"]): r for r in result["rows"]}
    assert rows.keys() == {("image224", "theirs", "fp32"), ("image448", "theirs", "fp32"), ("text", "theirs", "fp32"),
                           ("train", "theirs", "fp32"), ("segment", "reference", "fp32"), ("segment", "theirs", "fp32"),
                           ("image224", "theirs", "bf16"), ("segment", "reference", "bf16")}  # fmt: skip
    timed = [r for r in rows.values() if "skipped" not in r]
    assert all(r["variant"] == "bf16" for r in rows.values() if "skipped" in r)  # only bf16 without bf16 kernels
    assert all(r["ours_s"] > 0 and r["peer_s"] > 0 and r["ours_peak_mib"] > 0 for r in timed)
    assert 0.99 < rows["image224", "theirs", "bf16"]["accuracy"]["min_cosine_vs_fp32"] <= 1.0 + 1e-6
    assert result["matmul_gflops"]["fp32"] > 0 and result["machine"]["torch"] and result["machine"]["cpu"]
    assert len(result["load_average_1_5_15min"]["start"]) == 3
