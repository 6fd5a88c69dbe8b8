"""Shared pieces of the benchmarks: synthetic CGD records with the paper's length mix, and a step timer."""

from __future__ import annotations

import logging
import random
import time
import warnings

from transformers import TrainerCallback

from cgd_trainer.demo.problems import generate_records

# Length ranges of the paper's data (WebInstruct questions, student drafts, teacher critiques and refinements), in
# tokens; the generator draws this many words, which the tiny tokenizer splits into about 1.5 tokens each.
PAPER_LENGTHS = {
    "prompt": (100, 300),
    "initial_response": (300, 1500),
    "critique": (300, 1500),
    "refined_response": (300, 2000),
}


def paper_like_records(n: int, seed: int = 0) -> list[dict]:
    """
    CGD records whose parts have the paper's length mix in words (from the demo records' vocabulary; about 1.5 tokens
    a word with the tiny tokenizer, so somewhat longer in tokens). The text is meaningless; the lengths matter.
    """
    rng = random.Random(seed)
    words = sorted({w for r in generate_records(64, seed=1) for w in r["refined_response"].split() if w.isalpha()})

    def text(bounds: tuple[int, int]) -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(*bounds)))

    return _assemble(n, text, "?")


def _assemble(n: int, text, question_end: str = "") -> list[dict]:
    # `n` records whose parts are drawn by `text(bounds)` with the paper's length ranges.
    records = []
    for index in range(n):
        record = {field: text(bounds) for field, bounds in PAPER_LENGTHS.items()}
        record["prompt"] = f"Question {index}: {record['prompt']}{question_end}"
        record["critique"] += "\nConclusion: wrong"
        records.append(record)
    return records


def maths_like_records(n: int, seed: int = 0) -> list[dict]:
    """
    CGD records with the paper's length mix in words, written like worked maths: sentences with numbers, inline
    LaTeX, step labels and line breaks, drawn from a pool so that 100K records are made in seconds. With a real
    vocabulary this gives about 1.5 tokens a word, near what real solutions give; the text is meaningless.
    """
    rng = random.Random(seed)
    words = sorted({w for r in generate_records(64, seed=1) for w in r["refined_response"].split() if w.isalpha()})
    forms = [
        lambda: f"Step {rng.randint(1, 12)}: {' '.join(rng.choices(words, k=rng.randint(4, 12)))}.",
        lambda: (
            f"We have ${rng.randint(2, 99)} \\times {rng.randint(2, 99)} = {rng.randint(100, 9999)}$, so "
            f"{' '.join(rng.choices(words, k=rng.randint(3, 8)))}."
        ),
        lambda: (
            f"Then $\\frac{{{rng.randint(1, 30)}}}{{{rng.randint(2, 40)}}} + x = {rng.randint(1, 99)}$ gives "
            f"$x = {rng.uniform(0, 50):.2f}$."
        ),
        lambda: (
            f"{' '.join(rng.choices(words, k=rng.randint(6, 16))).capitalize()}, which leaves {rng.randint(0, 500)}."
        ),
        lambda: f"The answer is $\\boxed{{{rng.randint(0, 999)}}}$.",
    ]
    pool = [rng.choice(forms)() + rng.choice([" ", " ", "\n", "\n\n"]) for _ in range(4096)]
    sizes = [len(sentence.split()) for sentence in pool]

    def text(bounds: tuple[int, int]) -> str:
        target, parts, count = rng.randint(*bounds), [], 0
        while count < target:
            k = rng.randrange(len(pool))
            parts.append(pool[k])
            count += sizes[k]
        return "".join(parts).strip()

    return _assemble(n, text)


def bench_config(output_dir: str, **overrides):
    """A `CGDConfig` for benchmarks: CPU, fp32, no checkpoints, logging or reporting; `overrides` win."""
    from cgd_trainer import CGDConfig

    settings = dict(
        output_dir=output_dir,
        bf16=False,
        use_cpu=True,
        report_to="none",
        gradient_checkpointing=False,
        save_strategy="no",
        logging_steps=1000,
        disable_tqdm=True,
        seed=0,
    )
    settings.update(overrides)
    return CGDConfig(**settings)


def quiet() -> None:
    """Silences progress bars and library logs so that only the benchmark's table is printed."""
    from datasets import disable_progress_bars
    from transformers.utils import logging as hf_logging

    disable_progress_bars()
    hf_logging.set_verbosity_error()
    # transformers 5.24 renamed `gradient_checkpointing`; the benchmarks keep the name that works on every 5.x.
    warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated", category=FutureWarning)
    logging.getLogger("cgd_trainer").setLevel(logging.ERROR)


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step; `sync` (e.g. `torch.cuda.synchronize`) runs at both ends."""

    def __init__(self, sync=None):
        self.times, self._start, self._sync = [], None, sync or (lambda: None)

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        self.times.append(time.perf_counter() - self._start)
