#!/usr/bin/env python
"""Detection quality of per-generator adaptation methods on the offline demo data (CPU, minutes).

The matrix of ``spai-svd demo`` at a larger size: build the offline dataset, train a small SPAI base on one
generator (aligned pairs, every weight), then adapt that base to each other generator with

* ``svd-kN``: the SVD residual adapter (trainable residual rank N) with the head's last two Linears trained,
  ``svd-kN-nohead`` without them;
* ``lora-rN``: PEFT LoRA on the same attention linears, rank N (N (in + out) weights per linear, the residual
  adapter's budget less its N singular values), head's last two Linears trained;
* ``osf-kN``: PEFT OSF with trainable rank N (``effective_rank = min(out, in) - N``), head's last two Linears
  trained (OSF ignores ``modules_to_save``, so they are unfrozen by hand and counted in its bytes);
* ``full``: every weight of the model; ``head``: the head's last two Linears only.

The PEFT methods adapt the backbone's attention linears; with the suffix ``-all`` (``svd-k4-all``) they adapt every
Linear of the model except the head's last two (attention, MLP, projectors, patch attention, first head Linear).

Every method trains with the same loop (aligned pair batches, AdamW, warm-up + cosine, clipping, same steps and
seed), at its own learning rate. Each adapted model is scored on the test split of every generator, so each row
shows how far the method lifts its generator and what it costs on the base generator. Also reported: trainable
parameters, bytes of what must be stored per generator (safetensors), training seconds.

    python benchmarks/quality_bench.py --out /tmp/quality                      # defaults (about 15 min on 2 cores)
    python benchmarks/quality_bench.py --methods svd-k4 lora-r4 --steps 100   # a quick look
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader
from transformers import get_cosine_schedule_with_warmup

from spai_hf.data import AugmentationConfig, TrainTransform, collate, load_split, paired_split, train_dataset
from spai_hf.demo import DemoConfig, train_base
from spai_hf.demo_data import DemoDataConfig, build_demo_data
from spai_hf.image_io import load_image
from spai_hf.image_processing_spai import SpaiImageProcessor
from spai_hf.modeling_spai import SpaiForImageClassification
from spai_hf.spectral_baseline import cross_generator_auc
from spai_hf.training import ALL_LINEAR_TARGETS, HEAD_LAST_LAYERS
from svd_adapter.config import VISION_ATTENTION_TARGETS

DEFAULT_METHODS = ["svd-k8-all", "lora-r8-all", "osf-k8-all", "svd-k8-nohead-all", "svd-k4", "full", "head"]
DEFAULT_LR = {"svd": 2e-3, "lora": 2e-3, "osf": 2e-3, "full": 1e-4, "head": 2e-3}
_METHOD = re.compile(r"(svd|lora|osf)-[kr](\d+)(-nohead)?(-all)?|full|head")


def parse_method(name: str) -> tuple[str, int, bool, str]:
    """``svd-k4`` -> ("svd", 4, True, attention regex); ``svd-k4-nohead-all`` -> ("svd", 4, False, every-Linear
    regex); ``full`` -> ("full", 0, False, "")."""
    match = _METHOD.fullmatch(name)
    if not match:
        raise argparse.ArgumentTypeError(f"unknown method {name!r} (e.g. svd-k4, svd-k4-nohead, lora-r4-all, full)")
    if name in ("full", "head"):
        return name, 0, name == "head", ""
    targets = ALL_LINEAR_TARGETS if match.group(4) else VISION_ATTENTION_TARGETS
    return match.group(1), int(match.group(2)), match.group(3) is None, targets


def _head_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {
        name: parameter for name, parameter in model.named_parameters()
        if any(f"{module}." in name for module in HEAD_LAST_LAYERS)
    }


def adapt(base_dir: Path, method: str) -> torch.nn.Module:
    """The base with ``method`` applied; exactly the parameters that method trains require grad."""
    from peft import LoraConfig, OSFConfig, get_peft_model

    from svd_adapter import SVDResidualConfig, SVDResidualLayer

    kind, rank, train_head, targets = parse_method(method)
    model = SpaiForImageClassification.from_pretrained(base_dir)
    head = list(HEAD_LAST_LAYERS) if train_head else None
    if kind == "full":
        return model.requires_grad_(True)
    if kind == "head":
        model.requires_grad_(False)
        for parameter in _head_parameters(model).values():
            parameter.requires_grad_(True)
        return model
    if kind == "svd":
        model = get_peft_model(model, SVDResidualConfig(residual_rank=rank, target_modules=targets, modules_to_save=head))
        for module in model.modules():
            if isinstance(module, SVDResidualLayer):
                module.ensure_initialised("default")
        return model
    if kind == "lora":
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, modules_to_save=head)
        return get_peft_model(model, config)
    # OSF's effective_rank is the frozen rank: per target, min(out, in) - rank leaves `rank` directions trainable.
    frozen = {
        re.escape(name): min(module.weight.shape) - rank
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and re.fullmatch(targets, name)
    }
    config = OSFConfig(effective_rank=min(frozen.values()), target_modules=targets, rank_pattern=frozen)
    model = get_peft_model(model, config)
    if train_head:
        for parameter in _head_parameters(model).values():
            parameter.requires_grad_(True)
    return model


def stored_bytes(model: torch.nn.Module, method: str) -> int:
    """Bytes of what one generator needs on disk: the PEFT adapter file, or the trained tensors in safetensors."""
    kind, _, train_head, _ = parse_method(method)
    with tempfile.TemporaryDirectory() as folder:
        if kind in ("svd", "lora", "osf"):
            model.save_pretrained(folder)
            total = sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))
            if kind == "osf" and train_head:  # OSF does not save modules_to_save: store the head beside it
                save_file({k: v.detach().contiguous() for k, v in _head_parameters(model).items()}, f"{folder}/h")
                total += Path(folder, "h").stat().st_size
            return total
        tensors = model.state_dict() if kind == "full" else _head_parameters(model)
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, f"{folder}/t")
        return Path(folder, "t").stat().st_size


def fit(model: torch.nn.Module, csv_path: Path, generator: str, steps: int, lr: float, batch: int, seed: int) -> float:
    """Train on aligned pairs of ``generator``'s training split; returns seconds."""
    torch.manual_seed(seed)
    patch_size = model.config.patch_size
    transform = TrainTransform(patch_size, AugmentationConfig(), seed=seed)
    data = train_dataset(paired_split(load_split(csv_path, "train", generator=generator), csv_path), transform)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.05)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 20), steps)
    model.train()
    started, step, epoch = time.perf_counter(), 0, 0
    while step < steps:
        transform.set_epoch(epoch)
        order = torch.Generator().manual_seed(seed + epoch)
        for inputs in DataLoader(data, batch_size=batch, shuffle=True, generator=order, collate_fn=collate):
            loss = model(**inputs).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step == steps:
                break
        epoch += 1
    return time.perf_counter() - started


