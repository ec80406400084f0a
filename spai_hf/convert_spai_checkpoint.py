"""Convert an original-format SPAI checkpoint (``spai.pth``) into a `save_pretrained` folder.

The original file is ``torch.save({"model": state_dict, ...})`` of the patch-based MFM-ViT model. Every tensor
the inference path reads is mapped onto `SpaiForImageClassification`; the documented never-used tensors are
dropped; anything else, or anything missing, is an error that lists the keys. Sizes are read off the tensors.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from .configuration_spai import RELEASED_VIT_KWARGS, SpaiConfig
from .image_processing_spai import SpaiImageProcessor
from .modeling_spai import SpaiForImageClassification
from .spectral_filter import build_frequency_mask

VIT = "mfvit.vit."
PROJECTORS = "mfvit.features_processor.patch_projector.projectors."
BRANCH = "mfvit.features_processor.original_features_processor."
MASK_KEY = "mfvit.frequencies_mask"

# Parts of the original backbone that the patch model never calls (SPAI_SPEC.md section 9).
UNUSED_KEY_PATTERNS = tuple(
    re.compile(p)
    for p in (
        r"mfvit\.vit\.head\..*",
        r"mfvit\.vit\.fc_norm\..*",
        r"mfvit\.vit\.intermediate_fc_norm\..*",
        r"mfvit\.vit\.cls_pos_embed",
        r"mfvit\.vit\.actual_cls_token",
        r"mfvit\.vit\.cls_blocks\..*",
    )
)

_P, _B = re.escape(PROJECTORS), re.escape(BRANCH)
_ESTIMATOR = "frequency_restoration."
# One-to-one renames, original regex -> new name template.
RENAMES = tuple(
    (re.compile(src), dst)
    for src, dst in (
        (r"mfvit\.vit\.cls_token", r"backbone.embeddings.cls_token"),
        (r"mfvit\.vit\.pos_embed", r"backbone.embeddings.position_embeddings"),
        (r"mfvit\.vit\.patch_embed\.proj\.(weight|bias)", r"backbone.embeddings.patch_embeddings.projection.\1"),
        (r"mfvit\.vit\.blocks\.(\d+)\.norm1\.(weight|bias)", r"backbone.layers.\1.layernorm_before.\2"),
        (r"mfvit\.vit\.blocks\.(\d+)\.norm2\.(weight|bias)", r"backbone.layers.\1.layernorm_after.\2"),
        (r"mfvit\.vit\.blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"backbone.layers.\1.attention.o_proj.\2"),
        (r"mfvit\.vit\.blocks\.(\d+)\.attn\.q_bias", r"backbone.layers.\1.attention.q_proj.bias"),
        (r"mfvit\.vit\.blocks\.(\d+)\.attn\.v_bias", r"backbone.layers.\1.attention.v_proj.bias"),
        (r"mfvit\.vit\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"backbone.layers.\1.mlp.\2.\3"),
        (_P + r"(\d+)\.norm1\.(weight|bias)", _ESTIMATOR + r"projectors.\1.norm_in.\2"),
        (_P + r"(\d+)\.norm2\.(weight|bias)", _ESTIMATOR + r"projectors.\1.norm_out.\2"),
        (_P + r"(\d+)\.projector\.1\.(weight|bias)", _ESTIMATOR + r"projectors.\1.fc1.\2"),
        (_P + r"(\d+)\.projector\.4\.(weight|bias)", _ESTIMATOR + r"projectors.\1.fc2.\2"),
        (_B + r"alpha", _ESTIMATOR + "original_branch.alpha"),
        (_B + r"(proj1|proj2)\.projector\.1\.(weight|bias)", _ESTIMATOR + r"original_branch.\1.fc1.\2"),
        (_B + r"(proj1|proj2)\.projector\.4\.(weight|bias)", _ESTIMATOR + r"original_branch.\1.fc2.\2"),
        (_B + r"(proj1|proj2)\.norm2\.(weight|bias)", _ESTIMATOR + r"original_branch.\1.norm_out.\2"),
        (r"patch_aggregator", r"spectral_context_attention.query"),
        (r"to_kv\.weight", r"spectral_context_attention.to_kv.weight"),
        (r"to_out\.0\.weight", r"spectral_context_attention.to_out.weight"),
        (r"norm\.(weight|bias)", r"spectral_context_attention.norm.\1"),
        (r"cls_head\.head\.0\.(weight|bias)", r"classifier.fc1.\1"),
        (r"cls_head\.head\.3\.(weight|bias)", r"classifier.fc2.\1"),
        (r"cls_head\.head\.6\.(weight|bias)", r"classifier.out_proj.\1"),
    )
)
QKV = re.compile(r"mfvit\.vit\.blocks\.(\d+)\.attn\.qkv\.weight")


class CheckpointMismatchError(ValueError):
    """The checkpoint does not have the layout of an original SPAI patch model."""


def _count(state_dict: dict, pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for key in state_dict if (m := regex.fullmatch(key))})


def infer_config(
    state_dict: dict[str, torch.Tensor],
    num_attention_heads: int | None = None,
    feature_layers: list[int] | None = None,
    masking_radius: int | None = None,
) -> SpaiConfig:
    """Read every size of the model off the tensors of an original state_dict.

    Not stored in the tensors: the backbone's head count (default hidden_size // 64, as ViT-B/16), which layers
    feed the projectors when there are fewer projectors than layers (then ``feature_layers`` is required), and the
    masking radius, which is found as the integer radius whose mask equals the stored ``mfvit.frequencies_mask``.
    """
    required = [VIT + "cls_token", VIT + "pos_embed", VIT + "patch_embed.proj.weight", VIT + "blocks.0.mlp.fc1.weight",
                PROJECTORS + "0.projector.1.weight", MASK_KEY, "patch_aggregator", "to_kv.weight",
                "cls_head.head.0.weight"]
    absent = [key for key in required if key not in state_dict]
    if absent:
        raise CheckpointMismatchError(f"not an original SPAI patch-model state_dict; missing keys: {absent}")
    hidden = state_dict[VIT + "cls_token"].shape[-1]
    patch = state_dict[VIT + "patch_embed.proj.weight"].shape[-1]
    grid = math.isqrt(state_dict[VIT + "pos_embed"].shape[1] - 1)
    image_size = grid * patch
    mask = state_dict[MASK_KEY]
    if tuple(mask.shape) != (image_size, image_size):
        raise CheckpointMismatchError(f"{MASK_KEY} has shape {tuple(mask.shape)}, expected {(image_size, image_size)}")
    depth = _count(state_dict, r"mfvit\.vit\.blocks\.(\d+)\..*")
    num_projectors = _count(state_dict, _P + r"(\d+)\..*")
    if feature_layers is None:
        if num_projectors != depth:
            raise CheckpointMismatchError(
                f"{num_projectors} projectors for {depth} backbone layers: pass feature_layers (which layers feed them)"
            )
        feature_layers = list(range(depth))
    if len(feature_layers) != num_projectors:
        raise CheckpointMismatchError(f"{len(feature_layers)} feature_layers for {num_projectors} projectors")
    if num_attention_heads is None:
        if hidden % 64:
            raise CheckpointMismatchError(f"hidden size {hidden} is not a multiple of 64: pass num_attention_heads")
        num_attention_heads = hidden // 64
    projection_dim = state_dict[PROJECTORS + "0.projector.1.weight"].shape[0]
    sca_heads, _, sca_head_dim = state_dict["patch_aggregator"].shape
    feature_dim = state_dict["to_kv.weight"].shape[1]
    if feature_dim != 6 * num_projectors + projection_dim:
        raise CheckpointMismatchError(
            f"to_kv takes {feature_dim} features, expected 6 * {num_projectors} + {projection_dim}"
        )
    head_hidden = state_dict["cls_head.head.0.weight"].shape[0]
    if head_hidden % feature_dim:
        raise CheckpointMismatchError(f"cls_head width {head_hidden} is not a multiple of {feature_dim}")
    backbone = dict(RELEASED_VIT_KWARGS, model_type="vit", hidden_size=hidden, num_hidden_layers=depth,
                    num_attention_heads=num_attention_heads, image_size=image_size, patch_size=patch,
                    intermediate_size=state_dict[VIT + "blocks.0.mlp.fc1.weight"].shape[0])
    config = SpaiConfig(
        backbone_config=backbone,
        patch_size=image_size,
        patch_stride=image_size,
        masking_radius=masking_radius if masking_radius is not None else _find_radius(mask),
        feature_layers=feature_layers,
        projection_dim=projection_dim,
        sca_num_heads=sca_heads,
        sca_hidden_size=sca_heads * sca_head_dim,
        head_mlp_ratio=head_hidden // feature_dim,
    )
    check_frequency_mask(mask, config)
    return config


def _find_radius(mask: torch.Tensor) -> int:
    size = mask.shape[0]
    for radius in range(size + 1):
        if torch.equal(build_frequency_mask(size, radius), mask.to(torch.int64)):
            return radius
    raise CheckpointMismatchError(f"{MASK_KEY} is not the SPAI low-pass disk of any integer radius")


def check_frequency_mask(mask: torch.Tensor, config: SpaiConfig) -> None:
    """The stored mask must equal the one the model rebuilds from (patch_size, masking_radius)."""
    rebuilt = build_frequency_mask(config.patch_size, config.masking_radius)
    if not torch.equal(rebuilt, mask.to(torch.int64)):
        raise CheckpointMismatchError(
            f"{MASK_KEY} differs from the mask rebuilt with radius {config.masking_radius} at size {config.patch_size}"
        )


def map_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original state_dict to `SpaiForImageClassification` names.

    The fused qkv weight is split into q/k/v projections and the key projection gets a zero bias (the original
    has none). Documented unused keys are dropped; unknown keys raise `CheckpointMismatchError` listing them.
    """
    mapped: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in state_dict.items():
        if key == MASK_KEY or any(p.fullmatch(key) for p in UNUSED_KEY_PATTERNS):
            continue
        if match := QKV.fullmatch(key):
            prefix = f"backbone.layers.{match.group(1)}.attention."
            query, key_weight, value = tensor.chunk(3, dim=0)
            mapped[prefix + "q_proj.weight"] = query
            mapped[prefix + "k_proj.weight"] = key_weight
            mapped[prefix + "v_proj.weight"] = value
            mapped[prefix + "k_proj.bias"] = torch.zeros(tensor.shape[1], dtype=tensor.dtype, device=tensor.device)
            continue
        for pattern, template in RENAMES:
            if pattern.fullmatch(key):
                mapped[pattern.sub(template, key)] = tensor
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointMismatchError(f"unknown keys in the checkpoint ({len(unknown)}): {unknown}")
    return mapped


