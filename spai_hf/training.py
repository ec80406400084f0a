"""Train a per-generator SVD residual adapter on a SPAI base with transformers' `Trainer`.

Runs as ``python scripts/train.py``, ``spai-svd train``, ``accelerate launch scripts/train.py`` or
``torchrun --nproc_per_node N scripts/train.py`` (data-parallel; `Trainer` picks up the launcher's environment).

What SPAI adds to the stock `Trainer`:
- data from a CSV (`spai_hf.data`): random S x S training crops, whole images at their own resolution for validation;
- loss: BCE with logits (the model's own) plus the adapter's weighted regularisers (``svd_regularization_loss``);
- validation metrics from `spai_hf.metrics`; the adapter with the best validation ROC-AUC is kept
  (``load_best_model_at_end``) and exported to ``--output-dir`` with ``metrics.json`` (validation metrics and the
  threshold calibrated at the equal error rate) and ``training_args.json`` (every option, plus the world size).

Any-resolution validation runs inside `Trainer`'s own evaluation loop: the eval collator passes a list of (3, H, W)
tensors, the model returns one logit per image, and only those fixed-size logits are gathered across processes.
Checkpoints (``checkpoint-N/``) and TensorBoard logs (``runs/``) go to the output folder too; ``--resume`` continues
from the newest checkpoint exactly (optimizer, scheduler, RNG and data position restored, augmentations seeded per
(seed, epoch, row)).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import EvalPrediction, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from .atomic import atomic_write_json
from .data import (
    AugmentationConfig,
    CsvValidationError,
    TrainTransform,
    collate,
    eval_dataset,
    load_split,
    paired_split,
    train_dataset,
)
from .hub import METRICS_FILE, TRAINING_ARGS_FILE
from .image_processing_spai import SpaiImageProcessor
from .metrics import compute_detection_metrics

__all__ = [
    "ALL_LINEAR_TARGETS",
    "HEAD_LAST_LAYERS",
    "EpochSeeding",
    "SpaiTrainer",
    "TrainingConfig",
    "TrainingResult",
    "build_model",
    "build_parser",
    "load_config_file",
    "main",
    "train",
]

logger = logging.getLogger(__name__)

HEAD_LAST_LAYERS = ("classifier.fc2", "classifier.out_proj")
"""Modules added to PEFT's ``modules_to_save`` by ``--train-head``: the classification head's last two Linears."""

ALL_LINEAR_TARGETS = (
    r"(.*\.)?(attention\.(q|k|v|o)_proj|self_attn\.(q|k|v|out)_proj|mlp\.fc[12]|projectors\.\d+\.fc[12]"
    r"|original_branch\.proj[12]\.fc[12]|spectral_context_attention\.to_(kv|out)|classifier\.fc1)"
)
"""``--target-modules all-linear``: every Linear of SPAI (backbone attention and MLP, projectors, patch attention,
first head Linear) except the head's last two, which ``--train-head`` trains in full."""


def _rank(text: str) -> int | float:
    """An int rank, or a float fraction in (0, 1)."""
    return int(text) if text.lstrip("-").isdigit() else float(text)


def _opt(help_text: str, **argparse_kwargs: Any) -> dict[str, Any]:
    return {"help": help_text, **argparse_kwargs}