def test_sets(csv_path: Path, generators: list[str], patch_size: int) -> dict[str, tuple[list[torch.Tensor], np.ndarray]]:
    processor = SpaiImageProcessor(patch_size=patch_size)
    sets = {}
    for name in generators:
        rows = load_split(csv_path, "test", generator=name)
        sets[name] = ([processor.to_tensor(load_image(p)) for p in rows["image"]], np.asarray(rows["label"]))
    return sets


def score(model: torch.nn.Module, tests: dict[str, tuple[list[torch.Tensor], np.ndarray]]) -> dict[str, float]:
    model.eval()
    aucs = {}
    for name, (images, labels) in tests.items():
        logits = torch.cat([model(pixel_values=images[i : i + 64]).logits.view(-1) for i in range(0, len(images), 64)])
        aucs[name] = float(roc_auc_score(labels, logits.float().numpy()))
    return aucs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="quality-bench", help="work folder (data, base, results.json)")
    parser.add_argument("--crops-per-source", type=int, default=96)
    parser.add_argument("--data", help="reuse this dataset CSV instead of building one")
    parser.add_argument("--base", help="reuse this trained base folder instead of training one")
    parser.add_argument("--base-generator", default="autoencoder")
    parser.add_argument("--base-steps", type=int, default=1500)
    parser.add_argument("--steps", type=int, default=300, help="training steps of every adaptation method")
    parser.add_argument("--batch-size", type=int, default=16, help="aligned pairs per step")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, type=str)
    parser.add_argument("--lr", nargs="*", default=[], metavar="FAMILY=LR", help="override, e.g. svd=1e-3 full=5e-5")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--report", metavar="RESULTS_JSON", help="only print the tables of an earlier run")
    args = parser.parse_args()
    if args.report:
        results = json.loads(Path(args.report).read_text())
        settings = results["settings"]
        others = [g for g in DemoDataConfig().generators if g != settings["base_generator"]]
        print_tables(results, settings["base_generator"], others)
        return
    for method in args.methods:
        parse_method(method)
    lrs = dict(DEFAULT_LR)
    for item in args.lr:
        family, value = item.split("=")
        lrs[family] = float(value)
    if args.threads:
        torch.set_num_threads(args.threads)

    out = Path(args.out)
    data_config = DemoDataConfig(crops_per_source=args.crops_per_source, seed=args.seed)
    demo = DemoConfig(data=data_config, base_generator=args.base_generator, base_steps=args.base_steps, seed=args.seed)
    generators = list(data_config.generators)
    others = demo.adapter_generators
    started = time.perf_counter()
    csv_path = Path(args.data) if args.data else build_demo_data(out / "data", data_config)
    print(f"data: {csv_path} ({time.perf_counter() - started:.0f} s)", flush=True)
    started = time.perf_counter()
    base_dir = Path(args.base) if args.base else train_base(csv_path, demo, out / "base")
    base_seconds = time.perf_counter() - started
    base_model = SpaiForImageClassification.from_pretrained(base_dir)
    tests = test_sets(csv_path, generators, base_model.config.patch_size)
    results = {"base": {"auc": score(base_model, tests), "seconds": base_seconds}}
    results["spectral LR"] = {"auc": {g: v[g] for g, v in cross_generator_auc(csv_path, generators).items()}}
    print(f"base on {args.base_generator}: {results['base']['auc']} ({base_seconds:.0f} s)", flush=True)

    rows = []
    for generator in others:
        for method in args.methods:
            kind = parse_method(method)[0]
            model = adapt(base_dir, method)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            seconds = fit(model, csv_path, generator, args.steps, lrs[kind], args.batch_size, args.seed)
            auc = score(model, tests)
            row = {
                "method": method, "generator": generator, "lr": lrs[kind], "trainable": trainable,
                "bytes": stored_bytes(model, method), "seconds": seconds, "auc": auc,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    results["runs"] = rows
    results["settings"] = {k: v for k, v in vars(args).items()} | {"lrs": lrs}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print_tables(results, args.base_generator, others)


def print_tables(results: dict, base_generator: str, others: list[str]) -> None:
    base_auc = results["base"]["auc"]
    header = ["method", *[f"{g} (adapted)" for g in others], f"{base_generator} drop (mean)", "mean lift",
              "trainable", "bytes", "train s (mean)"]
    print("\nTest ROC-AUC after adapting the base to each generator (lift = adapted AUC - base AUC on that generator)")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    print("| base (no adapter) | " + " | ".join(f"{base_auc[g]:.3f}" for g in others)
          + f" | {base_auc[base_generator]:.3f} (own) | - | - | - | - |")
    print("| spectral LR, own generator | " + " | ".join(f"{results['spectral LR']['auc'][g]:.3f}" for g in others)
          + f" | {results['spectral LR']['auc'][base_generator]:.3f} (own) | - | - | - | - |")
    methods = list(dict.fromkeys(r["method"] for r in results["runs"]))
    for method in methods:
        runs = {r["generator"]: r for r in results["runs"] if r["method"] == method}
        own = [runs[g]["auc"][g] for g in others]
        drop = np.mean([base_auc[base_generator] - runs[g]["auc"][base_generator] for g in others])
        lift = np.mean([own[i] - base_auc[g] for i, g in enumerate(others)])
        first = runs[others[0]]
        print(f"| {method} | " + " | ".join(f"{a:.3f}" for a in own) + f" | {drop:+.3f} | {lift:+.3f} | "
              f"{first['trainable']:,} | {first['bytes']:,} | {np.mean([r['seconds'] for r in runs.values()]):.0f} |")
    print(f"\nbase trained in {results['base']['seconds']:.0f} s; drop > 0 means the base generator's AUC fell")


if __name__ == "__main__":
    main()
