"""SVD residual adapter vs PEFT LoRA r=1 and PEFT OSF on a ViT-B/16-size CLIP vision tower (random weights, CPU).

Run: ``python benchmarks/adapter_bench.py [--repeats 5] [--threads 2] [--clock wall|cpu|thread]``. Prints one table
of side-by-side medians and the ratios the project targets (adapter bytes, load time, adapter swap, forward and
training-step overhead, merge exactness). On a machine shared with other jobs wall-clock ratios swing by 10-30 %;
``--threads 1 --clock thread`` times the CPU time of the one compute thread, which such load does not distort.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from peft import LoraConfig, OSFConfig, PeftModel, get_peft_model
from transformers import CLIPVisionConfig, CLIPVisionModel

from svd_adapter import SVDResidualConfig

TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time, "thread": time.thread_time}


def vit_b16_clip_tower(seed: int = 0) -> CLIPVisionModel:
    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        image_size=224, patch_size=16,
    )
    return CLIPVisionModel(config).eval()


def median_time(
    fn: Callable[[], object], repeats: int, clock: Callable[[], float], setup: Callable[[], object] = lambda: None
) -> float:
    times = []
    for _ in range(repeats):
        setup()
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def interleaved_medians(
    fns: dict[str, Callable[[], object]], repeats: int, clock: Callable[[], float]
) -> dict[str, float]:
    """Time several callables in alternation (after one warm-up each) so machine load hits them alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    args = parser.parse_args()
    if args.clock == "thread" and args.threads != 1:
        parser.error("--clock thread measures one thread's CPU time; use it with --threads 1")
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    torch.linalg.svd(torch.randn(768, 768))  # LAPACK's one-off start-up cost is no adapter's
    reps = args.repeats

    base = vit_b16_clip_tower()
    pixels = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    configs = {
        "svd": lambda: SVDResidualConfig(residual_rank=1),
        "lora": lambda: LoraConfig(r=1, lora_alpha=1, target_modules=TARGETS),
        "osf": lambda: OSFConfig(effective_rank=767, target_modules=TARGETS),
    }
    rows: list[tuple[str, str, str, str, str]] = []
    workdir = Path(tempfile.mkdtemp(prefix="adapter_bench_"))

    # ---- create + save each adapter; file sizes and creation time
    paths, sizes, create = {}, {}, {}
    for name, make in configs.items():
        model_copy = copy.deepcopy(base)
        start = clock()
        peft_model = get_peft_model(model_copy, make())
        create[name] = clock() - start
        paths[name] = workdir / name
        peft_model.save_pretrained(paths[name])
        sizes[name] = (paths[name] / "adapter_model.safetensors").stat().st_size
    config_bytes = (paths["svd"] / "adapter_config.json").stat().st_size
    rows.append(("adapter_model.safetensors bytes", f"{sizes['svd']:,}", f"{sizes['lora']:,}", f"{sizes['osf']:,}",
                 f"{sizes['svd'] / sizes['osf']:.2f}x OSF (target <= 2.1x)"))
    rows.append(("adapter_config.json bytes (SVD incl. fingerprint)", f"{config_bytes:,}", "", "", ""))
    rows.append(("get_peft_model (creation) s", f"{create['svd']:.3f}", f"{create['lora']:.3f}", f"{create['osf']:.3f}",
                 "SVD runs once here"))

    # ---- PeftModel.from_pretrained onto a fresh copy of the base
    load = {}
    for name in configs:
        target = copy.deepcopy(base)
        times = []
        for _ in range(reps if name != "osf" else max(1, min(reps, 2))):
            start = clock()
            loaded = PeftModel.from_pretrained(target, paths[name])
            times.append(clock() - start)
            target = loaded.unload()  # plain modules again for the next repeat, outside the timed region
        load[name] = statistics.median(times)
    speedup = load["osf"] / load["svd"]
    rows.append(("PeftModel.from_pretrained s", f"{load['svd']:.4f}", f"{load['lora']:.4f}", f"{load['osf']:.3f}",
                 f"{load['svd'] / load['lora']:.2f}x LoRA (<= 1.5x); OSF/SVD = {speedup:.0f}x (>= 20x)"))

    # ---- load_adapter + set_adapter of a second adapter
    swap = {}
    for name in ("svd", "lora"):
        peft_model = PeftModel.from_pretrained(copy.deepcopy(base), paths[name])
        counter = iter(range(10_000))

        def swap_in(peft_model=peft_model, name=name, counter=counter):
            adapter = f"second{next(counter)}"
            peft_model.load_adapter(paths[name], adapter_name=adapter)
            peft_model.set_adapter(adapter)

        def reset(peft_model=peft_model):
            for adapter in [a for a in peft_model.peft_config if a != "default"]:
                peft_model.set_adapter("default")
                peft_model.delete_adapter(adapter)

        swap[name] = median_time(swap_in, reps, clock, setup=reset)
    rows.append(("load_adapter + set_adapter s", f"{swap['svd']:.4f}", f"{swap['lora']:.4f}", "",
                 f"{swap['svd'] / swap['lora']:.2f}x LoRA (<= 1.5x)"))

    # ---- inference forward: base vs unmerged SVD vs merged SVD; merge exactness
    svd_model = PeftModel.from_pretrained(copy.deepcopy(base), paths["svd"])
    with torch.no_grad():  # move the residual off its initial value so merge checks are not trivial
        for pname, param in svd_model.named_parameters():
            if ".svd_" in pname:
                param.add_(0.05 * torch.randn_like(param))
    weights_before = {n: p.detach().clone() for n, p in svd_model.named_parameters() if "base_layer.weight" in n}

    def forward(model):
        with torch.no_grad():
            return model(pixel_values=pixels).last_hidden_state

    fwd = interleaved_medians({"base": lambda: forward(base), "svd": lambda: forward(svd_model)}, reps, clock)
    unmerged = forward(svd_model)
    svd_model.merge_adapter()
    merged_time = median_time(lambda: forward(svd_model), reps, clock)
    merged = forward(svd_model)
    svd_model.unmerge_adapter()
    restore = max(rel(p.detach(), weights_before[n]) for n, p in svd_model.named_parameters() if n in weights_before)
    rows.append(("forward batch 4 (no grad) s", f"{fwd['svd']:.3f}", "", "",
                 f"{fwd['svd'] / fwd['base']:.3f}x base {fwd['base']:.3f} s (<= 1.15x); merged {merged_time:.3f} s"))
    rows.append(("merged vs unmerged output, rel", f"{rel(merged, unmerged):.1e}", "", "", "target <= 1e-5"))
    rows.append(("unmerge restores base weights, max rel", f"{restore:.1e}", "", "", "target <= 1e-6"))
    del svd_model

    # ---- training step: forward + backward, batch 4
    train_models = {}
    for name in ("svd", "lora"):
        model = get_peft_model(copy.deepcopy(base), configs[name]())
        model.train()
        train_models[name] = model

    def train_step(model):
        model.zero_grad(set_to_none=True)
        model(pixel_values=pixels).last_hidden_state.pow(2).mean().backward()

    step = interleaved_medians({name: (lambda m=m: train_step(m)) for name, m in train_models.items()}, reps, clock)
    rows.append(("train step fwd+bwd batch 4 s", f"{step['svd']:.3f}", f"{step['lora']:.3f}", "",
                 f"{step['svd'] / step['lora']:.3f}x LoRA (<= 1.3x)"))

    header = ("measure", "SVD k=1", "LoRA r=1", "OSF 767", "ratio / target")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(5)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock, {reps} repeats (median)")
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(str(cell).ljust(w) for cell, w in zip(row, widths)))


if __name__ == "__main__":
    main()