@dataclass
class TrainingConfig:
    """Every training option; the CLI flags and the keys of ``--config`` files are these field names."""

    base: str | None = field(default=None, metadata=_opt("base SPAI model: a save_pretrained folder or a Hub id"))
    data: str | None = field(default=None, metadata=_opt("CSV with columns image,split,class[,generator]"))
    csv_root: str | None = field(
        default=None, metadata=_opt("folder relative image paths start from (default: the CSV's)")
    )
    generator: str | None = field(
        default=None, metadata=_opt("generator name; selects rows by the CSV's generator column when it has one")
    )
    output_dir: str | None = field(default=None, metadata=_opt("output folder (default: adapters/<generator>)"))
    train_split: str = field(default="train", metadata=_opt("split used for training"))
    paired: bool = field(
        default=False,
        metadata=_opt(
            "train on aligned groups from the CSV's pair column (a real image and the fakes made from it, in the "
            "same batch, cut and flipped alike); --batch-size then counts groups"
        ),
    )
    val_split: str = field(default="val", metadata=_opt("split used for validation and threshold calibration"))
    # adapter
    r: int | float | None = field(
        default=None, metadata=_opt("frozen principal rank (int, or fraction in (0,1))", type=_rank)
    )
    residual_rank: int | float | None = field(
        default=None, metadata=_opt("trainable residual rank k (default 1 when --r is not given)", type=_rank)
    )
    target_modules: str | None = field(
        default=None,
        metadata=_opt("regex of modules to adapt, or 'all-linear' (every Linear but the head's last two); "
                      "default: the backbone's attention linears"),
    )
    train_head: bool = field(default=False, metadata=_opt(f"also train {', '.join(HEAD_LAST_LAYERS)} in full"))
    modules_to_save: list[str] | None = field(
        default=None, metadata=_opt("further modules trained and saved in full", nargs="+")
    )
    orthogonality_weight: float = field(default=0.0, metadata=_opt("weight of the orthogonality regulariser"))
    norm_weight: float = field(default=0.0, metadata=_opt("weight of the Frobenius-norm regulariser"))
    # optimisation
    lr: float = field(default=5e-4, metadata=_opt("peak learning rate of AdamW"))
    weight_decay: float = field(default=0.05, metadata=_opt("AdamW weight decay"))
    warmup_ratio: float = field(
        default=5 / 35, metadata=_opt("fraction of steps of linear warm-up before cosine decay")
    )
    batch_size: int = field(
        default=32, metadata=_opt("training crops (aligned groups with --paired) per process and step")
    )
    eval_batch_size: int = field(default=8, metadata=_opt("validation images per process and forward"))
    gradient_accumulation_steps: int = field(default=1, metadata=_opt("micro-batches per optimizer step"))
    epochs: float = field(default=10.0, metadata=_opt("training epochs (ignored when --max-steps > 0)"))
    max_steps: int = field(default=-1, metadata=_opt("total optimizer steps; overrides --epochs when > 0"))
    max_grad_norm: float = field(default=1.0, metadata=_opt("gradient clipping norm (0 disables)"))
    mixed_precision: str = field(
        default="no", metadata=_opt("mixed precision where the hardware allows it", choices=("no", "fp16", "bf16"))
    )
    gradient_checkpointing: bool = field(default=False, metadata=_opt("recompute backbone activations in backward"))
    seed: int = field(default=0, metadata=_opt("seed of initialisation, data order and augmentations"))
    # augmentations
    hflip_prob: float = field(default=0.5, metadata=_opt("probability of a horizontal flip"))
    vflip_prob: float = field(default=0.5, metadata=_opt("probability of a vertical flip"))
    blur_prob: float = field(default=0.0, metadata=_opt("probability of a Gaussian blur (sigma 0.1-2)"))
    jpeg_prob: float = field(default=0.0, metadata=_opt("probability of JPEG re-compression (quality 65-100)"))
    noise_prob: float = field(default=0.0, metadata=_opt("probability of Gaussian noise (std 0-0.03)"))
    # bookkeeping
    eval_steps: int | None = field(
        default=None, metadata=_opt("validate and checkpoint every N steps (default: every epoch)")
    )
    logging_steps: int = field(default=10, metadata=_opt("log the training loss every N steps"))
    save_total_limit: int = field(default=3, metadata=_opt("checkpoints kept (the best one is always kept)"))
    num_workers: int = field(default=2, metadata=_opt("image-decoding worker processes per training process"))
    check_images: bool = field(default=False, metadata=_opt("open every image header before training"))
    report_to: str = field(default="tensorboard", metadata=_opt("logging integration (tensorboard, none, ...)"))
    resume: bool = field(default=False, metadata=_opt("continue from the newest checkpoint in the output folder"))
    overwrite: bool = field(default=False, metadata=_opt("allow starting afresh in a folder that holds a run"))
    stop_after_steps: int | None = field(
        default=None, metadata=_opt("checkpoint and stop after this many steps (continue later with --resume)")
    )

    def __post_init__(self):
        if self.output_dir is None:
            self.output_dir = str(Path("adapters") / (self.generator or "adapter"))

    def augmentation(self) -> AugmentationConfig:
        return AugmentationConfig(
            hflip_prob=self.hflip_prob, vflip_prob=self.vflip_prob, blur_prob=self.blur_prob,
            jpeg_prob=self.jpeg_prob, noise_prob=self.noise_prob,
        )


