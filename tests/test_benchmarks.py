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
    cases = {(r["case"], r["peer"]) for r in result["rows"]}
    assert cases == {("image224", "theirs"), ("image448", "theirs"), ("text", "theirs"), ("train", "theirs"),
                     ("segment", "reference"), ("segment", "theirs")}  # fmt: skip
    assert all(r["ours_s"] > 0 and r["peer_s"] > 0 for r in result["rows"])
    assert result["matmul_gflops"] > 0 and result["machine"]["torch"]
