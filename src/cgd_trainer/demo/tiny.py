"""Tiny models built from config and tokenizers trained locally, for the offline demo, tests and benchmarks.

Nothing here downloads anything: the tokenizer is a byte-level BPE trained in a second on the demo records, shaped
like a real family (ChatML/Qwen-style, Llama-3-style header tokens, or a base tokenizer without a chat template).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# The same ChatML rendering with `{% generation %}` markers, for `assistant_only_loss`.
CHATML_TRAINING_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}{% generation %}{{- message['content'] + '<|im_end|>\\n' -}}{% endgeneration %}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

LLAMA3_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + "
    "'<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)

FAMILIES = ("chatml", "llama3", "plain")


def default_corpus() -> list[str]:
    """The demo records and the library's own wording: what the tiny tokenizer is trained on by default."""
    from ..templates import DEFAULT_CRITIQUE_TEMPLATE, DEFAULT_INSTRUCTION, DEFAULT_TEMPLATE, PLAIN_ANSWER_HEADER
    from .problems import generate_records

    texts = [DEFAULT_INSTRUCTION, DEFAULT_TEMPLATE, DEFAULT_CRITIQUE_TEMPLATE, PLAIN_ANSWER_HEADER, "[...]"]
    for record in generate_records(512, seed=7):
        texts.extend(record[key] for key in ("prompt", "initial_response", "critique", "refined_response"))
    return texts


def toy_corpus() -> list[str]:
    """The toy task's questions, drafts, critiques and answers, and the library's wording (`builtin:tiny-digits`)."""
    from ..templates import DEFAULT_CRITIQUE_TEMPLATE, DEFAULT_INSTRUCTION, DEFAULT_TEMPLATE
    from .problems import TOY_PROBLEMS, critique_of, draft_answer, refined_answer, solve_question, toy_questions

    texts = [DEFAULT_INSTRUCTION, DEFAULT_TEMPLATE, DEFAULT_CRITIQUE_TEMPLATE, "[...]"]
    for row in toy_questions("train")[: 40 * len(TOY_PROBLEMS)]:
        problem = solve_question(row["prompt"])
        texts.append(row["prompt"])
        texts.append(refined_answer(problem))
        for mistake in ("none", "product", "operation", "skip"):
            texts += [draft_answer(problem, mistake), critique_of(problem, mistake)]
    return texts


def build_tokenizer(
    family: str = "chatml", texts: Iterable[str] | None = None, vocab_size: int = 700, split_digits: bool = False
):
    """
    Trains a byte-level BPE tokenizer locally.

    Args:
        family (`str`, *optional*, defaults to `"chatml"`):
            `"chatml"` (Qwen-style `<|im_start|>`/`<|im_end|>`), `"llama3"` (header tokens, `<|eot_id|>`, a bos
            token in the template) or `"plain"` (no chat template; adds `<s>` like a base model's tokenizer).
        texts (`Iterable[str]`, *optional*):
            Training corpus; defaults to [`default_corpus`].
        vocab_size (`int`, *optional*, defaults to 700):
            Vocabulary size, special tokens included.
        split_digits (`bool`, *optional*, defaults to `False`):
            Whether every digit is a token of its own (as in Llama 3 and Qwen2.5 tokenizers), which makes
            arithmetic learnable for a small model.

    Returns:
        [`~transformers.PreTrainedTokenizerFast`]: The tokenizer, with its chat template for the chat families.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if family not in FAMILIES:
        raise ValueError(f"`family` must be one of {FAMILIES}, got {family!r}.")
    specials = {
        "chatml": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "llama3": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "plain": ["<s>", "</s>", "<pad>"],
    }[family]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if split_digits:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(list(texts) if texts is not None else default_corpus(), trainer=trainer)
    if family == "plain":
        bos = backend.token_to_id("<s>")
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
        )
        return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    if family == "chatml":
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>"
        )
        tokenizer.chat_template = CHATML_TEMPLATE
        return tokenizer
    # Like Llama 3, no pad token: TRL pads with the eos token.
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"
    )
    tokenizer.chat_template = LLAMA3_TEMPLATE
    return tokenizer


def build_model(tokenizer, family: str = "chatml", hidden_size: int = 64, num_layers: int = 2, seed: int = 0):
    """
    Builds a small causal LM from config: Llama for the `llama3` family, Qwen2 otherwise.

    Args:
        tokenizer: The tokenizer the model is for (sets the vocabulary size and special token ids).
        family (`str`, *optional*, defaults to `"chatml"`): The tokenizer family.
        hidden_size (`int`, *optional*, defaults to 64): Hidden size; the MLP is twice as wide.
        num_layers (`int`, *optional*, defaults to 2): Number of decoder layers.
        seed (`int`, *optional*, defaults to 0): Seed of the random initialization.

    Returns:
        [`~transformers.PreTrainedModel`]: The model, in float32 with sdpa attention.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    heads = max(4, hidden_size // 64)
    settings = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=4096,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    config = LlamaConfig(**settings) if family == "llama3" else Qwen2Config(**settings)
    config._attn_implementation = "sdpa"
    return (LlamaForCausalLM if family == "llama3" else Qwen2ForCausalLM)(config)


# The built-in model: small enough for a CPU, big enough that its loss visibly falls in the demo.
BUILTIN_SIZE = {"hidden_size": 128, "num_layers": 4}
# The built-in models by name (`builtin:tiny-<name>`): the tokenizer family and how the tokenizer is trained (a
# corpus function and options; the default corpus when none is given).
BUILTIN_TOKENIZERS = {
    "chatml": ("chatml", {}),
    "llama3": ("llama3", {}),
    "plain": ("plain", {}),
    "digits": ("chatml", {"corpus": toy_corpus, "vocab_size": 1000, "split_digits": True}),
}


def prepare_builtin_model(name: str, output_dir: str) -> str:
    """
    Builds a tiny model from config and a tokenizer trained locally, saved under `<output_dir>/base-model`.

    `builtin:tiny-chatml`, `builtin:tiny-llama3` and `builtin:tiny-plain` name the tokenizer family;
    `builtin:tiny-digits` is the ChatML model of the demo that learns, its tokenizer trained on the toy task
    ([`toy_corpus`]) with one token per digit. The build is
    deterministic and runs once: a folder from an earlier run (or another process) is reused. Reached through
    `cgd_trainer.sources.resolve_model`.

    Returns:
        `str`: The folder, usable as `model_name_or_path`.
    """
    from accelerate import PartialState

    key = name.removeprefix("builtin:").removeprefix("tiny-")
    if key not in BUILTIN_TOKENIZERS:
        names = [f"builtin:tiny-{k}" for k in BUILTIN_TOKENIZERS]
        raise ValueError(f"Unknown built-in model {name!r}; the built-in models are {names}.")
    family, options = BUILTIN_TOKENIZERS[key]
    options = dict(options)
    corpus = options.pop("corpus", None)
    path = Path(output_dir) / "base-model"
    with PartialState().main_process_first():
        if not (path / "config.json").exists():
            tokenizer = build_tokenizer(family, corpus() if corpus else None, **options)
            model = build_model(tokenizer, family, **BUILTIN_SIZE)
            with quiet_progress_bars():  # a one-file model: transformers' "Writing model shards" bar says nothing
                model.save_pretrained(path)
            tokenizer.save_pretrained(path)
    return str(path)


@contextmanager
def quiet_progress_bars():
    """Turns transformers' progress bars off for the duration, then back to how they were."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
