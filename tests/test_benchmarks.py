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
    assert all(r["ours_s"] > 0 and r["peer_s"] > 0 for r in timed)
    # Peak memory is the growth of the resident set during a case: 0 when the case fits in memory the allocator
    # already holds from the cases before it (seen for the small bf16 segment case), never negative.
    assert all(r["ours_peak_mib"] >= 0 and r["peer_peak_mib"] >= 0 for r in timed)
    assert max(r["ours_peak_mib"] for r in timed) > 0
    assert 0.99 < rows["image224", "theirs", "bf16"]["accuracy"]["min_cosine_vs_fp32"] <= 1.0 + 1e-6
    assert result["matmul_gflops"]["fp32"] > 0 and result["machine"]["torch"] and result["machine"]["cpu"]
    assert len(result["load_average_1_5_15min"]["start"]) == 3


def test_naming_variants_table_on_a_tiny_model_and_dataset(tmp_path):
    """Each row's numbers are those of evaluating it directly; thresholds come from calib; scene counts from the
    scenes' own object lists."""
    import numpy as np

    import groupvit
    from benchmarks.naming_variants import main
    from groupvit.config import GroupViTConfig, TextConfig, VisionConfig
    from groupvit.data.synthvoc import SceneOptions, SynthVOCSpec, generate, voc_root
    from groupvit.evaluation.datasets import load_dataset
    from groupvit.evaluation.run import CalibrationImages, evaluate_segmentation
    from tests.conftest import randomize

    data = tmp_path / "synthvoc"
    spec = SynthVOCSpec(seed=2, train=1, val=8, test=1, calib=3, shard_size=1, scene=SceneOptions(size=64))
    generate(data, spec, workers=1, progress=False)
    vision = VisionConfig(image_size=64, patch_size=8, width=32, depths=[1, 1, 1], num_heads=2,
                          num_group_tokens=[8, 4, 0], num_output_groups=[8, 4])  # fmt: skip
    config = GroupViTConfig(vision=vision, text=TextConfig(width=32, layers=1, heads=2), projection_dim=16,
                            projection_hidden_dim=32)  # fmt: skip
    model = randomize(groupvit.GroupViT(config), seed=4)
    groupvit.save_model(model, tmp_path / "model.safetensors")
    rows = "official,calibrated,per_class,voc_words,top_1,hierarchical_0.3"
    out = tmp_path / "out"
    assert main([str(tmp_path / "model.safetensors"), "--data", str(data), "--out", str(out), "--rows", rows,
                 "--grid", "0.5,0.95", "--calib-images", "3", "--dense-scenes", "3"]) == 0  # fmt: skip
    report = json.loads((out / "results.json").read_text())[0]
    table = (out / "table.md").read_text()
    assert all(f"| {row} |" in table for row in rows.split(",")) and "mIoU 6+ objects" in table

    val = load_dataset("voc", voc_root(data), "val")
    official = evaluate_segmentation(model, val, "whole", 0.95, short_side=64, oracle=True, progress=False)
    assert report["rows"]["official"]["miou"] == official["miou"]
    assert report["rows"]["official"]["oracle"] == official["oracle"]["miou"]
    objects = [v for k, v in official["per_class"].items() if k != "background" and v is not None]
    assert report["rows"]["official"]["objects"] == pytest.approx(np.mean(objects))
    chosen, curve = CalibrationImages(model, load_dataset("voc", voc_root(data), "calib"), 3, "whole",
                                      short_side=64).threshold(grid=[0.5, 0.95])  # fmt: skip
    calibrated = report["rows"]["calibrated"]
    assert calibrated["threshold"] == chosen and calibrated["calib_miou"] == curve[chosen]
    assert report["rows"]["per_class"]["threshold"] == f"per class from {chosen}"
    assert set(report["rows"]["per_class"]["naming"]["class_thresholds"].values()) <= {0.5, 0.95}
    scenes = json.loads((voc_root(data) / "scenes.json").read_text())
    counts = [len(scenes[image_id]["objects"]) for image_id, *_ in val.samples]
    dense = json.loads((voc_root(out / "dense") / "scenes.json").read_text())
    assert report["scenes"] == {"calib": 3, "val": 8, "1_object": counts.count(1), "4_object": counts.count(4),
                                "6plus": sum(len(s["objects"]) >= 6 for s in dense.values())}  # fmt: skip


def test_accumulation_benchmark_counts_saved_tensors_and_runs_a_step():
    """activation_bytes against a graph counted by hand; one cached step and its baseline report sane numbers."""
    import torch

    from benchmarks.accumulation import activation_bytes, case, fit

    weight = torch.nn.Parameter(torch.randn(16, 32))
    x = torch.randn(8, 16)
    # x @ W saves x (for W's gradient; W itself is a parameter, not counted); relu saves its output [8, 32].
    assert activation_bytes(torch.nn.Linear(1, 1), lambda: torch.relu(x @ weight), bf16=False) == (8 * 16 + 8 * 32) * 4
    assert fit((1, 2, 4), [6.0, 17.0, 57.0]) == pytest.approx([1.0, 2.0, 3.0])  # 1 + 2 B + 3 B^2
    for variant in ("cached", "per_micro_batch"):
        row = case(8, 2, 1, variant)
        assert row["k"] == 2 and row["micro_batch"] == 4 and row["variant"] == variant
        assert row["ms_per_image"] > 0 and row["cpu_ms_per_image"] > 0
        assert row["peak_rss_mib"] >= row["rss_before_steps_mib"] > 0


def test_finetune_memory_measures_each_batch_in_its_own_process():
    run = subprocess.run([sys.executable, "-m", "benchmarks.finetune_memory", "--preset", "small", "--batches", "2",
                          "4"], capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert [r["batch"] for r in result["measured"]] == [2, 4] and all(r["peak_mib"] > 0 for r in result["measured"])
    peaks = [r["peak_mib"] for r in result["measured"]]
    # the line through two points: its value at 4 is the measurement, and it grows with the batch
    assert result["fixed_mib"] + 4 * result["per_image_mib"] == pytest.approx(peaks[1])
    assert result["computed"]["256"] > result["computed"]["16"] > 0