_FIELDS = {f.name: f for f in dataclasses.fields(TrainingConfig)}
_ALIASES = {"epochs": ["--num-epochs"], "lr": ["--learning-rate"]}


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML or JSON file of training options (keys as the flags, dashes or underscores)."""
    text = Path(path).read_text(encoding="utf-8")
    values = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: the config file must hold a mapping of option names to values")
    values = {key.replace("-", "_"): value for key, value in values.items()}
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ValueError(f"{path}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}")
    return values


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The flags of `TrainingConfig`, plus ``--config FILE`` (explicit flags override the file)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", metavar="FILE", help="YAML or JSON file with any of the options below")
    for name, spec in _FIELDS.items():
        kwargs = dict(spec.metadata)
        flags = [f"--{name.replace('_', '-')}", *_ALIASES.get(name, [])]
        annotation = str(spec.type)  # a string such as "int | None" (postponed annotations)
        if annotation == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif "type" not in kwargs:
            kwargs["type"] = {"int": int, "float": float}.get(annotation.split(" ")[0], str)
        parser.add_argument(*flags, dest=name, default=argparse.SUPPRESS, **kwargs)
    return parser


def parse_config(argv: Sequence[str] | None = None, prog: str | None = None) -> TrainingConfig:
    """Defaults < ``--config`` file < explicit flags; checks that ``base`` and ``data`` are set."""
    parser = build_parser(prog)
    args = vars(parser.parse_args(argv))
    config_path = args.pop("config", None)
    values = load_config_file(config_path) if config_path else {}
    values.update(args)
    missing = [f"--{name}" for name in ("base", "data") if not values.get(name)]
    if missing:
        parser.error(f"the following options are required (as flags or in --config): {', '.join(missing)}")
    return TrainingConfig(**values)


# ---------------------------------------------------------------------------------------------------------- model
def build_model(config: TrainingConfig):
    """Base SPAI model (frozen) with a fresh SVD residual adapter, SVD already computed."""
    from peft import get_peft_model

    from svd_adapter import SVDResidualConfig, SVDResidualLayer

    from .modeling_spai import SpaiForImageClassification

    torch.manual_seed(config.seed)
    base = SpaiForImageClassification.from_pretrained(config.base)
    if config.gradient_checkpointing:
        base.backbone.activation_checkpointing_enable()
    modules_to_save = list(config.modules_to_save or []) + (list(HEAD_LAST_LAYERS) if config.train_head else [])
    adapter_config = SVDResidualConfig(
        r=config.r,
        residual_rank=config.residual_rank,
        target_modules=ALL_LINEAR_TARGETS if config.target_modules == "all-linear" else config.target_modules,
        modules_to_save=modules_to_save or None,
        orthogonality_weight=config.orthogonality_weight,
        norm_weight=config.norm_weight,
    )
    model = get_peft_model(base, adapter_config)
    for module in model.modules():
        if isinstance(module, SVDResidualLayer):
            module.ensure_initialised("default")
    return model


# ---------------------------------------------------------------------------------------------------------- trainer
class SpaiTrainer(Trainer):
    """`Trainer` whose training loss adds the adapter's weighted regularisers to the model's BCE."""

    # The loss is a per-batch mean, not normalised by a token count: Trainer must divide it by the number of
    # accumulation steps itself (SPAI's forward takes **kwargs, which would otherwise make Trainer assume it does).
    loss_is_scaled_for_ga = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        loss = outputs.loss
        if model.training:
            tuner = self.accelerator.unwrap_model(model).base_model
            config = tuner.peft_config[tuner.active_adapters[0]]
            if config.orthogonality_weight > 0 or config.norm_weight > 0:
                loss = loss + tuner.svd_regularization_loss()
        return (loss, outputs) if return_outputs else loss


def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
    """Detection metrics from gathered logits (N, 1) and labels (N,)."""
    logits = torch.as_tensor(prediction.predictions).float().view(-1)
    labels = torch.as_tensor(prediction.label_ids).view(-1).round().long()
    return compute_detection_metrics(torch.sigmoid(logits).numpy(), labels.numpy())


class EpochSeeding(TrainerCallback):
    """Tell the training transform the epoch, so augmentations are seeded by (seed, epoch, row)."""

    def __init__(self, transform: TrainTransform):
        self.transform = transform

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.transform.set_epoch(math.floor(state.epoch + 1e-9) if state.epoch else 0)


class _StopAfter(TrainerCallback):
    """Checkpoint and stop at a given step (a run split into sessions; continue with --resume)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_save = True
            control.should_training_stop = True
        return control


