"""Model registry, architectures, pretrained weights and the model artifact format.

Importing this package registers every architecture; ``create_model(name, ...)`` builds one
and an unknown name fails with the list of valid ones.
"""

from idap.models import external, paper, small  # noqa: F401  (registers the architectures)
from idap.models.attention import HeadAttention, build_vit_b_16
from idap.models.create import create_model
from idap.models.registry import MODELS, ModelSpec, get_spec, list_models, register_model

__all__ = [
    "MODELS",
    "HeadAttention",
    "ModelSpec",
    "build_vit_b_16",
    "create_model",
    "get_spec",
    "list_models",
    "register_model",
]
