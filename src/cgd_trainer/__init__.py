"""cgd-trainer: Critique-Guided Distillation (arXiv 2505.11628) as an extension of Hugging Face TRL.

The public names are imported on first use (PEP 562), so that `import cgd_trainer` and the `cgd` command cost no
torch or TRL until a trainer is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "CGDConfig": "cgd_trainer.config",
    "CGDTrainer": "cgd_trainer.trainer",
    "CritiqueCollator": "cgd_trainer.collator",
    "DEFAULT_CRITIQUE_TEMPLATE": "cgd_trainer.templates",
    "DEFAULT_INSTRUCTION": "cgd_trainer.templates",
    "DEFAULT_TEMPLATE": "cgd_trainer.templates",
}

__all__ = [
    "CGDConfig",
    "CGDTrainer",
    "CritiqueCollator",
    "DEFAULT_CRITIQUE_TEMPLATE",
    "DEFAULT_INSTRUCTION",
    "DEFAULT_TEMPLATE",
    "__version__",
]

if TYPE_CHECKING:
    from .collator import CritiqueCollator
    from .config import CGDConfig
    from .templates import DEFAULT_CRITIQUE_TEMPLATE, DEFAULT_INSTRUCTION, DEFAULT_TEMPLATE
    from .trainer import CGDTrainer


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
