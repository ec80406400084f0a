"""Configuration of SPAI (spectral AI-generated image detection, CVPR 2025) as a transformers model.

Every size and switch of the forward pass in SPAI_SPEC.md is a named field; the defaults are the values of the
released ``spai.pth`` (MFM ViT-B/16 backbone, 224-pixel patches, all 12 layers used).
"""

from __future__ import annotations

from typing import Literal

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# The released backbone: a plain ViT-B/16 (exact GELU, LayerNorm eps 1e-6, class token, absolute positions).
RELEASED_VIT_KWARGS = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-6,
    "image_size": 224,
    "patch_size": 16,
    "qkv_bias": True,
}

SUPPORTED_BACKBONES = ("vit", "clip_vision_model")


class SpaiConfig(PreTrainedConfig):
    r"""
    Configuration of [`SpaiForImageClassification`].

    Args:
        backbone_config (`dict` or `PreTrainedConfig`, *optional*):
            The backbone: a `ViTConfig` (released weights; the default is the released ViT-B/16) or a
            `CLIPVisionConfig` (CLIP variant, features taken after each layer's `layer_norm2`).
        patch_size (`int`, defaults to 224):
            Side S of the square image patches the detector looks at. Must equal `backbone_config.image_size`.
        patch_stride (`int`, defaults to 224):
            Stride of the patch grid on the image (released: non-overlapping patches).
        minimum_patches (`int`, defaults to 4):
            Below this many grid patches, the five crops (corners + centre) of size S are used instead.
        masking_radius (`int`, defaults to 16):
            Radius of the low-pass disk in the shifted spectrum of a patch.
        feature_layers (`list[int]`, *optional*):
            Backbone layers (0-based) whose outputs feed the frequency-restoration estimator. Default: all.
        projection_dim (`int`, defaults to 1024):
            Width P of the per-layer projectors and the original-image branch.
        sca_num_heads (`int`, defaults to 12):
            Heads of the spectral context attention over patches.
        sca_hidden_size (`int`, defaults to 1536):
            Width E of the spectral context attention's keys/values.
        head_mlp_ratio (`int`, defaults to 3):
            The classification head's hidden width is this times the patch-feature width C = 6N + P.
        projector_dropout (`float`, defaults to 0.5):
            Dropout inside the projectors and the original-image branch (training only).
        classifier_dropout (`float`, defaults to 0.5):
            Dropout after each ReLU of the classification head (training only).
        layer_norm_eps (`float`, defaults to 1e-5):
            Epsilon of every LayerNorm outside the backbone.
        image_mean, image_std (`list[float]`, *optional*):
            Normalisation applied to a patch and its two spectral views. Default: ImageNet statistics for a ViT
            backbone, CLIP statistics for a CLIP backbone.
        max_patches_per_forward (`int`, defaults to 96):
            Upper bound on the rows of one backbone call. Each patch contributes three rows (original, low- and
            high-frequency view) per score it enters, so a call holds `max(1, max_patches_per_forward // 3)`
            patch scores. Bounds peak memory for images of any size; does not change results.
        compute_dtype (`"float32"` or `"bfloat16"`, defaults to `"float32"`):
            `"bfloat16"` runs the backbone and the per-layer projectors under bfloat16 autocast; the FFT, the
            similarity statistics, the patch attention and the head stay in float32.
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of freshly initialised Linear weights.
    """

    model_type = "spai"
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="vit", init_kwargs=RELEASED_VIT_KWARGS),
    }

    backbone_config: dict | PreTrainedConfig | None = None
    patch_size: int = 224
    patch_stride: int = 224
    minimum_patches: int = 4
    masking_radius: int = 16
    feature_layers: list[int] | None = None
    projection_dim: int = 1024
    sca_num_heads: int = 12
    sca_hidden_size: int = 1536
    head_mlp_ratio: int = 3
    projector_dropout: float = 0.5
    classifier_dropout: float = 0.5
    layer_norm_eps: float = 1e-5
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    max_patches_per_forward: int = 96
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.id2label is None and kwargs.get("num_labels", 1) == 1:
            # One logit: P(AI-generated) = sigmoid(logit); the image-classification pipeline applies the sigmoid.
            self.id2label = {0: "ai-generated"}
            self.label2id = {"ai-generated": 0}
        super().__post_init__(**kwargs)
        backbone_type = self.backbone_config.model_type
        if backbone_type not in SUPPORTED_BACKBONES:
            raise ValueError(f"backbone_config must be one of {SUPPORTED_BACKBONES}, got model_type={backbone_type!r}")
        if self.backbone_config.image_size != self.patch_size:
            raise ValueError(
                f"patch_size ({self.patch_size}) must equal backbone_config.image_size "
                f"({self.backbone_config.image_size}): each patch is one backbone input"
            )
        depth = self.backbone_config.num_hidden_layers
        if self.feature_layers is None:
            self.feature_layers = list(range(depth))
        self.feature_layers = [int(i) for i in self.feature_layers]
        if not self.feature_layers or any(not 0 <= i < depth for i in self.feature_layers):
            raise ValueError(f"feature_layers must be non-empty indices in [0, {depth}), got {self.feature_layers}")
        if self.sca_hidden_size % self.sca_num_heads:
            raise ValueError("sca_hidden_size must be divisible by sca_num_heads")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"compute_dtype must be 'float32' or 'bfloat16', got {self.compute_dtype!r}")
        if self.max_patches_per_forward < 1:
            raise ValueError("max_patches_per_forward must be >= 1")
        is_clip = backbone_type == "clip_vision_model"
        if self.image_mean is None:
            self.image_mean = list(CLIP_MEAN if is_clip else IMAGENET_MEAN)
        if self.image_std is None:
            self.image_std = list(CLIP_STD if is_clip else IMAGENET_STD)

    @property
    def num_feature_layers(self) -> int:
        """N: how many backbone layers feed the estimator."""
        return len(self.feature_layers)

    @property
    def patch_feature_dim(self) -> int:
        """C = 6N + P: length of one patch's feature vector (similarity statistics + original-image branch)."""
        return 6 * self.num_feature_layers + self.projection_dim


__all__ = ["SpaiConfig"]
