#!/usr/bin/env python
"""Inference speed and peak memory of SpaiForImageClassification vs. the original's order of work.

Full-size configuration (ViT-B/16, 224 patches, 12 layers), random weights, one image per call, CPU. Compared
side by side:

* ``reference``: the original's order of work: every patch (the five crops even when identical), per group of
  up to 400 patches three separate backbone passes (one per spectral view) keeping all hidden states, explicit
  (eager) attention as the original ViT, then projectors, statistics, patch attention and head.
* ``fast-fp32``: the model's forward (all views and patches in bounded backbone calls, SDPA, duplicate crops once,
  per-layer reduction, inference_mode).
* ``fast-bf16``: the same with ``compute_dtype="bfloat16"`` (backbone and projectors under bf16 autocast).

Timing: per size one process runs the modes alternately (warm-up, then ``--repeats`` rounds; median), so load
from other processes hits all modes alike. Peak RSS: each (mode, size) scores one image in a fresh process.

Also prints the measured float32 / bfloat16 matrix-multiply rate and the GFLOP/s each configuration achieves
(FLOPs actually computed: ``reference`` counts the duplicate crops it computes).

    python benchmarks/infer_bench.py                      # all sizes, 3 timed runs each (median)
    python benchmarks/infer_bench.py --sizes 224x224 --repeats 1 --modes reference fast-fp32
    python benchmarks/infer_bench.py --multi-adapter      # 1/4/8 adapters: mixed batches vs one at a time

Functions are reusable: ``build_model``, ``make_image``, ``reference_forward``, ``fast_forward``, ``patch_gflop``,
``matmul_gflops``, ``time_interleaved``, ``peak_rss_case`` and ``run_in_subprocess``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from spai_hf import SpaiConfig, SpaiForImageClassification
from spai_hf.patching import crop_patches, patch_boxes

SIZES = {"224x224": (224, 224), "512x512": (512, 512), "1024x768": (768, 1024)}  # name -> (H, W)
# The original implementation measured on this kind of machine (2 cores, float32, random weights, median of 3).
ORIGINAL_SECONDS = {"224x224": 3.85, "512x512": 2.85, "1024x768": 9.0}
ORIGINAL_PEAK_RSS_MIB = {"1024x768": 2746}
MODES = ("reference", "fast-fp32", "fast-bf16")


def build_model(compute_dtype: str = "float32", seed: int = 0, **config_overrides) -> SpaiForImageClassification:
    """Full-size SPAI with seeded random weights (identical across processes for the same seed)."""
    torch.manual_seed(seed)
    config = SpaiConfig(compute_dtype=compute_dtype, **config_overrides)
    return SpaiForImageClassification(config).eval()


def make_image(size: str, seed: int = 0) -> torch.Tensor:
    """A (3, H, W) image in [0, 1] of a named size, as SpaiImageProcessor returns it."""
    height, width = SIZES[size]
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8).float() * (1 / 255)


def patch_gflop(config: SpaiConfig) -> float:
    """FLOPs (GFLOP, multiply-add = 2) of one patch: three backbone passes plus the per-layer projectors."""
    backbone = config.backbone_config
    d, layers = backbone.hidden_size, backbone.num_hidden_layers
    grid = (config.patch_size // backbone.patch_size) ** 2
    tokens = grid + 1
    per_layer = 2 * tokens * d * (4 * d + 2 * backbone.intermediate_size) + 4 * tokens * tokens * d
    embed = 2 * grid * d * 3 * backbone.patch_size**2
    projector = 2 * grid * (d * config.projection_dim + config.projection_dim**2) * config.num_feature_layers
    return 3 * (layers * per_layer + embed + projector) / 1e9


def patches_computed(config: SpaiConfig, size: str, mode: str) -> int:
    """How many patches a mode pushes through the backbone for one image of ``size``."""
    height, width = SIZES[size]
    boxes, _ = patch_boxes(height, width, config.patch_size, config.patch_stride, config.minimum_patches)
    return len(boxes) if mode == "reference" else len(set(boxes))


@torch.no_grad()
def reference_forward(model: SpaiForImageClassification, image: torch.Tensor, group_size: int = 400) -> torch.Tensor:
    """The original's order of work (see module docstring); returns the (1, 1) logit."""
    config = model.config
    boxes, _ = patch_boxes(image.shape[1], image.shape[2], config.patch_size, config.patch_stride,
                           config.minimum_patches)
    estimator = model.frequency_restoration
    previous_attention = model.backbone.config._attn_implementation
    model.backbone.config._attn_implementation = "eager"
    try:
        features = []
        for group in crop_patches(image, boxes, config.patch_size).split(group_size):
            projected_views = []
            for view in model.spectral_filter(group):  # three separate backbone passes
                hidden = model.backbone(view, output_hidden_states=True).hidden_states
                projected_views.append(
                    torch.stack([estimator.project(k, hidden[i + 1][:, 1:]) for k, i in enumerate(config.feature_layers)])
                )
            projected = torch.stack(projected_views, dim=1)  # (N, 3, g, L, P)
            stats = [estimator.layer_statistics(layer) for layer in projected]
            similarity = torch.stack([s for s, _ in stats], dim=1)
            branch = torch.stack([b for _, b in stats], dim=1)
            features.append(estimator.combine(similarity, branch))
    finally:
        model.backbone.config._attn_implementation = previous_attention
    features = torch.cat(features)[None]
    pooled, _ = model.spectral_context_attention(features, torch.ones(features.shape[:2], dtype=torch.bool))
    return model.classifier(pooled)


