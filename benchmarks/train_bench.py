"""Training cost of the SVD adapter beside full-backbone and head-only training, same model and data, one run.

For each mode (``svd``: SVD residual adapter on the backbone's attention linears, as `spai_hf.training` builds it;
``full``: every backbone weight trained; ``head``: only the classification head trained) with and without the
backbone's own gradient checkpointing, it times optimizer steps (forward, BCE, backward, AdamW, zero_grad) on the
same fixed batch of S x S crops and measures peak tensor memory:
the configuration's live tensors before a step (weights, buffers, optimizer state) plus the peak of what one step
allocates on top (CUDA: ``max_memory_allocated`` minus ``memory_allocated`` before it; CPU: the running sum of
``torch.profiler`` memory events). Process RSS would be dominated by the Python runtime. The six configurations are
stepped in turn (interleaved), so changes in machine load affect them alike; the median step time is reported.

Targets for ``svd`` against ``full`` (same checkpointing setting): step time <= 0.8x, peak memory <= 0.7x.

    python benchmarks/train_bench.py --threads 1        # small ViT (D=384, 6 layers, 112-pixel crops): ~10 min, 2 cores
    python benchmarks/train_bench.py --preset released  # released sizes (ViT-B/16, 224-pixel crops): GPU, or
                                                        # ~25 min on 2 CPU cores with --batch-size 2 --steps 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import ViTConfig

from spai_hf.configuration_spai import RELEASED_VIT_KWARGS, SpaiConfig
from spai_hf.modeling_spai import SpaiForImageClassification
from spai_hf.training import TrainingConfig, build_model

PRESETS = {
    "small": dict(
        backbone=dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1536,
                      image_size=112, patch_size=16, layer_norm_eps=1e-6, qkv_bias=True),
        spai=dict(patch_size=112, patch_stride=112, masking_radius=8, projection_dim=384, sca_num_heads=6,
                  sca_hidden_size=384),
    ),
    "released": dict(backbone=RELEASED_VIT_KWARGS, spai={}),
}
TARGETS = {"time": 0.8, "memory": 0.7}


def _save_base(preset: str, folder: Path) -> Path:
    torch.manual_seed(0)
    spec = PRESETS[preset]
    config = SpaiConfig(backbone_config=ViTConfig(**spec["backbone"]), **spec["spai"])
    SpaiForImageClassification(config).save_pretrained(folder)
    return folder


def _model(mode: str, base: Path, checkpointing: bool) -> torch.nn.Module:
    if mode == "svd":
        return build_model(TrainingConfig(base=str(base), data="-", gradient_checkpointing=checkpointing))
    model = SpaiForImageClassification.from_pretrained(base)
    model.requires_grad_(False)
    (model.backbone if mode == "full" else model.classifier).requires_grad_(True)
    if checkpointing:
        model.backbone.activation_checkpointing_enable()
    return model


def _live_tensor_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [value for state in optimizer.state.values() for value in state.values() if torch.is_tensor(value)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def _profiled_peak_bytes(step) -> int:
    """Peak of the running sum of CPU allocations minus frees during one call of ``step``."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    running = peak = 0
    for event in events:
        running += event.nbytes()
        peak = max(peak, running)
    return peak


class _Run:
    """One configuration: its model, optimizer and step function."""

    def __init__(self, mode: str, base: Path, checkpointing: bool, pixels, labels, device):
        self.mode, self.checkpointing, self.device = mode, checkpointing, device
        self.model = _model(mode, base, checkpointing).to(device).train()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for p in trainable)
        self.optimizer = torch.optim.AdamW(trainable, lr=1e-5, weight_decay=0.05)
        self.pixels, self.labels = pixels, labels
        self.times: list[float] = []

    def step(self) -> None:
        loss = self.model(pixel_values=self.pixels, labels=self.labels).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def timed_step(self) -> float:
        start = time.perf_counter()
        self.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def peak_memory_bytes(self) -> int:
        """This configuration's live tensors (weights, buffers, optimizer state: call after a warm-up step) plus the
        peak of what one step allocates on top; other configurations' tensors on the same device do not count."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            self.step()
            torch.cuda.synchronize()
            increment = torch.cuda.max_memory_allocated() - before
        else:
            increment = _profiled_peak_bytes(self.step)
        return _live_tensor_bytes(self.model, self.optimizer) + increment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="measured steps per configuration (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as folder:
        base = _save_base(args.preset, Path(folder) / "base")
        size = SpaiConfig.from_pretrained(base).patch_size
        generator = torch.Generator().manual_seed(0)
        pixels = torch.rand(args.batch_size, 3, size, size, generator=generator).to(device)
        labels = (torch.arange(args.batch_size) % 2).float().to(device)
        runs = [
            _Run(mode, base, checkpointing, pixels, labels, device)
            for checkpointing in (False, True)
            for mode in ("full", "svd", "head")
        ]
        for run in runs:
            for _ in range(args.warmup):
                run.timed_step()
        # Interleave the configurations step by step, so load changes on the machine hit all of them alike.
        for _ in range(args.steps):
            for run in runs:
                run.times.append(run.timed_step())
        rows = []
        for run in runs:
            rows.append({
                "mode": run.mode, "checkpointing": run.checkpointing, "trainable": run.trainable,
                "step_s": statistics.median(run.times), "peak_mib": run.peak_memory_bytes() / 2**20,
            })

    print(f"preset={args.preset} device={device} threads={torch.get_num_threads()} batch={args.batch_size} "
          f"crops of {size}x{size}, "
          f"median of {args.steps} steps after {args.warmup} warm-up; memory = peak tensor memory")
    header = f"{'mode':<5} {'ckpt':<5} {'trainable':>11} {'step s':>8} {'steps/s':>8} {'peak MiB':>9} " \
             f"{'time/full':>9} {'mem/full':>8}  targets"
    print(header)
    print("-" * len(header))
    full = {row["checkpointing"]: row for row in rows if row["mode"] == "full"}
    for row in rows:
        reference = full[row["checkpointing"]]
        time_ratio, memory_ratio = row["step_s"] / reference["step_s"], row["peak_mib"] / reference["peak_mib"]
        verdict = ""
        if row["mode"] == "svd":
            ok_time, ok_memory = time_ratio <= TARGETS["time"], memory_ratio <= TARGETS["memory"]
            verdict = f"time {'ok' if ok_time else 'MISSED'}, memory {'ok' if ok_memory else 'MISSED'}"
        print(f"{row['mode']:<5} {str(row['checkpointing']):<5} {row['trainable']:>11,} {row['step_s']:>8.3f} "
              f"{1 / row['step_s']:>8.2f} {row['peak_mib']:>9.1f} {time_ratio:>9.2f} {memory_ratio:>8.2f}  {verdict}")


if __name__ == "__main__":
    main()
