"""``spai-svd demo``: the whole story offline -- data, a small SPAI base, one SVD adapter per other generator, and the
cross-generator AUC table with live adapter swapping.

Steps (each prints progress):
1. build the offline dataset (`spai_hf.demo_data`);
2. train a tiny SPAI base in full (every weight) on one generator, with transformers' `Trainer`, on aligned pairs
   (each real crop in the same batch as the fake made from it, cut and flipped alike: `spai_hf.data.paired_split`);
   with shuffled, unpaired batches a randomly initialised SPAI does not find the generator's faint trace at all
   (test AUC stays at 0.5);
3. train one SVD residual adapter per other generator with the training library (`spai_hf.training.train`);
4. load every adapter onto the one base (`MultiAdapterScorer`) and score every test image under the base and each
   adapter in the same forward pass (mixed-adapter batches), then time a live `set_adapter` swap;
5. print the AUC table (rows: spectrum + logistic-regression baseline, base, each adapter; columns: generators)
   and save it as ``auc_table.png`` and ``auc_table.json`` in the output folder.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_write_json
from .demo_data import DemoDataConfig, build_demo_data
from .demo_data import add_arguments as add_data_arguments
from .demo_data import config_from_args as data_config_from_args

__all__ = ["DemoConfig", "add_arguments", "main", "plot_auc_table", "run_demo", "tiny_spai_config"]


@dataclass
class DemoConfig:
    """Sizes and training settings of the demo (the defaults take about 6 minutes on 2 CPU cores)."""

    data: DemoDataConfig = field(default_factory=DemoDataConfig)
    base_generator: str = "autoencoder"
    patch_size: int = 32
    hidden_size: int = 64
    num_layers: int = 4
    base_steps: int = 1500
    base_lr: float = 3e-4
    adapter_steps: int = 600
    adapter_lr: float = 2e-3
    residual_rank: int = 8
    target_modules: str = "all-linear"
    """Modules the adapters adapt: 'all-linear' or a regex (see `spai_hf.training.TrainingConfig`)."""
    train_head: bool = True
    batch_size: int = 16
    """Aligned (real, fake) pairs per step, i.e. twice as many crops."""
    seed: int = 0

    def __post_init__(self):
        if self.base_generator not in self.data.generators:
            raise ValueError(f"base generator {self.base_generator!r} is not among {list(self.data.generators)}")
        if len(self.data.generators) < 2:
            raise ValueError("the demo needs at least two generators (one for the base, one per adapter)")

    @property
    def adapter_generators(self) -> list[str]:
        return [name for name in self.data.generators if name != self.base_generator]


def tiny_spai_config(patch_size: int = 32, hidden_size: int = 64, num_layers: int = 4):
    """A small SPAI (ViT backbone with 8-pixel tokens) that trains on CPU in minutes."""
    from transformers import ViTConfig

    from .configuration_spai import SpaiConfig

    backbone = ViTConfig(
        hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=4, intermediate_size=2 * hidden_size,
        image_size=patch_size, patch_size=8, layer_norm_eps=1e-6, qkv_bias=True,
    )
    return SpaiConfig(
        backbone_config=backbone, patch_size=patch_size, patch_stride=patch_size, masking_radius=max(1, patch_size // 8),
        projection_dim=hidden_size, sca_num_heads=4, sca_hidden_size=hidden_size, projector_dropout=0.0,
        classifier_dropout=0.0, max_patches_per_forward=384,
    )


def train_base(csv_path: Path, config: DemoConfig, output_dir: Path) -> Path:
    """Train every weight of a fresh tiny SPAI on the base generator; save it with its image processor."""
    from transformers import Trainer, TrainingArguments

    from .data import AugmentationConfig, TrainTransform, collate, load_split, paired_split, train_dataset
    from .image_processing_spai import SpaiImageProcessor
    from .modeling_spai import SpaiForImageClassification
    from .training import EpochSeeding

    torch.manual_seed(config.seed)
    model = SpaiForImageClassification(tiny_spai_config(config.patch_size, config.hidden_size, config.num_layers))
    rows = paired_split(load_split(csv_path, "train", generator=config.base_generator), csv_path)
    transform = TrainTransform(config.patch_size, AugmentationConfig(), seed=config.seed)
    args = TrainingArguments(
        output_dir=str(output_dir / "run"), max_steps=config.base_steps, per_device_train_batch_size=config.batch_size,
        learning_rate=config.base_lr, weight_decay=0.05, lr_scheduler_type="cosine", warmup_steps=0.05,
        max_grad_norm=1.0, seed=config.seed, use_cpu=not torch.accelerator.is_available(), eval_strategy="no",
        save_strategy="no", logging_steps=max(1, config.base_steps // 10), report_to="none",
        dataloader_num_workers=0, remove_unused_columns=False, label_names=["labels"],
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=train_dataset(rows, transform), data_collator=collate,
        callbacks=[EpochSeeding(transform)],
    )
    trainer.train()
    model.save_pretrained(output_dir)
    SpaiImageProcessor(patch_size=config.patch_size).save_pretrained(output_dir)
    return output_dir


def train_adapter(csv_path: Path, base_dir: Path, generator: str, config: DemoConfig, output_dir: Path) -> Path:
    """One SVD residual adapter for ``generator`` through the training library (best validation AUC kept)."""
    from .training import TrainingConfig, train

    result = train(
        TrainingConfig(
            base=str(base_dir), data=str(csv_path), generator=generator, output_dir=str(output_dir),
            residual_rank=config.residual_rank, target_modules=config.target_modules, train_head=config.train_head,
            lr=config.adapter_lr, batch_size=config.batch_size, paired=True, max_steps=config.adapter_steps,
            seed=config.seed, num_workers=0, report_to="none", overwrite=True, save_total_limit=1,
            logging_steps=max(1, config.adapter_steps // 5), eval_steps=max(1, config.adapter_steps // 3),
        )
    )
    return result.adapter_dir


def _test_rows(csv_path: Path, generators: Sequence[str]) -> dict[str, tuple[list[Path], np.ndarray]]:
    from .data import load_split

    tables = {name: load_split(csv_path, "test", generator=name) for name in generators}
    return {name: ([Path(p) for p in t["image"]], np.asarray(t["label"])) for name, t in tables.items()}


def evaluate(
    csv_path: Path, base_dir: Path, adapters: dict[str, Path], generators: Sequence[str], say: Callable[[str], None]
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """AUC of the base and of every adapter on every generator's test split, all from one model in memory.

    Every image is scored under the base and all adapters in one forward pass (mixed-adapter batch); then one
    adapter is activated with ``set_adapter`` and its scores are checked against its column of the mixed batch.
    """
    from sklearn.metrics import roc_auc_score

    from .inference import MultiAdapterScorer, score_images
    from .registry import ResolvedAdapter

    resolved = [ResolvedAdapter(f"svd:{name}", path, None, name) for name, path in adapters.items()]
    started = time.perf_counter()
    scorer = MultiAdapterScorer.from_pretrained(str(base_dir), resolved, device="cpu")
    timings = {"load_base_and_adapters_s": time.perf_counter() - started}
    tests = _test_rows(csv_path, generators)
    paths = list(dict.fromkeys(p for rows, _ in tests.values() for p in rows))
    say(f"scoring {len(paths)} test images under base + {len(adapters)} adapters in mixed batches")
    started = time.perf_counter()
    results = {str(r.path): r for r in score_images(paths, scorer, batch_size=32, progress=True)}
    timings["mixed_batch_scoring_s"] = time.perf_counter() - started
    failures = [r for r in results.values() if r.error]
    if failures:
        raise RuntimeError(f"{len(failures)} test image(s) failed to score, e.g. {failures[0].path}: {failures[0].error}")
    table = {}
    for column in scorer.columns:
        row = "base" if column.adapter == "__base__" else column.name
        table[row] = {
            name: float(roc_auc_score(labels, [results[str(p)].scores[column.name] for p in rows]))
            for name, (rows, labels) in tests.items()
        }
    if adapters:
        # Live swap: activate one adapter alone and confirm it scores as its mixed-batch column did.
        first = scorer.columns[1]
        sample = paths[: min(16, len(paths))]
        started = time.perf_counter()
        scorer.model.set_adapter(first.adapter)
        timings["set_adapter_s"] = time.perf_counter() - started
        alone = MultiAdapterScorer(scorer.model, scorer.processor, [first.__class__(first.name, first.adapter)])
        solo = score_images(sample, alone, batch_size=16, progress=False)
        gap = max(abs(s.scores[first.name] - results[str(p)].scores[first.name]) for s, p in zip(solo, sample))
        timings["swap_vs_mixed_max_abs_diff"] = float(gap)
    return table, timings


def plot_auc_table(table: dict[str, dict[str, float]], path: Path, title: str) -> Path:
    """Save the AUC table as an annotated heat map (matplotlib, Agg backend, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows, columns = list(table), list(next(iter(table.values())))
    values = np.array([[table[r][c] for c in columns] for r in rows])
    figure, axes = plt.subplots(figsize=(1.6 + 1.5 * len(columns), 1.0 + 0.55 * len(rows)))
    image = axes.imshow(values, cmap="viridis", vmin=0.5, vmax=1.0, aspect="auto")
    axes.set_xticks(range(len(columns)), [f"test: {c}" for c in columns])
    axes.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(columns)):
            axes.text(j, i, f"{values[i, j]:.3f}", ha="center", va="center", color="white" if values[i, j] < 0.8 else "black")
    figure.colorbar(image, ax=axes, label="ROC-AUC")
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    temp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temp, dpi=120)
    plt.close(figure)
    os.replace(temp, path)
    return path


