"""Side-by-side speed of groupvit and transformers' GroupViTModel on identical random weights.

    python -m benchmarks.run [--quick] [--repeats 5] [--threads N] [--device cpu|cuda] [--compile]
                             [--out benchmarks/results/run.json]
    python -m benchmarks.run --onnx [--quick] [--repeats 5] [--threads N] [--out benchmarks/results/onnx.json]

Medians over repeats after a warm-up; ratios are ours / theirs in throughput (higher is better for us). Cases:
image embedding (batch 32 at 224 and 448), text embedding (256 prompts), a training step (forward, backward and
a fused AdamW step, the same optimiser for both, on the contrastive loss, batch 32), and zero-shot segmentation of
a 500x375 image with the 21 VOC classes under the official protocol against a per-crop reference that encodes
each crop twice, one at a time, as the NVlabs code does (and transformers' `output_segmentation` at 224 for
scale). Variants of ours: `bf16` autocast (GPU, or CPUs with AVX512-BF16/AMX; its accuracy against fp32 is
measured everywhere) and `compile` (`--compile`), each against transformers in fp32.

Every case runs in a fresh subprocess holding only the model it times. Peak memory: on CPU, the growth of the
process's peak resident set (VmHWM, reset through /proc/self/clear_refs once the model is loaded) over its
resident set at that point, so weights are not counted and every torch allocation is (tracemalloc sees none);
on GPU, torch.cuda.max_memory_allocated over the allocation after loading. The machine's matmul rate (fp32, and
bf16 where it applies) is measured in the same run, as is the load average of the machine.

`--onnx` times, instead, the image tower (224 and 448, batch 1 and 8) and the text tower (256 prompts) of five
runtimes on the same weights: ours and transformers' model on PyTorch (one process, calls interleaved), then our
ONNX export on onnxruntime in fp32 and with dynamic int8 quantisation and transformers' model exported with
torch.onnx, on onnxruntime (a second process, calls interleaved).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from groupvit.evaluation.datasets import VOC_CLASSES

VOC = list(VOC_CLASSES)
VISION_GFLOPS_224 = 7.94  # one 224 image through the vision tower (issue 6)
TEXT_GFLOPS = 1.53  # one 77-token text through the text tower; ours stops at the longest prompt's EOT


def timed(fn, repeats: int, device: str = "cpu") -> float:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn()  # warm-up (and compilation)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def models(quick: bool):
    """Identical random weights in transformers' GroupViTModel and ours (through a saved transformers folder)."""
    from transformers import GroupViTConfig, GroupViTModel

    import groupvit

    torch.manual_seed(0)
    config = GroupViTConfig()
    if quick:
        config = GroupViTConfig(
            projection_dim=32, projection_intermediate_dim=64,
            vision_config=dict(hidden_size=64, intermediate_size=256, depths=[1, 1, 1], num_hidden_layers=3,
                               num_group_tokens=[8, 4, 0], num_output_groups=[8, 4, 4], num_attention_heads=2),
            text_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=1, num_attention_heads=1),
        )  # fmt: skip
    theirs = GroupViTModel(config).eval()
    folder = tempfile.mkdtemp()
    theirs.save_pretrained(folder)
    return groupvit.load_model(folder), theirs


