"""What the local backends (`transformers`, `vllm`) read from a model's own files: its stop tokens, its context length
and a fingerprint of its weights, config and tokenizer."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# A text the chat template cannot produce by itself, to find what it writes after an assistant message.
_MARKER = "\x1fcgd-end-of-turn-probe\x1f"


def end_of_turn_token(tokenizer) -> str | None:
    """
    The special token the chat template writes after an assistant message (`<|im_end|>` for ChatML, `<|eot_id|>` for
    Llama 3), or `None` when the tokenizer has no chat template or the template ends a turn with plain text.
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _MARKER}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # noqa: BLE001 - a template with rules of its own (alternation, system turn...): no default
        return None
    if not isinstance(text, str) or _MARKER not in text:
        return None
    rest = text[text.index(_MARKER) + len(_MARKER) :]
    ids = tokenizer(rest, add_special_tokens=False)["input_ids"] if rest else []
    if not ids:
        return None
    special = set(tokenizer.all_special_ids) | {
        index for index, token in getattr(tokenizer, "added_tokens_decoder", {}).items() if token.special
    }
    return tokenizer.convert_ids_to_tokens(ids[0]) if ids[0] in special else None


def model_stop_token_ids(tokenizer, generation_config: Any = None, chat: bool = True) -> tuple[int, ...]:
    """
    The token ids that end an answer: the chat template's end-of-turn token (when prompts use the template), the
    tokenizer's eos and every eos of the model's `generation_config`, in that order, without repeats.

    Qwen's base models have eos `<|endoftext|>` but end a chat turn with `<|im_end|>`; Llama 3.1 has
    `<|end_of_text|>` and `<|eot_id|>`: both must stop the answer, whatever the tokenizer calls its eos.
    """
    ids: list[int] = []
    if chat:
        token = end_of_turn_token(tokenizer)
        if token is not None:
            ids.append(tokenizer.convert_tokens_to_ids(token))
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    eos = getattr(generation_config, "eos_token_id", None)
    ids.extend([eos] if isinstance(eos, int) else list(eos or []))
    return tuple(dict.fromkeys(int(i) for i in ids))


def load_generation_config(model: str, trust_remote_code: bool = False):
    """The model's `generation_config.json`, or `None` when it has none."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None


def model_context_length(model: str, trust_remote_code: bool = False) -> int | None:
    """The model's context length from its config (`max_position_embeddings` and its variants), or `None`."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None
    config = getattr(config, "text_config", None) or config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


# The files that decide what a local model writes: weights, config, generation config and tokenizer. Training state
# (optimizer, scheduler, trainer_state.json) is left out: it does not change the outputs.
_MODEL_FILES = (
    "*.safetensors",
    "pytorch_model*.bin",
    "config.json",
    "adapter_config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template*",
    "vocab*",
    "merges.txt",
    "*.model",
    "*.tiktoken",
)
# Files up to this size are hashed whole; larger ones (weight shards) by size and `_SAMPLES` blocks spread over the
# file: a retrained model changes nearly every weight, and a 15 GB model is fingerprinted in well under a second.
_WHOLE = 16 * 1024 * 1024
_SAMPLES, _BLOCK = 64, 64 * 1024


def model_fingerprint(model: str) -> str | None:
    """
    A hash of a local model folder's weights, config and tokenizer files (contents, not names or dates: a copy has
    the same fingerprint, a retrained model in the same folder another one); `None` for a hub id.

    Weight files over 16 MiB are hashed by their size and 64 blocks of 64 KiB spread evenly over the file.
    """
    folder = Path(model)
    if not folder.is_dir():
        return None
    files = sorted({path for pattern in _MODEL_FILES for path in folder.glob(pattern) if path.is_file()})
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}\0{size}\0".encode())
        with open(path, "rb") as handle:
            if size <= _WHOLE:
                digest.update(handle.read())
                continue
            step = (size - _BLOCK) // (_SAMPLES - 1)
            for index in range(_SAMPLES):
                handle.seek(index * step)
                digest.update(handle.read(_BLOCK))
    return digest.hexdigest()[:16]


def free_accelerator_memory() -> None:
    """Returns cached GPU memory to the device once a model is dropped (no-op without CUDA or torch)."""
    import gc

    gc.collect()
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


__all__ = [
    "end_of_turn_token",
    "free_accelerator_memory",
    "load_generation_config",
    "model_context_length",
    "model_fingerprint",
    "model_stop_token_ids",
]