def convert_state_dict(
    state_dict: dict[str, torch.Tensor], **config_kwargs
) -> tuple[SpaiConfig, dict[str, torch.Tensor]]:
    """Original state_dict -> (`SpaiConfig`, state_dict that `SpaiForImageClassification` loads strictly).

    Works on meta tensors too (except the frequency mask, which must hold its values). ``config_kwargs`` go to
    `infer_config`.
    """
    config = infer_config(state_dict, **config_kwargs)
    mapped = map_state_dict(state_dict)
    with torch.device("meta"):
        expected = SpaiForImageClassification(config).state_dict()
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    if missing or unexpected:
        raise CheckpointMismatchError(f"missing keys: {missing}; keys the model does not have: {unexpected}")
    wrong = [f"{k}: {tuple(mapped[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if mapped[k].shape != v.shape]
    if wrong:
        raise CheckpointMismatchError(f"shape mismatches: {wrong}")
    return config, mapped


def load_original_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``torch.load(path, weights_only=True)["model"]`` with clear errors."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError/RuntimeError with long messages
        raise CheckpointMismatchError(
            f"cannot read {path} with torch.load(weights_only=True): {error}. If the file also stores Python objects "
            "(e.g. a training config), re-save only checkpoint['model'] in a trusted environment."
        ) from error
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise CheckpointMismatchError(f"{path}: expected a dict with a 'model' state_dict")
    return checkpoint["model"]


def convert_spai_checkpoint(
    src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool = False, **config_kwargs
) -> Path:
    """Convert ``src`` (original ``spai.pth``) into the `save_pretrained` folder ``dst``.

    Writes config.json, model.safetensors and preprocessor_config.json into a temporary folder next to ``dst``,
    checks that the folder reloads with no missing or unexpected keys, then renames it into place. An existing
    ``dst`` is replaced only with ``overwrite=True``.
    """
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists; replace it with overwrite=True (--overwrite on the command line)")
    config, state_dict = convert_state_dict(load_original_state_dict(src), **config_kwargs)
    model = SpaiForImageClassification(config)
    model.load_state_dict(state_dict, strict=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        model.save_pretrained(staging)
        SpaiImageProcessor(patch_size=config.patch_size).save_pretrained(staging)
        _, info = SpaiForImageClassification.from_pretrained(staging, output_loading_info=True)
        if any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")):
            raise CheckpointMismatchError(f"converted folder does not reload cleanly: {info}")
        if dst.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old.", dir=dst.parent))
            os.replace(dst, backup / dst.name)
            os.replace(staging, dst)
            shutil.rmtree(backup)
        else:
            os.replace(staging, dst)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return dst


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Command line: ``SRC DST``; returns the exit status (0 ok, 1 on a bad or mismatched checkpoint)."""
    parser = argparse.ArgumentParser(prog=prog, description="Convert an original SPAI checkpoint (spai.pth) into a "
                                     "transformers folder that from_pretrained and pipeline() load.")
    parser.add_argument("src", help="original checkpoint, torch.save({'model': state_dict, ...})")
    parser.add_argument("dst", help="output folder (config.json, model.safetensors, preprocessor_config.json)")
    parser.add_argument("--num-attention-heads", type=int, help="backbone heads (default: hidden size // 64)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    args = parser.parse_args(argv)
    try:
        out = convert_spai_checkpoint(
            args.src, args.dst, overwrite=args.overwrite, num_attention_heads=args.num_attention_heads
        )
    except (CheckpointMismatchError, FileExistsError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0