@dataclass
class TrainingResult:
    """Where the run ended: the exported adapter folder (None if stopped early), its metrics, the last step."""

    adapter_dir: Path | None
    metrics: dict[str, Any]
    global_step: int
    is_main_process: bool = True


_TRAINER_EVAL_KEYS = {"epoch", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}


def _json_safe(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}


def _training_arguments(config: TrainingConfig, output_dir: Path) -> TrainingArguments:
    strategy = "steps" if config.eval_steps else "epoch"
    report_to = config.report_to
    if report_to == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            logger.warning("tensorboard is not installed: not logging to TensorBoard")
            report_to = "none"
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.lr,
        weight_decay=config.weight_decay,
        optim="adamw_torch",
        lr_scheduler_type="cosine",
        warmup_steps=config.warmup_ratio,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        max_grad_norm=config.max_grad_norm,
        bf16=config.mixed_precision == "bf16",
        fp16=config.mixed_precision == "fp16",
        seed=config.seed,
        # Without an accelerator, say so: accelerate then sets up multi-process CPU training (gloo) under torchrun.
        use_cpu=not torch.accelerator.is_available(),
        eval_strategy=strategy,
        save_strategy=strategy,
        eval_steps=config.eval_steps,
        save_steps=config.eval_steps,
        logging_steps=config.logging_steps,
        save_total_limit=config.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="roc_auc",
        greater_is_better=True,
        label_names=["labels"],
        remove_unused_columns=False,
        dataloader_num_workers=config.num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        dataloader_persistent_workers=False,  # the workers must see the epoch set at each epoch start
        ddp_find_unused_parameters=False,
        report_to=report_to,
        disable_tqdm=None,
    )


def _check_output_dir(config: TrainingConfig, output_dir: Path) -> str | bool:
    """What to pass as ``resume_from_checkpoint``; refuses to start afresh over an existing run."""
    last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    if config.resume:
        if last is None:
            raise FileNotFoundError(f"--resume: no checkpoint-* folder in {output_dir} to continue from")
        return last
    if last is not None and not config.overwrite:
        raise FileExistsError(
            f"{output_dir} already holds a run ({Path(last).name}); pass --resume to continue it or --overwrite "
            "to start afresh"
        )
    return False


