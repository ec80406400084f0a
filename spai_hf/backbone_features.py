"""Backbone -> per-layer token features (SPAI_SPEC.md section 4), one layer at a time.

The layers are run one by one so the caller can reduce each layer's tokens to a few statistics before the next
layer runs: the features of all layers of a chunk never exist at once.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from transformers import CLIPVisionModel, ViTModel


def build_backbone(config) -> nn.Module:
    """A ViTModel or CLIPVisionModel from ``config.backbone_config`` without the parts SPAI never uses.

    The final LayerNorm (ViT ``layernorm``, CLIP ``post_layernorm``) and the pooler are not part of the SPAI
    forward pass, so they are replaced by identities: their weights are neither stored nor loaded.
    """
    backbone_config = config.backbone_config
    if backbone_config.model_type == "vit":
        backbone = ViTModel(backbone_config, add_pooling_layer=False)
        backbone.layernorm = nn.Identity()
    else:
        backbone = CLIPVisionModel(backbone_config)
        backbone.post_layernorm = nn.Identity()
    return backbone


def backbone_layers(backbone: nn.Module) -> nn.ModuleList:
    """The transformer blocks of either backbone type."""
    return backbone.layers if isinstance(backbone, ViTModel) else backbone.encoder.layers


def iter_layer_features(
    backbone: nn.Module, pixel_values: torch.Tensor, feature_layers: list[int]
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(position in feature_layers, tokens)`` for each used layer, tokens (rows, L, D) without the cls token.

    ViT: the residual stream after the block (``hidden_states[i + 1]``), no final LayerNorm.
    CLIP: the output of the block's ``layer_norm2`` (the normalised MLP input), after ``pre_layrnorm``.
    Layers after the last used one are not run.
    """
    wanted = {layer: position for position, layer in enumerate(feature_layers)}
    last = max(feature_layers)
    layers = backbone_layers(backbone)
    if isinstance(backbone, ViTModel):
        hidden = backbone.embeddings(pixel_values.to(backbone.embeddings.patch_embeddings.projection.weight.dtype))
        for index, layer in enumerate(layers[: last + 1]):
            hidden = layer(hidden, None)
            if index in wanted:
                yield wanted[index], hidden[:, 1:]
        return
    hidden = backbone.pre_layrnorm(backbone.embeddings(pixel_values))
    captured: list[torch.Tensor] = []
    hooks = [
        layers[index].layer_norm2.register_forward_hook(lambda _module, _args, output: captured.append(output))
        for index in wanted
    ]
    try:
        for index, layer in enumerate(layers[: last + 1]):
            hidden = layer(hidden, None)
            if index in wanted:
                yield wanted[index], captured.pop()[:, 1:]
    finally:
        for hook in hooks:
            hook.remove()