def fast_forward(model: SpaiForImageClassification, image: torch.Tensor) -> torch.Tensor:
    return model([image]).logits


def matmul_gflops(dtype: torch.dtype, seconds: float = 2.0) -> float:
    """Sustained rate of a ViT-B MLP-sized matrix product (7092 x 768 @ 768 x 3072) in ``dtype``."""
    a = torch.randn(7092, 768).to(dtype)
    b = torch.randn(768, 3072).to(dtype)
    a @ b
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or runs < 2:
        a @ b
        runs += 1
    return 2 * 7092 * 768 * 3072 * runs / (time.perf_counter() - start) / 1e9


def forward_for(mode: str):
    return reference_forward if mode == "reference" else fast_forward


def time_interleaved(size: str, modes: list[str], repeats: int, seed: int = 0) -> dict[str, dict]:
    """Time ``modes`` on one model, alternating them run by run so all see the same machine load.

    ``fast-bf16`` shares the weights and switches ``config.compute_dtype``. Returns per mode the median seconds,
    all times, the logit, and the patches pushed through the backbone.
    """
    model = build_model(seed=seed)
    image = make_image(size, seed)
    results = {mode: {"times": []} for mode in modes}
    for run in range(repeats + 1):  # run 0 warms up
        for mode in modes:
            model.config.compute_dtype = "bfloat16" if mode == "fast-bf16" else "float32"
            start = time.perf_counter()
            logit = forward_for(mode)(model, image)
            if run:
                results[mode]["times"].append(time.perf_counter() - start)
            results[mode]["logit"] = float(logit.float().flatten()[0])
    for mode, result in results.items():
        result.update(mode=mode, size=size, seconds=statistics.median(result["times"]),
                      patches=patches_computed(model.config, size, mode), gflop_per_patch=patch_gflop(model.config))
    return results


