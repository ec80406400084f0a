"""SPAI (spectral AI-generated image detection) as a transformers model.

Importing this package registers the ``"spai"`` model type with `AutoConfig`, `AutoModelForImageClassification`
and `AutoImageProcessor`, so ``pipeline("image-classification", model=folder)`` works on a converted folder.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

from .configuration_spai import SpaiConfig
from .image_processing_spai import SpaiImageProcessor
from .modeling_spai import SpaiForImageClassification, SpaiImageClassifierOutput, SpaiPreTrainedModel

AutoConfig.register(SpaiConfig.model_type, SpaiConfig, exist_ok=True)
AutoModelForImageClassification.register(SpaiConfig, SpaiForImageClassification, exist_ok=True)
AutoImageProcessor.register(SpaiConfig, image_processor_classes={"pil": SpaiImageProcessor}, exist_ok=True)

__all__ = [
    "SpaiConfig",
    "SpaiForImageClassification",
    "SpaiImageClassifierOutput",
    "SpaiImageProcessor",
    "SpaiPreTrainedModel",
]
