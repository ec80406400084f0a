"""Configuration of the SVD residual adapter (Effort, ICML 2025) as a PEFT config."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional, Union

from peft.config import PeftConfig
from peft.utils.other import get_pattern_key


class SVDPeftType(str, enum.Enum):
    """PEFT-type tag of this method.

    PEFT's own ``PeftType`` enum cannot be extended, so the method carries its own ``str`` enum whose member hashes and
    compares like the plain string ``"SVD_RESIDUAL"``: PEFT's mappings find it both from a live config and from the
    string stored in ``adapter_config.json``.
    """

    SVD_RESIDUAL = "SVD_RESIDUAL"


# Attention projections of CLIP vision towers (``self_attn.{q,k,v,out}_proj``) and of transformers-5 ViT
# (``attention.{q,k,v,o}_proj``). Matched as a suffix of the module name, so a backbone nested under any attribute (as
# in SPAI) is found as well.
VISION_ATTENTION_TARGETS = r"(.*\.)?(self_attn\.(q|k|v|out)_proj|attention\.(q|k|v|o)_proj)"

DEFAULT_TARGET_MODULES: dict[str, str] = {
    "clip_vision_model": VISION_ATTENTION_TARGETS,
    "vit": VISION_ATTENTION_TARGETS,
    "spai": VISION_ATTENTION_TARGETS,
    # a full CLIP model: adapt the vision tower only
    "clip": r"(.*\.)?vision_model\..*self_attn\.(q|k|v|out)_proj",
}


@dataclass
class SVDResidualConfig(PeftConfig):
    """Frozen-principal / trainable-residual SVD adapter.

    Each target linear ``W = U diag(S) V^T`` keeps its top ``r`` singular triplets frozen and trains the remaining
    ``k = min(out, in) - r`` triplets, initialised from the SVD so that the adapted model equals the base at step 0.

    Args:
        r: principal (frozen) rank, an ``int`` or a ``float`` in (0, 1) meaning a fraction of ``min(out, in)``.
            Mutually exclusive with ``residual_rank``.
        residual_rank: trainable rank ``k`` (``int``, or a fraction in (0, 1)); used when ``r`` is None.
            Default 1, as in Effort.
        rank_pattern: ``{regex: r}`` overrides of the principal rank for matching module names.
        target_modules: modules to adapt; None picks the default for the model type (CLIP vision, ViT, SPAI).
        exclude_modules: modules never to adapt.
        modules_to_save: extra modules trained and saved in full (e.g. a classification head).
        orthogonality_weight: weight of the orthogonality regulariser in ``svd_regularization_loss()``.
        norm_weight: weight of the Frobenius-norm regulariser in ``svd_regularization_loss()``.
        base_fingerprint: filled when the adapter is created: per target module, its weight shape and a strided sample
            of its values. Loading onto a base that does not match raises an error.
        check_base_fingerprint: set to False to load onto a base that does not match the fingerprint (experts only).
    """

    r: Optional[Union[int, float]] = field(default=None, metadata={"help": "Principal (frozen) rank or fraction."})
    residual_rank: Optional[Union[int, float]] = field(
        default=None, metadata={"help": "Trainable residual rank k (default 1) when r is not given."}
    )
    rank_pattern: dict[str, Union[int, float]] = field(
        default_factory=dict, metadata={"help": "Regex -> principal rank overrides."}
    )
    target_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names or regex to adapt; None uses the model type's default."}
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names or regex never to adapt."}
    )
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "Modules trained and saved in full besides the adapter."}
    )
    orthogonality_weight: float = field(default=0.0, metadata={"help": "Weight of the orthogonality regulariser."})
    norm_weight: float = field(default=0.0, metadata={"help": "Weight of the Frobenius-norm regulariser."})
    base_fingerprint: Optional[dict[str, dict]] = field(
        default=None, metadata={"help": "Shapes and sampled values of the base weights the adapter was made on."}
    )
    check_base_fingerprint: bool = field(
        default=True, metadata={"help": "Refuse to load onto a base whose weights do not match base_fingerprint."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = SVDPeftType.SVD_RESIDUAL
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)
        if self.r is not None and self.residual_rank is not None:
            raise ValueError("Give either `r` (principal rank) or `residual_rank` (trainable rank), not both.")
        for name, value in [("r", self.r), ("residual_rank", self.residual_rank), *self.rank_pattern.items()]:
            _check_rank_value(name, value)
        if self.orthogonality_weight < 0 or self.norm_weight < 0:
            raise ValueError("Regulariser weights must be >= 0.")

    def ranks_for(self, module_name: str, out_features: int, in_features: int) -> tuple[int, int]:
        """Return ``(r, k)``: the frozen principal rank and the trainable residual rank of one target module."""
        full = min(out_features, in_features)
        pattern = get_pattern_key(list(self.rank_pattern), module_name)
        if pattern in self.rank_pattern:
            r = _resolve(self.rank_pattern[pattern], full)
        elif self.r is not None:
            r = _resolve(self.r, full)
        else:
            r = full - _resolve(1 if self.residual_rank is None else self.residual_rank, full)
        k = full - r
        if not 0 <= r < full:
            raise ValueError(
                f"{module_name}: principal rank {r} leaves no trainable triplet (min(out, in) = {full}); "
                "choose r < min(out, in)."
            )
        return r, k


def _check_rank_value(name: str, value: Optional[Union[int, float]]) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be an int or a float fraction, got {value!r}.")
    if isinstance(value, float) and not 0.0 < value < 1.0:
        raise ValueError(f"{name}={value}: a float rank is a fraction of min(out, in) and must lie in (0, 1).")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"{name}={value} must be >= 0.")


def _resolve(value: Union[int, float], full: int) -> int:
    """An int rank as is; a fraction of ``full`` rounded to the nearest int."""
    return int(round(value * full)) if isinstance(value, float) else int(value)
