"""SPAI as a transformers `PreTrainedModel`.

Data flow of `SpaiForImageClassification.forward` (one module per step):
image (3, H, W) in [0, 1] -> patches (`patching`) -> spectral views (`spectral_filter`) -> backbone layer tokens
(`backbone_features`) -> patch vector of similarity statistics + original-image branch (`frequency_restoration`)
-> attention over the patches of each image (`spectral_context_attention`) -> logit (`classification_head`).

Speed: every patch of every image in a batch, with its three spectral views, goes through the backbone together
in calls of at most `config.max_patches_per_forward` rows; identical crops are computed once; each layer's tokens
are reduced to per-patch statistics before the next layer runs, so memory stays bounded for any image size.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AutoConfig, CLIPVisionModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.utils import logging

from .backbone_features import build_backbone, iter_layer_features
from .classification_head import SpaiClassificationHead
from .configuration_spai import SpaiConfig
from .frequency_restoration import SpaiFrequencyRestorationEstimator, SpaiOriginalImageBranch
from .patching import PatchLayout, boxes_tensor, crop_patch, layout_patches
from .spectral_context_attention import SpaiSpectralContextAttention
from .spectral_filter import SpaiSpectralFilter, build_frequency_mask

logger = logging.get_logger(__name__)


@dataclass
class SpaiImageClassifierOutput(ImageClassifierOutput):
    """`ImageClassifierOutput` with what heatmaps need.

    Per scored sample (image-major, ``repeat_per_image`` rows per image), when ``output_attentions=True``:
    ``attentions[i]``: (num_patches,) spectral-context attention weights averaged over heads;
    ``head_attentions[i]``: (heads, num_patches) per-head weights;
    ``patch_boxes[i]``: (num_patches, 3) long tensor of (top, left, size) of each patch on the processed image.
    """

    head_attentions: tuple[torch.Tensor, ...] | None = None
    patch_boxes: tuple[torch.Tensor, ...] | None = None


class SpaiPreTrainedModel(PreTrainedModel):
    config: SpaiConfig
    config_class = SpaiConfig
    base_model_prefix = "spai"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["ViTLayer", "CLIPEncoderLayer"]

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, SpaiSpectralContextAttention):
            init.trunc_normal_(module.query, std=self.config.initializer_range)
        elif isinstance(module, SpaiOriginalImageBranch):
            init.zeros_(module.alpha)
        elif isinstance(module, SpaiSpectralFilter):
            init.copy_(module.frequency_mask, build_frequency_mask(module.size, module.radius))
            init.copy_(module.mean, torch.tensor(module.image_mean).view(3, 1, 1))
            init.copy_(module.std, torch.tensor(module.image_std).view(3, 1, 1))


class SpaiForImageClassification(SpaiPreTrainedModel):
    """SPAI detector: one logit per image, P(AI-generated) = sigmoid(logit).

    Attribute protocol for row-routed adapters (``svd_adapter``): while per-patch work runs (backbone, projectors,
    original-image branch), ``self.peft_row_sample_index`` is a 1-D long tensor giving, for each row of the current
    backbone call, the scored sample (``image * repeat_per_image + repeat``) it belongs to; otherwise it is None and
    the modules that run (patch attention, head) see one row per scored sample.
    """

    def __init__(self, config: SpaiConfig):
        super().__init__(config)
        feature_dim = config.patch_feature_dim
        self.spectral_filter = SpaiSpectralFilter(
            config.patch_size, config.masking_radius, config.image_mean, config.image_std
        )
        self.backbone = build_backbone(config)
        self.frequency_restoration = SpaiFrequencyRestorationEstimator(
            config.num_feature_layers,
            config.backbone_config.hidden_size,
            config.projection_dim,
            config.layer_norm_eps,
            config.projector_dropout,
        )
        self.spectral_context_attention = SpaiSpectralContextAttention(
            feature_dim, config.sca_hidden_size, config.sca_num_heads, config.layer_norm_eps
        )
        self.classifier = SpaiClassificationHead(feature_dim, config.head_mlp_ratio, config.classifier_dropout)
        self.peft_row_sample_index: torch.Tensor | None = None
        self.post_init()

    @classmethod
    def from_clip_pretrained(cls, name_or_path: str, **config_overrides) -> SpaiForImageClassification:
        """Build the CLIP variant around a pretrained CLIP vision tower, with freshly initialised SPAI heads.

        ``name_or_path``: a Hub id such as ``"openai/clip-vit-base-patch16"`` or a local folder holding a
        ``CLIPVisionModel`` or a full ``CLIPModel`` checkpoint. ``config_overrides`` go to `SpaiConfig`
        (``patch_size`` defaults to the tower's image size). The released spai.pth heads were trained on ViT
        features and are deliberately not reused here: train the heads (and adapters) on this model.
        """
        tower_config = AutoConfig.from_pretrained(name_or_path)
        if tower_config.model_type == "clip":
            tower_config = tower_config.vision_config
        if tower_config.model_type != "clip_vision_model":
            raise ValueError(f"{name_or_path} is not a CLIP checkpoint (model_type={tower_config.model_type!r})")
        tower, info = CLIPVisionModel.from_pretrained(name_or_path, config=tower_config, output_loading_info=True)
        if info["missing_keys"] or info["mismatched_keys"]:
            raise ValueError(f"{name_or_path}: incomplete CLIP vision tower: {info}")
        config_overrides.setdefault("patch_size", tower_config.image_size)
        config_overrides.setdefault("patch_stride", config_overrides["patch_size"])
        model = cls(SpaiConfig(backbone_config=tower_config, **config_overrides))
        tower_state = {k: v for k, v in tower.state_dict().items() if not k.startswith("post_layernorm.")}
        model.backbone.load_state_dict(tower_state, strict=True)
        return model

    def forward(
        self,
        pixel_values: torch.Tensor | list[torch.Tensor],
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        repeat_per_image: int = 1,
        **kwargs,
    ) -> SpaiImageClassifierOutput | tuple:
        r"""
        pixel_values: a (B, 3, H, W) tensor or a list of (3, H, W) tensors of any sizes >= patch_size, RGB values in
            [0, 1] as `SpaiImageProcessor` returns them (normalisation happens inside, after the spectral split).
        labels: (B,) or (B * repeat_per_image,) with 1 = AI-generated, 0 = real; gives a BCE-with-logits loss.
        repeat_per_image: score every image this many times (output rows image-major: row i * n + j); the
            decoding, patching and spectral filtering run once per image, only the backbone rows are repeated,
            so row-routed adapters (mixed ``adapter_names``) can score one image several ways.

        In eval mode the forward runs under `torch.inference_mode`; in training mode it is differentiable.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        if repeat_per_image < 1:
            raise ValueError(f"repeat_per_image must be >= 1, got {repeat_per_image}")
        images = self._as_image_list(pixel_values)
        layouts = [layout_patches(img.shape[-2], img.shape[-1], *self._patching_args()) for img in images]
        with torch.inference_mode(not self.training):
            features, mask = self._patch_features(images, layouts, repeat_per_image)
            pooled, weights = self.spectral_context_attention(features, mask)
            logits = self.classifier(pooled).float()
        loss = None
        if labels is not None:
            targets = labels.to(logits.device).float().view(-1)
            if targets.numel() == len(images) and repeat_per_image > 1:
                targets = targets.repeat_interleave(repeat_per_image)
            loss = F.binary_cross_entropy_with_logits(logits.view(-1), targets)
        attentions = head_attentions = boxes = None
        if output_attentions:
            lengths = [layout.num_patches for layout in layouts for _ in range(repeat_per_image)]
            head_attentions = tuple(w[:, :n] for w, n in zip(weights, lengths))
            attentions = tuple(w.mean(dim=0) for w in head_attentions)
            boxes = tuple(boxes_tensor(layout) for layout in layouts for _ in range(repeat_per_image))
        output = SpaiImageClassifierOutput(
            loss=loss, logits=logits, attentions=attentions, head_attentions=head_attentions, patch_boxes=boxes
        )
        return output if return_dict else output.to_tuple()

    def _patching_args(self) -> tuple[int, int, int]:
        return self.config.patch_size, self.config.patch_stride, self.config.minimum_patches

    @staticmethod
    def _as_image_list(pixel_values) -> list[torch.Tensor]:
        if isinstance(pixel_values, torch.Tensor):
            pixel_values = [pixel_values]
        images = []
        for item in pixel_values:
            if not isinstance(item, torch.Tensor) or item.dim() not in (3, 4):
                raise ValueError("pixel_values must be a (B, 3, H, W) tensor or a list of (3, H, W) tensors")
            images.extend(item.unbind(0) if item.dim() == 4 else [item])
        if not images:
            raise ValueError("pixel_values holds no image")
        for image in images:
            if image.shape[0] != 3:
                raise ValueError(f"expected 3 channels (RGB), got an image of shape {tuple(image.shape)}")
        return images

    def _compute_context(self, device: torch.device):
        """bfloat16 autocast for the backbone and projectors when ``config.compute_dtype == "bfloat16"``."""
        if self.config.compute_dtype == "bfloat16":
            if device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
                logger.warning_once("compute_dtype='bfloat16': no native bf16 matmul on this CPU, expect it slower")
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _patch_features(
        self, images: list[torch.Tensor], layouts: list[PatchLayout], repeat: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch vectors of every scored sample, padded: (B * repeat, max patches, C) and its validity mask."""
        device = self.spectral_filter.frequency_mask.device
        units = [(b, box) for b, layout in enumerate(layouts) for box in layout.unique_boxes]
        per_call = max(1, self.config.max_patches_per_forward // 3)
        total = len(units) * repeat
        chunks = []
        for start in range(0, total, per_call):
            pair = torch.arange(start, min(start + per_call, total))
            first, last = start // repeat, (int(pair[-1]) // repeat) + 1
            size = self.config.patch_size
            patches = torch.stack([crop_patch(images[b], box, size) for b, box in units[first:last]]).to(device)
            views = self.spectral_filter(patches)
            if repeat > 1:
                views = views[:, (pair // repeat - first).to(device)]
            owners = torch.tensor([units[u][0] for u in (pair // repeat).tolist()])
            sample_index = (owners * repeat + pair % repeat).repeat(3).to(device)
            chunks.append(self._encode_views(views.flatten(0, 1), sample_index))
        unit_features = torch.cat(chunks)

        # Gather each sample's patches (duplicates included) into a padded batch.
        offsets, start = [], 0
        for layout in layouts:
            offsets.append(start)
            start += len(layout.unique_boxes)
        longest = max(layout.num_patches for layout in layouts)
        index = torch.zeros(len(layouts) * repeat, longest, dtype=torch.long)
        mask = torch.zeros(len(layouts) * repeat, longest, dtype=torch.bool)
        for b, layout in enumerate(layouts):
            unit = torch.tensor(layout.unique_index) + offsets[b]
            for j in range(repeat):
                index[b * repeat + j, : layout.num_patches] = unit * repeat + j
                mask[b * repeat + j, : layout.num_patches] = True
        features = unit_features[index.to(device)]
        return features.to(self.spectral_context_attention.to_kv.weight.dtype), mask.to(device)

    def _encode_views(self, views: torch.Tensor, sample_index: torch.Tensor) -> torch.Tensor:
        """(3M, 3, S, S) normalised views, view-major [original; low; high] -> (M, C) patch vectors."""
        rows = views.shape[0] // 3
        estimator = self.frequency_restoration
        similarity, branch = [], []
        self.peft_row_sample_index = sample_index
        try:
            with self._compute_context(views.device):
                for position, tokens in iter_layer_features(self.backbone, views, self.config.feature_layers):
                    projected = estimator.project(position, tokens)
                    with torch.autocast(views.device.type, enabled=False):
                        stats, branch_input = estimator.layer_statistics(projected.unflatten(0, (3, rows)))
                    similarity.append(stats)
                    branch.append(branch_input)
            self.peft_row_sample_index = sample_index[:rows]  # the branch runs on one row per patch
            return estimator.combine(torch.stack(similarity, dim=1), torch.stack(branch, dim=1))
        finally:
            self.peft_row_sample_index = None


__all__ = ["SpaiForImageClassification", "SpaiImageClassifierOutput", "SpaiPreTrainedModel"]
