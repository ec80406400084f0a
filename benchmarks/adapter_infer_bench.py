"""Scoring one image set under several adapters: mixed-adapter batches vs one adapter at a time.

For K = 1, 4, 8 adapters (plus the base score, as `spai-svd infer` writes it) the same images are scored three ways,
timed in one run on the same machine:

- ``mixed``: every adapter loaded once onto one base; each batch is scored under base + all adapters in one forward
  (``repeat_per_image = K + 1`` with mixed ``adapter_names``), so patching and spectral filtering run once per image
  (`spai_hf.inference.MultiAdapterScorer`, what ``spai-svd infer`` does);
- ``swap``: the same adapters loaded once, one pass over the images per adapter (``set_adapter``), plus a base pass;
- ``load each``: for each adapter in turn, a fresh base + ``PeftModel.from_pretrained`` then a pass, plus a base
  pass -- what running the command once per adapter costs, process start-up excluded.

Images/s counts an image once it has all K + 1 scores. Every method's time includes loading its models from disk
and decoding the JPEG files for each pass it makes (mixed: once per image; the others: once per pass). The three
methods are timed in alternation (medians of ``--repeats`` rounds after a warm-up) so machine load hits them alike.

Run: ``python benchmarks/adapter_infer_bench.py [--preset small|released] [--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model
from PIL import Image

import svd_adapter
from spai_hf import SpaiConfig, SpaiForImageClassification, SpaiImageProcessor
from spai_hf.image_io import load_image
from spai_hf.inference import BASE_ADAPTER, MultiAdapterScorer, to_pixels
from spai_hf.registry import ResolvedAdapter

PRESETS = {
    # CPU-friendly: a narrow 4-layer ViT on 64-pixel patches.
    "small": dict(
        backbone_config={"model_type": "vit", "hidden_size": 192, "num_hidden_layers": 4, "num_attention_heads": 3,
                         "intermediate_size": 768, "image_size": 64, "patch_size": 16},
        patch_size=64, patch_stride=64, masking_radius=8, projection_dim=256, sca_num_heads=4, sca_hidden_size=256,
    ),
    # The released architecture (ViT-B/16 on 224-pixel patches): for a GPU.
    "released": {},
}
IMAGE_SIDES = {"small": (96, 200), "released": (256, 700)}


def build_models(folder: Path, preset: str, num_adapters: int) -> tuple[Path, list[Path]]:
    """Save a random base and ``num_adapters`` distinct random SVD residual adapters under ``folder``."""
    torch.manual_seed(0)
    SpaiForImageClassification(SpaiConfig(**PRESETS[preset])).save_pretrained(folder / "base")
    adapters = []
    for index in range(num_adapters):
        model = get_peft_model(SpaiForImageClassification.from_pretrained(folder / "base"),
                               svd_adapter.SVDResidualConfig(residual_rank=1))
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.requires_grad:
                    parameter.add_(0.5 * torch.randn_like(parameter))
        model.save_pretrained(folder / f"adapter_{index}")
        adapters.append(folder / f"adapter_{index}")
    return folder / "base", adapters


def image_set(folder: Path, count: int, sides: tuple[int, int], seed: int = 0) -> list[Path]:
    """Write ``count`` random-content JPEGs with sides drawn in ``sides`` under ``folder``; returns their paths."""
    generator = torch.Generator().manual_seed(seed)
    low, high = sides
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (h, w) in enumerate(torch.randint(low, high + 1, (count, 2), generator=generator).tolist()):
        pixels = torch.randint(0, 256, (h, w, 3), generator=generator, dtype=torch.uint8).numpy()
        paths.append(folder / f"{index:03d}.jpg")
        Image.fromarray(pixels).save(paths[-1], quality=90)
    return paths


def batches(paths: list[Path], size: int, processor: SpaiImageProcessor):
    """Decode the files batch by batch (as every pass over an image folder must), as model inputs."""
    for start in range(0, len(paths), size):
        yield [to_pixels(processor, load_image(path)) for path in paths[start : start + size]]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _load_base(base: Path, device: torch.device) -> SpaiForImageClassification:
    return SpaiForImageClassification.from_pretrained(base).to(device).eval()


def _pass(model, images, batch_size: int) -> None:
    processor = SpaiImageProcessor(patch_size=_config(model).patch_size)
    for batch in batches(images, batch_size, processor):
        model(pixel_values=batch)


def _config(model) -> SpaiConfig:
    return model.get_base_model().config if isinstance(model, PeftModel) else model.config


def run_mixed(base: Path, adapters: list[Path], images, batch_size: int, device: torch.device) -> None:
    """Load base + all adapters once; every batch scored under base and all adapters in one forward."""
    scorer = MultiAdapterScorer.from_pretrained(
        str(base), [ResolvedAdapter(p.name, p, None, None) for p in adapters], device=device
    )
    for batch in batches(images, batch_size, scorer.processor):
        scorer.score(batch)


def run_swap(base: Path, adapters: list[Path], images, batch_size: int, device: torch.device) -> None:
    """Load base + all adapters once; one pass over the images for the base and for each adapter."""
    model = PeftModel.from_pretrained(_load_base(base, device), str(adapters[0]), adapter_name="a0")
    for index, path in enumerate(adapters[1:], start=1):
        model.load_adapter(str(path), adapter_name=f"a{index}")
    model.to(device).eval()
    with model.disable_adapter():
        _pass(model, images, batch_size)
    for index in range(len(adapters)):
        model.set_adapter(f"a{index}")
        _pass(model, images, batch_size)


def run_load_each(base: Path, adapters: list[Path], images, batch_size: int, device: torch.device) -> None:
    """A fresh base (then base + one adapter, for each adapter) loaded and run over the images, in turn."""
    _pass(_load_base(base, device), images, batch_size)
    for path in adapters:
        _pass(PeftModel.from_pretrained(_load_base(base, device), str(path)).to(device).eval(), images, batch_size)


METHODS = {"mixed": run_mixed, "swap": run_swap, "load each": run_load_each}


def interleaved_medians(calls: dict, repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each call, timed in alternation after one warm-up each, so machine load hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_index in range(repeats + 1):
        for name, call in calls.items():
            _sync(device)
            start = time.perf_counter()
            call()
            _sync(device)
            if round_index:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def check_agreement(base: Path, adapters: list[Path], images, device: torch.device) -> tuple[float, float]:
    """(max |mixed - alone|, max |adapter - base|) probability for the last adapter: the three ways compute the
    same scores, and the adapters really change them."""
    scorer = MultiAdapterScorer.from_pretrained(
        str(base), [ResolvedAdapter(p.name, p, None, None) for p in adapters], device=device
    )
    assert scorer.columns[0].adapter == BASE_ADAPTER
    pixels = next(batches(images, len(images), scorer.processor))
    mixed, _ = scorer.score(pixels)
    alone = PeftModel.from_pretrained(_load_base(base, device), str(adapters[-1])).to(device).eval()
    probs = torch.sigmoid(alone(pixel_values=pixels).logits.float()).view(-1).cpu()
    return float((torch.from_numpy(mixed[:, -1]) - probs).abs().max()), float(abs(mixed[:, -1] - mixed[:, 0]).max())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--adapters", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per method (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        images = image_set(Path(tmp) / "images", args.images, IMAGE_SIDES[args.preset])
        base, adapters = build_models(Path(tmp), args.preset, max(args.adapters))
        gap, effect = check_agreement(base, adapters[:2], images[:3], device)
        print(f"preset={args.preset} device={device} images={len(images)} batch={args.batch_size} "
              f"threads={torch.get_num_threads()}; max |mixed - alone| = {gap:.1e}, "
              f"max |adapter - base| = {effect:.1e}")
        header = ["adapters", *(f"{m} img/s" for m in METHODS), "mixed vs swap", "mixed vs load each"]
        print(" | ".join(header))
        print(" | ".join("-" * len(h) for h in header))
        for k in args.adapters:
            calls = {name: partial(run, base, adapters[:k], images, args.batch_size, device)
                     for name, run in METHODS.items()}
            seconds = interleaved_medians(calls, args.repeats, device)
            rate = {name: len(images) / value for name, value in seconds.items()}
            print(f"{k} | " + " | ".join(f"{rate[m]:.2f}" for m in METHODS)
                  + f" | {rate['mixed'] / rate['swap']:.2f}x | {rate['mixed'] / rate['load each']:.2f}x")


if __name__ == "__main__":
    main()