def per_crop_reference(model, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Spec 5.3 as the reference runs it: per crop, one encoder pass for the maps, another for the features."""
    from groupvit.segmentation import segment_crops, slide_windows

    H, W = pixels.shape[2:]
    total, count = None, torch.zeros(1, H, W, device=pixels.device)
    for y1, y2, x1, x2 in slide_windows(H, W, 448, 224):
        crop = pixels[:, :, y1:y2, x1:x2]
        model.encode_image_groups(crop)  # the reference's first pass (attention maps)
        logits, _ = segment_crops(model, crop, text, 0.95)  # second pass
        total = logits.new_zeros(logits.shape[1], H, W) if total is None else total
        total[:, y1:y2, x1:x2] += logits[0]
        count[:, y1:y2, x1:x2] += 1
    return total / count


def bf16_supported(device: str) -> bool:
    """bf16 kernels in hardware: a CUDA GPU with bf16, or a CPU with AVX512-BF16/AMX (oneDNN's check)."""
    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def status_kib(key: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS: resident now, VmHWM: peak resident)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(key + ":"))
    return int(line.split()[1])


class PeakMemory:
    """Peak memory a case adds over the loaded model: RSS high-water mark on CPU, allocator peak on GPU."""

    def __init__(self, device: str) -> None:
        self.device = device

    def start(self) -> None:
        gc.collect()
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated() / 2**20
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS (Linux)
            # The base is the reset high-water mark, not VmRSS: the kernel updates VmHWM lazily, so a VmRSS read
            # just after the reset can exceed the VmHWM read at the end (a negative peak, seen once in CI).
            self.base = status_kib("VmHWM") / 1024

    def peak_mib(self) -> float:
        if self.device == "cuda":
            return torch.cuda.max_memory_allocated() / 2**20 - self.base
        return status_kib("VmHWM") / 1024 - self.base


def case(name: str, quick: bool, repeats: int, device: str) -> dict:
    """Median seconds per call and peak memory of one case (`who:what:variant`), run in this process."""
    import groupvit
    from groupvit.image import rescale_size, to_tensor
    from groupvit.losses import image_text_contrastive_loss
    from groupvit.segmentation import ZeroShotSegmenter, class_text_embeddings

    who, what, variant = name.split(":")
    ours, theirs = models(quick)
    if who == "theirs":
        ours = None  # only the timed model stays resident
    else:
        theirs = None
    model = (theirs or ours).to(device)
    bf16 = torch.autocast(device, dtype=torch.bfloat16, enabled=variant == "bf16")
    batch = 4 if quick else 32
    result: dict = {}
    if variant == "compile":
        ours.compile_encoders()
    if what.startswith("image"):
        x = torch.randn(batch, 3, int(what.removeprefix("image")), int(what.removeprefix("image")), device=device)
        if who == "ours":

            def fn(x=x):
                with torch.inference_mode(), bf16:
                    return ours.encode_image(x)

            if variant == "bf16":  # accuracy on a few images, also where bf16 is too slow to time
                few = x[: 2 if bf16_supported(device) else 1]
                with torch.inference_mode():
                    cosine = F.cosine_similarity(fn(few).float(), ours.encode_image(few), dim=-1)
                result["accuracy"] = {"min_cosine_vs_fp32": cosine.min().item(), "images": len(few)}
        else:
            vm = theirs.vision_model

            def fn():
                with torch.inference_mode():
                    h = vm.encoder(vm.embeddings(x, interpolate_pos_encoding=True)).last_hidden_state
                    return theirs.visual_projection(vm.layernorm(h).mean(1))

    elif what == "text":
        ids = groupvit.tokenize([f"a photo of a {c}." for c in VOC] * (4 if quick else 13))[: 16 if quick else 256]
        ids = ids.to(device)

        def fn():
            with torch.inference_mode(), bf16:
                return ours.encode_text(ids) if who == "ours" else theirs.get_text_features(input_ids=ids)

    elif what == "train":
        x = torch.randn(batch, 3, 224, 224, device=device)
        ids = groupvit.tokenize([f"a photo of a {c}." for c in VOC[:batch]] * 2)[:batch].to(device)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # the same optimiser for both

        def fn():
            with bf16:
                if who == "ours":
                    image, text = ours.encode_image(x), ours.encode_text(ids)
                    scale = ours.logit_scale_value()
                else:
                    image = theirs.get_image_features(pixel_values=x).pooler_output
                    text = theirs.get_text_features(input_ids=ids).pooler_output
                    scale = theirs.logit_scale.exp()
                loss = image_text_contrastive_loss(F.normalize(image, dim=-1), F.normalize(text, dim=-1), scale)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    elif what == "segment":
        size = (94, 125) if quick else (375, 500)
        image = torch.randint(0, 255, (*size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        image = image.numpy()
        if who == "ours":
            dtype = torch.bfloat16 if variant == "bf16" else None
            seg = ZeroShotSegmenter(ours, VOC, mode="slide", group_maps=False, autocast_dtype=dtype)

            def fn():
                return seg(image)

            if variant == "bf16":
                if not bf16_supported(device):
                    return {"skipped": f"no bf16 kernels on this {device}; accuracy not measured (minutes)"}
                reference = ZeroShotSegmenter(ours, VOC, mode="slide", group_maps=False)(image).labels
                result["accuracy"] = {"label_agreement_vs_fp32": float((fn().labels == reference).mean())}
        elif who == "reference":
            text = class_text_embeddings(ours, VOC)
            pixels = to_tensor(image, rescale_size(*size)).to(device)

            def fn():
                with torch.inference_mode():
                    return per_crop_reference(ours, pixels, text)

        else:
            ids = groupvit.tokenize([f"a photo of a {c}." for c in VOC]).to(device)
            x = torch.randn(1, 3, 224, 224, device=device)

            def fn():
                with torch.inference_mode():
                    return theirs(input_ids=ids, pixel_values=x, output_segmentation=True)

    else:
        raise ValueError(name)
    if variant == "bf16" and not bf16_supported(device):
        return {"skipped": f"no bf16 kernels on this {device} (CPUs need AVX512-BF16 or AMX)", **result}
    memory = PeakMemory(device)
    memory.start()
    seconds = timed(fn, repeats, device)
    return {"seconds": seconds, "peak_mib": memory.peak_mib(), **result}


# --------------------------------------------------------------------------- ONNX (--onnx)

ONNX_CASES = (("image224", 1), ("image224", 8), ("image448", 1), ("image448", 8), ("text", 256))
RUNTIMES = ("ours", "ours onnx", "ours onnx int8", "theirs", "theirs onnx")


class TheirsImage(torch.nn.Module):
    """transformers' image tower as the rows above time it, as one module for torch.onnx."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vm = self.model.vision_model
        h = vm.encoder(vm.embeddings(x, interpolate_pos_encoding=True)).last_hidden_state
        return self.model.visual_projection(vm.layernorm(h).mean(1))


class TheirsText(torch.nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.model.get_text_features(input_ids=ids)
        return out if isinstance(out, torch.Tensor) else out.pooler_output


def interleaved(calls: dict, repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds per call of each function, wall-clock and process CPU time, the calls interleaved
    round-robin (each warmed up once first), so that a shared machine's load falls on all of them alike. With one
    thread CPU time leaves out the time the process waited for a core that another job held."""
    wall: dict[str, list[float]] = {key: [] for key in calls}
    cpu: dict[str, list[float]] = {key: [] for key in calls}
    with torch.inference_mode():
        for fn in calls.values():
            fn()
        for _ in range(repeats):
            for key, fn in calls.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                fn()
                wall[key].append(time.perf_counter() - start)
                cpu[key].append(time.process_time() - start_cpu)
    return ({key: statistics.median(t) for key, t in wall.items()},
            {key: statistics.median(t) for key, t in cpu.items()})  # fmt: skip


PARTS = {"pytorch": ("ours", "theirs"), "onnxruntime": ("ours onnx", "ours onnx int8", "theirs onnx")}


def onnx_rows(quick: bool, repeats: int, part: str) -> list[dict]:
    """One part of the ONNX table: ours and transformers' GroupViTModel on PyTorch ("pytorch"), or our ONNX export
    on onnxruntime in fp32 and dynamic int8 and transformers' model exported with torch.onnx (TorchScript-based, at
    each case's fixed shape) on onnxruntime ("onnxruntime"): the same weights, the calls of each case interleaved.
    The parts run in separate processes: in one process, under load, PyTorch's two-thread OpenMP regions were seen
    to take 20x longer next to onnxruntime's thread pools (1.7 s against 79 ms at one thread)."""
    import groupvit

    ours, theirs = models(quick)
    if part == "onnxruntime":
        import onnxruntime

        from groupvit.export import OPSET, export_onnx, trace
        from groupvit.runtime import session_options

        folder = Path(tempfile.mkdtemp())
        ours_onnx = groupvit.load_model(export_onnx(ours, folder / "fp32"))  # sessions use torch's thread count
        ours_int8 = groupvit.load_model(export_onnx(ours, folder / "int8", quantize="int8"))
        options = session_options(onnxruntime)  # the same as our export's sessions
    prompts = [f"a photo of a {c}." for c in VOC] * 13
    rows = []
    for what, batch in ONNX_CASES:
        batch = min(batch, 4) if quick and what != "text" else batch
        if what == "text":
            x, graph, method = groupvit.tokenize(prompts)[: 16 if quick else batch], TheirsText(theirs), "encode_text"
        else:
            size = int(what.removeprefix("image"))
            x, graph, method = torch.randn(batch, 3, size, size), TheirsImage(theirs), "encode_image"
        if part == "pytorch":
            functions = [getattr(ours, method), graph]
        else:
            proto = trace(graph.eval(), x, ["x"], ["y"], {}, OPSET)
            session = onnxruntime.InferenceSession(proto.SerializeToString(), options,
                                                   providers=["CPUExecutionProvider"])  # fmt: skip
            functions = [getattr(ours_onnx, method), getattr(ours_int8, method),
                         lambda x, s=session: s.run(None, {"x": x.numpy()})]  # fmt: skip
        calls = {key: (lambda f=f, x=x: f(x)) for key, f in zip(PARTS[part], functions, strict=True)}
        seconds, cpu_seconds = interleaved(calls, repeats)
        rows.append({"case": what, "batch": len(x), "seconds": seconds, "cpu_seconds": cpu_seconds})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def merge_parts(parts: list[list[dict]]) -> list[dict]:
    """The parts' rows side by side, with our best fp32 time against each of transformers' (int8 is a variant),
    in wall-clock and in CPU time."""
    rows = []
    for pair in zip(*parts, strict=True):
        row = {"case": pair[0]["case"], "batch": pair[0]["batch"]}
        for clock in ("seconds", "cpu_seconds"):
            seconds = {k: v for part in pair for k, v in part[clock].items()}
            best = min(seconds["ours"], seconds["ours onnx"])
            suffix = "_cpu" if clock == "cpu_seconds" else ""
            row |= {clock: seconds, f"best_fp32_vs_theirs{suffix}": seconds["theirs"] / best,
                    f"best_fp32_vs_theirs_onnx{suffix}": seconds["theirs onnx"] / best}  # fmt: skip
        rows.append(row)
    return rows


def onnx_table(rows: list[dict]) -> str:
    lines = ["| case | batch | ours PyTorch ms | ours onnxruntime ms | ours onnxruntime int8 ms "
             "| transformers PyTorch ms | transformers onnxruntime ms | our best fp32 vs transformers PyTorch "
             "| vs transformers onnxruntime | the two, in CPU time |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in rows:
        ms = " | ".join(f"{r['seconds'][k] * 1e3:.1f}" for k in RUNTIMES)
        lines.append(f"| {r['case']} | {r['batch']} | {ms} | {r['best_fp32_vs_theirs']:.2f}x "
                     f"| {r['best_fp32_vs_theirs_onnx']:.2f}x "
                     f"| {r['best_fp32_vs_theirs_cpu']:.2f}x, {r['best_fp32_vs_theirs_onnx_cpu']:.2f}x |")  # fmt: skip
    return "\n".join(lines)


def matmul_gflops(device: str, dtype: torch.dtype = torch.float32, n: int = 2048) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, 5, device)
    return 2 * n**3 / seconds / 1e9


def nominal_gflops(what: str, batch: int) -> float | None:
    """FLOPs of one call, from the issue's per-image and per-text counts (None where none is given)."""
    forward = {"image224": VISION_GFLOPS_224 * batch, "text": TEXT_GFLOPS * 256,
               "train": (VISION_GFLOPS_224 + TEXT_GFLOPS) * batch}.get(what)  # fmt: skip
    return None if forward is None else forward * (3 if what == "train" else 1)  # backward ~ 2x forward


def machine_info(threads: int, device: str) -> dict:
    cpu, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    import transformers

    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "threads": threads,
            "cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
            "cpu_bf16_kernels": bf16_supported("cpu"), "device": device,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}  # fmt: skip


def table(rows: list[dict]) -> str:
    lines = ["| case | variant | vs | ours ms | peer ms | speed-up | ours peak MiB | peer peak MiB | notes |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in rows:
        if "skipped" in r:
            timing = "| - | - | - | - | - "
        else:
            timing = (f"| {r['ours_s'] * 1e3:.0f} | {r['peer_s'] * 1e3:.0f} | {r['speedup']:.2f}x "
                      f"| {r['ours_peak_mib']:.0f} | {r['peer_peak_mib']:.0f} ")  # fmt: skip
        notes = [r["skipped"]] if "skipped" in r else []
        notes += [f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.get("accuracy", {}).items()]
        if r.get("ours_gflops"):
            notes.append(f"{r['ours_gflops']:.0f} vs {r['peer_gflops']:.0f} GFLOP/s")
        lines.append(f"| {r['case']} | {r['variant']} | {r['peer']} {timing}| {'; '.join(notes)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model and sizes, one repeat (for CI)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="also time ours under torch.compile")
    parser.add_argument("--out", default="benchmarks/results/run.json")
    parser.add_argument("--onnx", action="store_true", help="instead: the ONNX table (ours and transformers on "
                        "PyTorch and on onnxruntime, CPU; docs/deployment.md)")  # fmt: skip
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in a fresh process
    parser.add_argument("--onnx-part", choices=list(PARTS), help=argparse.SUPPRESS)  # internal: one process
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    if args.case:
        print(json.dumps(case(args.case, args.quick, repeats, args.device)))
        return
    if args.onnx_part:
        print(json.dumps(onnx_rows(args.quick, repeats, args.onnx_part)))
        return
    if args.onnx:
        load_start = os.getloadavg()
        parts = []
        for part in PARTS:
            command = [sys.executable, "-m", "benchmarks.run", "--onnx-part", part, "--threads", str(args.threads),
                       "--repeats", str(repeats)] + (["--quick"] if args.quick else [])  # fmt: skip
            run = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if run.returncode:
                raise SystemExit(f"the {part} part failed:\n{run.stderr[-2000:]}")
            parts.append(json.loads(run.stdout.strip().splitlines()[-1]))
        rows = merge_parts(parts)
        print(onnx_table(rows))
        result = {"machine": machine_info(args.threads, "cpu"), "quick": args.quick, "repeats": repeats,
                  "load_average_1_5_15min": {"start": load_start, "end": os.getloadavg()}, "rows": rows}  # fmt: skip
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        return
    load_start = os.getloadavg()
    pairs = [("image224", "theirs", "fp32"), ("image448", "theirs", "fp32"), ("text", "theirs", "fp32"),
             ("train", "theirs", "fp32"), ("segment", "reference", "fp32"), ("segment", "theirs", "fp32"),
             ("image224", "theirs", "bf16"), ("segment", "reference", "bf16")]  # fmt: skip
    if args.device == "cuda":
        pairs.append(("train", "theirs", "bf16"))
    if args.compile:
        pairs += [("image224", "theirs", "compile"), ("segment", "reference", "compile")]
    batch = 4 if args.quick else 32
    rows = []
    for what, peer, variant in pairs:
        measured = {}
        for who, who_variant in (("ours", variant), (peer, "fp32")):
            command = [sys.executable, "-m", "benchmarks.run", "--case", f"{who}:{what}:{who_variant}", "--threads",
                       str(args.threads), "--repeats", str(repeats), "--device", args.device]  # fmt: skip
            command += ["--quick"] if args.quick else []
            run = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if run.returncode:
                raise SystemExit(f"case {who}:{what}:{who_variant} failed:\n{run.stderr[-2000:]}")
            measured[who] = json.loads(run.stdout.strip().splitlines()[-1])
            if "skipped" in measured[who]:
                break
        ours = measured["ours"]
        row = {"case": what, "peer": peer, "variant": variant}
        if "skipped" in ours:
            row.update(ours)
        else:
            row.update(ours_s=ours["seconds"], peer_s=measured[peer]["seconds"],
                       speedup=measured[peer]["seconds"] / ours["seconds"], ours_peak_mib=ours["peak_mib"],
                       peer_peak_mib=measured[peer]["peak_mib"], accuracy=ours.get("accuracy", {}))  # fmt: skip
            flops = None if args.quick else nominal_gflops(what, batch)
            if flops:
                row.update(ours_gflops=flops / row["ours_s"], peer_gflops=flops / row["peer_s"])
        rows.append(row)
        print(table([row]).splitlines()[-1], flush=True)
    gflops = {"fp32": matmul_gflops(args.device)}
    gflops["bf16"] = matmul_gflops(args.device, torch.bfloat16, 2048 if bf16_supported(args.device) else 256)
    image = next(r for r in rows if r["case"] == "image224" and r["variant"] == "fp32")
    result = {
        "machine": machine_info(args.threads, args.device),
        "load_average_1_5_15min": {"start": load_start, "end": os.getloadavg()},
        "quick": args.quick, "repeats": repeats, "batch": batch,
        "matmul_gflops": gflops, "vision_gflops_224": {"ours": image.get("ours_gflops"),
                                                       "theirs": image.get("peer_gflops")},
        "rows": rows,
    }  # fmt: skip
    print(table(rows))
    print(f"matmul {gflops['fp32']:.1f} GFLOP/s fp32, {gflops['bf16']:.1f} bf16"
          + (f"; vision tower at 224: ours {image['ours_gflops']:.1f}, theirs {image['peer_gflops']:.1f} GFLOP/s"
             if image.get("ours_gflops") else ""))  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