def format_table(table: dict[str, dict[str, float]]) -> str:
    columns = list(next(iter(table.values())))
    width = max(len(r) for r in table) + 2
    lines = [" " * width + "".join(f"{c:>13s}" for c in columns)]
    lines += [f"{row:<{width}s}" + "".join(f"{values[c]:13.3f}" for c in columns) for row, values in table.items()]
    return "\n".join(lines)


def run_demo(out: str | os.PathLike, config: DemoConfig, say: Callable[[str], None] = print) -> dict:
    """Run every step into ``out``; returns the summary also written to ``auc_table.json``."""
    from .spectral_baseline import cross_generator_auc

    out = Path(out)
    clock = time.perf_counter()
    stamp = lambda: f"[{time.perf_counter() - clock:6.1f}s]"  # noqa: E731
    say(f"{stamp()} 1/5 building the offline dataset in {out / 'data'}")
    csv_path = build_demo_data(out / "data", config.data, progress=lambda m: say(f"{stamp()}     {m}"))
    generators = list(config.data.generators)
    say(f"{stamp()}     spectrum + logistic-regression baseline")
    baseline = cross_generator_auc(csv_path, generators)
    say(f"{stamp()} 2/5 training the SPAI base on {config.base_generator!r} ({config.base_steps} steps, all weights)")
    base_dir = train_base(csv_path, config, out / "base")
    adapters = {}
    for index, name in enumerate(config.adapter_generators, start=3):
        say(f"{stamp()} 3/5 training the SVD adapter for {name!r} ({config.adapter_steps} steps)")
        adapters[name] = train_adapter(csv_path, base_dir, name, config, out / "adapters" / name)
    say(f"{stamp()} 4/5 evaluating base and adapters on every generator (one base, adapters swapped live)")
    table, timings = evaluate(csv_path, base_dir, adapters, generators, lambda m: say(f"{stamp()}     {m}"))
    full = {"spectral LR (own gen.)": {name: baseline[name][name] for name in generators}, **table}
    say(f"{stamp()} 5/5 results (test ROC-AUC; rows: detector, columns: generator of the fakes)")
    say(format_table(full))
    summary = {
        "auc": full,
        "spectral_baseline_cross_generator": baseline,
        "timings": timings,
        "total_seconds": time.perf_counter() - clock,
        "config": {**asdict(config), "data": {**asdict(config.data), "blend": {
            g: config.data.blend_for(g) for g in generators}}},
    }
    plot_auc_table(full, out / "auc_table.png", f"SPAI base on {config.base_generator}, SVD adapters per generator")
    atomic_write_json(out / "auc_table.json", summary)
    say(f"{stamp()} wrote {out / 'auc_table.png'} and {out / 'auc_table.json'}")
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The demo's options (dataset options included) on ``parser``."""
    defaults = DemoConfig()
    parser.add_argument("--out", default="spai-demo", help="output folder (default: ./spai-demo)")
    add_data_arguments(parser)
    parser.add_argument("--base-generator", default=defaults.base_generator, help="generator the base trains on")
    parser.add_argument("--base-steps", type=int, default=defaults.base_steps)
    parser.add_argument("--adapter-steps", type=int, default=defaults.adapter_steps)
    parser.add_argument("--residual-rank", type=int, default=defaults.residual_rank)
    parser.add_argument("--target-modules", default=defaults.target_modules, help="'all-linear' or a regex")
    parser.add_argument("--adapter-lr", type=float, default=defaults.adapter_lr)
    parser.add_argument("--train-head", action=argparse.BooleanOptionalAction, default=defaults.train_head)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``spai-svd demo [--out DIR]``: run the offline end-to-end demo."""
    parser = argparse.ArgumentParser(prog="spai-svd demo", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config = DemoConfig(
            data=data_config_from_args(args), base_generator=args.base_generator, base_steps=args.base_steps,
            adapter_steps=args.adapter_steps, residual_rank=args.residual_rank, target_modules=args.target_modules,
            adapter_lr=args.adapter_lr, train_head=args.train_head, seed=args.seed,
        )
    except ValueError as error:
        parser.error(str(error))
    run_demo(args.out, config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