def peak_rss_case(mode: str, size: str, seed: int = 0) -> dict:
    """Build the model and score one image in ``mode``; peak RSS of this process (run it in a fresh one)."""
    model = build_model("bfloat16" if mode == "fast-bf16" else "float32", seed=seed)
    forward_for(mode)(model, make_image(size, seed))
    return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_in_subprocess(threads: int, *case: str) -> dict:
    """Run ``--case ...`` in a fresh interpreter (its own peak RSS, the parent stays idle); parse its JSON."""
    command = [sys.executable, __file__, "--threads", str(threads), "--case", *case]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{case} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_table(results: list[dict], rates: dict[str, float]) -> None:
    print(f"\nmatmul rate on {torch.get_num_threads()} threads: float32 {rates['fp32']:.0f} GFLOP/s, "
          f"bfloat16 {rates['bf16']:.0f} GFLOP/s (native bf16 kernels: {bf16_native()})")
    print(f"load average at end: {os.getloadavg()[0]:.1f} (other processes on this machine distort timings)\n")
    header = ("size", "mode", "s/img", "img/s", "x ref", "x orig(pub)", "GFLOP/s", "% mm", "peak MiB", "x ref RSS",
              "|dlogit| vs ref", "|dscore| vs fp32")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    by_key = {(r["size"], r["mode"]): r for r in results}
    for r in results:
        ref = by_key.get((r["size"], "reference"))
        fp32 = by_key.get((r["size"], "fast-fp32"))
        achieved = r["patches"] * r["gflop_per_patch"] / r["seconds"]
        rate = rates["bf16" if r["mode"] == "fast-bf16" else "fp32"]
        score = lambda x: torch.sigmoid(torch.tensor(x)).item()  # noqa: E731
        cells = (
            r["size"], r["mode"], f"{r['seconds']:.2f}", f"{1 / r['seconds']:.3f}",
            f"{ref['seconds'] / r['seconds']:.2f}" if ref else "-",
            f"{ORIGINAL_SECONDS[r['size']] / r['seconds']:.2f}",
            f"{achieved:.0f}", f"{100 * achieved / rate:.0f}", f"{r['peak_rss_mib']:.0f}",
            f"{r['peak_rss_mib'] / ref['peak_rss_mib']:.2f}" if ref else "-",
            f"{abs(r['logit'] - ref['logit']):.1e}" if ref else "-",
            f"{abs(score(r['logit']) - score(fp32['logit'])):.1e}" if fp32 and r["mode"] == "fast-bf16" else "-",
        )
        print("| " + " | ".join(cells) + " |")
    print(f"\nPublished original (2 cores, fp32): {ORIGINAL_SECONDS} s/img; peak RSS {ORIGINAL_PEAK_RSS_MIB} MiB.")


def bf16_native() -> bool:
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def multi_adapter_section(repeats: int, threads: int) -> None:
    """Scoring under several adapters at once vs in turn: see ``benchmarks/adapter_infer_bench.py``."""
    from adapter_infer_bench import main as adapter_infer_main  # benchmarks/ is on sys.path when run as a script

    adapter_infer_main(["--repeats", str(repeats), "--threads", str(threads)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--case", nargs="+", help=argparse.SUPPRESS)  # internal: one subprocess job
    parser.add_argument(
        "--multi-adapter",
        action="store_true",
        help="instead: images/s scoring one image set under 1, 4 and 8 adapters, mixed-adapter batches vs one "
        "adapter at a time (benchmarks/adapter_infer_bench.py, which has more options)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.multi_adapter:
        multi_adapter_section(args.repeats, args.threads)
        return
    if args.case:
        kind, size, *rest = args.case
        if kind == "time":
            print(json.dumps(time_interleaved(size, rest[1:], int(rest[0]))))
        else:
            print(json.dumps(peak_rss_case(kind, size)))
        return
    rates = {"fp32": matmul_gflops(torch.float32), "bf16": float("nan")}
    if "fast-bf16" in args.modes:  # without native bf16 kernels a single bf16 product can take a minute
        rates["bf16"] = matmul_gflops(torch.bfloat16)
    results = []
    for size in args.sizes:
        timed = run_in_subprocess(args.threads, "time", size, str(args.repeats), *args.modes)
        for mode in args.modes:
            timed[mode].update(run_in_subprocess(args.threads, mode, size))
            result = timed[mode]
            print(f"{size} {mode}: {result['seconds']:.2f} s/img, peak {result['peak_rss_mib']:.0f} MiB", flush=True)
            results.append(result)
    print_table(results, rates)


if __name__ == "__main__":
    main()
