"""cgd-trainer: Critique-Guided Distillation (arXiv 2505.11628) as an extension of Hugging Face TRL."""

from .collator import CritiqueCollator
from .config import CGDConfig
from .formatting import DEFAULT_CRITIQUE_TEMPLATE, DEFAULT_INSTRUCTION, DEFAULT_TEMPLATE
from .trainer import CGDTrainer

__version__ = "0.1.0"

__all__ = [
    "CGDConfig",
    "CGDTrainer",
    "CritiqueCollator",
    "DEFAULT_CRITIQUE_TEMPLATE",
    "DEFAULT_INSTRUCTION",
    "DEFAULT_TEMPLATE",
    "__version__",
]