def train(config: TrainingConfig) -> TrainingResult:
    """Validate the data, train, and export the best adapter; see the module docstring."""
    output_dir = Path(config.output_dir)
    resume_from = _check_output_dir(config, output_dir)
    args = _training_arguments(config, output_dir)

    # Validate both splits before any model is loaded, so a bad CSV fails in seconds.
    with args.main_process_first(desc="reading the CSV"):
        splits = {
            name: load_split(config.data, split, root=config.csv_root, generator=config.generator,
                             check_images=config.check_images)
            for name, split in (("train", config.train_split), ("val", config.val_split))
        }
    for name, split in (("train", config.train_split), ("val", config.val_split)):
        if len(set(splits[name]["label"])) < 2:
            raise CsvValidationError(
                config.data, f"split {split!r} needs both real (0) and AI-generated (1) images: training needs "
                "both classes and validation ROC-AUC, which picks the best adapter, is undefined with one"
            )

    if config.paired:
        splits["train"] = paired_split(splits["train"], config.data)

    model = build_model(config)
    patch_size = model.base_model.model.config.patch_size
    transform = TrainTransform(patch_size, config.augmentation(), seed=config.seed)
    processor = SpaiImageProcessor(patch_size=patch_size)
    callbacks: list[TrainerCallback] = [EpochSeeding(transform)]
    if config.stop_after_steps:
        callbacks.append(_StopAfter(config.stop_after_steps))
    trainer = SpaiTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset(splits["train"], transform),
        eval_dataset=eval_dataset(splits["val"], processor),
        data_collator=collate,
        compute_metrics=compute_metrics,
        callbacks=callbacks,
    )
    if trainer.is_world_process_zero():
        _write_training_args(config, output_dir, args, len(splits["train"]), len(splits["val"]))
    trainer.train(resume_from_checkpoint=resume_from or None)

    state = trainer.state
    if state.global_step < state.max_steps:
        if trainer.is_world_process_zero():
            logger.info(
                "stopped at step %d of %d; continue with --resume", state.global_step, state.max_steps
            )
        return TrainingResult(None, {}, state.global_step, trainer.is_world_process_zero())
    metrics = trainer.evaluate()  # the best adapter is loaded at the end: its validation metrics and threshold
    validation = _json_safe(
        {key.removeprefix("eval_"): value for key, value in metrics.items() if key not in _TRAINER_EVAL_KEYS}
    )
    if trainer.is_world_process_zero():
        trainer.model.save_pretrained(str(output_dir))
        atomic_write_json(
            output_dir / METRICS_FILE,
            {
                "generator": config.generator,
                "split": config.val_split,
                "threshold": validation["threshold"],
                "threshold_method": "equal error rate on the validation split",
                "best_checkpoint": state.best_model_checkpoint and Path(state.best_model_checkpoint).name,
                "metrics": validation,
            },
        )
    trainer.accelerator.wait_for_everyone()
    return TrainingResult(output_dir, validation, state.global_step, trainer.is_world_process_zero())


def _write_training_args(
    config: TrainingConfig, output_dir: Path, args: TrainingArguments, train_rows: int, val_rows: int
) -> None:
    import peft
    import transformers

    atomic_write_json(
        output_dir / TRAINING_ARGS_FILE,
        {
            **dataclasses.asdict(config),
            "world_size": args.world_size,
            "total_train_batch_size": args.world_size * config.batch_size * config.gradient_accumulation_steps,
            "train_rows": train_rows,
            "val_rows": val_rows,
            "versions": {
                "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__
            },
        },
    )


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Command-line entry point (``scripts/train.py``, ``spai-svd train``); returns the exit status."""
    config = parse_config(argv, prog)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        result = train(config)
    except (CsvValidationError, FileNotFoundError, FileExistsError, ValueError) as error:
        logger.error("%s", error)
        return 1
    if result.adapter_dir is not None and result.is_main_process:
        logger.info("adapter written to %s (validation ROC-AUC %s)", result.adapter_dir, result.metrics.get("roc_auc"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
