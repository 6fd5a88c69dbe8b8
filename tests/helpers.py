"""Tiny tokenizers, models and CGD records built locally, and the independent golden check of loss masks."""

from __future__ import annotations

import random
from collections.abc import Sequence

from cgd_trainer import CGDConfig
from cgd_trainer.demo import tiny
from cgd_trainer.demo.tiny import CHATML_TEMPLATE, CHATML_TRAINING_TEMPLATE  # noqa: F401  (re-exported for the tests)

# What follows the refined answer and is trained with it, per family.
TRAINED_SUFFIX = {"chatml": "<|im_end|>\n", "llama3": "<|eot_id|>", "plain": "</s>"}

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def make_records(n: int = 24, seed: int = 0, long_every: int = 0, filler: int = 0) -> list[dict]:
    """
    Deterministic arithmetic CGD records with a wrong or right initial answer, a critique and a refined answer.

    Args:
        n: Number of records.
        seed: Random seed.
        long_every: Every `long_every`-th record gets a very long initial answer and critique (0: none).
        filler: Extra explanatory sentences added to every refined answer.
    """
    rng = random.Random(seed)
    records = []
    for i in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        right = a + b
        wrong = right + rng.choice([-10, -1, 1, 10])
        correct = i % 3 == 0
        given = right if correct else wrong
        initial = f"Adding {a} and {b}: the units give {a % 10 + b % 10}, so the sum is {given}. Answer: {given}"
        if correct:
            critique = (
                f"The student added the units and the tens correctly and {a} + {b} = {right}.\nConclusion: right"
            )
        else:
            critique = (
                f"The student made a carrying mistake: {a} + {b} is {right}, not {wrong}. The tens were "
                f"added without the carry from the units.\nConclusion: wrong"
            )
        refined = (
            f"Record {i}. Units: {a % 10} + {b % 10} = {a % 10 + b % 10}. Tens: {a // 10} + {b // 10} plus the carry. "
            + " ".join(f"Check {NUMBER_WORDS[(i + k) % 10]} holds." for k in range(filler + i % 4))
            + f" So {a} + {b} = {right}, which is \\boxed{{{right}}}."
        )
        if long_every and i % long_every == long_every - 1:
            initial = initial + " " + " ".join(f"Step {k}: I keep adding digits." for k in range(60))
            critique = " ".join(f"Remark {k}: the tens column is off." for k in range(40)) + "\n" + critique
        records.append(
            {
                "prompt": f"Question {i}: what is {a} + {b}? Show your work.",
                "initial_response": initial,
                "critique": critique,
                "refined_response": refined,
                "verdict": "right" if correct else "wrong",
            }
        )
    return records


def _corpus() -> list[str]:
    texts = []
    for record in make_records(200, seed=123, long_every=5):
        texts.extend(record[key] for key in ("prompt", "initial_response", "critique", "refined_response"))
    from cgd_trainer.templates import (
        DEFAULT_CRITIQUE_TEMPLATE,
        DEFAULT_INSTRUCTION,
        DEFAULT_TEMPLATE,
        PLAIN_ANSWER_HEADER,
    )

    texts += [DEFAULT_INSTRUCTION, DEFAULT_TEMPLATE, DEFAULT_CRITIQUE_TEMPLATE, PLAIN_ANSWER_HEADER]
    texts += ["system user assistant You are a careful maths tutor.", "[...]"]
    return texts


def build_tokenizer(family: str, vocab_size: int = 700):
    """A tokenizer of the given family trained on the test records (see `cgd_trainer.demo.tiny`)."""
    return tiny.build_tokenizer(family, texts=_corpus(), vocab_size=vocab_size)


def build_model(tokenizer, family: str, seed: int = 0, hidden: int = 64):
    """A 2-layer model from config: Llama for the llama3 family, Qwen2 otherwise."""
    return tiny.build_model(tokenizer, family, hidden_size=hidden, seed=seed)


def token_starts(tokenizer, ids: Sequence[int]) -> tuple[str, list[int]]:
    """Decodes token by token; returns the text and the character offset where each token starts."""
    starts, pieces, position = [], [], 0
    for token in ids:
        piece = tokenizer.decode([token], skip_special_tokens=False)
        starts.append(position)
        pieces.append(piece)
        position += len(piece)
    return "".join(pieces), starts


def expected_labels(tokenizer, ids: Sequence[int], refined: str) -> list[int]:
    """Labels that train exactly the refined answer and everything after it (its end-of-turn text)."""
    text, starts = token_starts(tokenizer, ids)
    begin = text.rfind(refined)
    assert begin >= 0, f"refined answer not found in {text!r}"
    assert begin in starts, f"the refined answer does not start on a token boundary in {text!r}"
    return [token if start >= begin else -100 for token, start in zip(ids, starts)]


def check_segment(tokenizer, ids: Sequence[int], labels: Sequence[int], records: Sequence[dict], family: str):
    """
    Golden check of one example: exactly one record's refined answer + end-of-turn closes it, and the labels train
    that text and nothing else, token by token. Returns the index of the matched record.
    """
    ids, labels = [int(t) for t in ids], [int(t) for t in labels]
    text, _ = token_starts(tokenizer, ids)
    suffix = TRAINED_SUFFIX[family]
    matches = [i for i, record in enumerate(records) if text.endswith(record["refined_response"] + suffix)]
    assert len(matches) == 1, f"expected one record to end this example, got {matches}: {text[-200:]!r}"
    expected = expected_labels(tokenizer, ids, records[matches[0]]["refined_response"])
    # A padding-free collator also masks the first token of each sequence; it is context anyway.
    assert expected[0] == -100
    assert labels == expected, _diff(tokenizer, ids, labels, expected)
    trained = tokenizer.decode([t for t in labels if t != -100], skip_special_tokens=False)
    assert trained == records[matches[0]]["refined_response"] + suffix
    return matches[0]


def _diff(tokenizer, ids, labels, expected) -> str:
    rows = [
        f"{i}: {tokenizer.decode([t])!r} got={'T' if lab != -100 else '-'} want={'T' if exp != -100 else '-'}"
        for i, (t, lab, exp) in enumerate(zip(ids, labels, expected))
        if (lab != -100) != (exp != -100) or (lab != -100 and lab != exp)
    ]
    return "mask differs at:\n" + "\n".join(rows[:20])


def split_batch(batch: dict) -> list[tuple[list[int], list[int]]]:
    """Splits a collated batch (padded or padding-free) back into its examples."""
    segments = []
    if "attention_mask" in batch:
        for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
            n = int(mask.sum())
            assert mask[:n].all(), "expected right padding"
            assert (labels[n:] == -100).all(), "padding must not be trained"
            segments.append((ids[:n].tolist(), labels[:n].tolist()))
        return segments
    positions = batch["position_ids"][0].tolist()
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
    for begin, end in zip(starts, starts[1:]):
        segments.append((ids[begin:end], labels[begin:end]))
    return segments


def check_dataloader(trainer, records, family: str, dataloader=None) -> set[int]:
    """Golden-checks every example of every batch the trainer would train on; returns the records seen."""
    tokenizer = trainer.processing_class
    seen = set()
    for batch in dataloader if dataloader is not None else trainer.get_train_dataloader():
        for ids, labels in split_batch(batch):
            seen.add(check_segment(tokenizer, ids, labels, records, family))
    return seen


def make_config(tmp_path, **overrides) -> CGDConfig:
    """A CPU-friendly CGDConfig for tests."""
    settings = dict(
        output_dir=str(tmp_path / "out"),
        bf16=False,
        use_cpu=True,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        max_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        max_length=512,
        seed=0,
        disable_tqdm=True,
    )
    settings.update(overrides)
    return CGDConfig(**settings)


def run_cgd(argv: list[str]) -> tuple[int, str, str]:
    """
    The `cgd` console entry point run in this process (no launcher under test): its exit status, and what it printed
    to stdout and to stderr, log records included.
    """
    import contextlib
    import io
    import logging

    from cgd_trainer import cli

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    logging.getLogger().addHandler(handler)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(argv)
    finally:
        logging.getLogger().removeHandler(handler)
    return code, out.getvalue(), err.getvalue()


def _call(process, action: str, *args):
    import psutil

    try:
        return getattr(process, action)(*args)
    except psutil.NoSuchProcess:
        return []


def _stop_tree(root) -> list:
    """
    Stops `root` and every process under it, then kills them all. Each is stopped before its children are listed: a
    running parent could start another between the listing and the kill, and that one would be left running.
    """
    tree, found = [], [root]
    while found:
        for process in found:
            _call(process, "suspend")
        tree += found
        # The stopped processes stay alive, so one listing from the root reaches all of them (a listing per process
        # reads the whole process table each time).
        seen = set(tree)
        found = [child for child in _call(root, "children", True) if child not in seen]
    for process in tree:
        _call(process, "kill")
    return tree


def process_ended(process) -> bool:
    """Whether a process (a `psutil.Process` or a pid) is gone or a zombie, which holds no pipe, port or core."""
    import psutil

    try:
        return (process if isinstance(process, psutil.Process) else psutil.Process(process)).status() == "zombie"
    except psutil.NoSuchProcess:
        return True


def launch(command: list[str], env: dict, cwd=None, timeout: float = 540) -> str:
    """
    Runs a launcher (`torchrun`, `accelerate launch`, a script) and returns what it printed; fails the test on a
    non-zero exit, and on a timeout after killing the launcher and every process under it (torchrun starts each rank
    in a session of its own, and a hung rank would otherwise hold the output pipes, its port and a core). The default
    timeout is under the suite's 600 s per test, so that the launch is stopped and its output shown first.
    """
    import subprocess
    import time

    import psutil
    import pytest

    def stop() -> tuple[str, str]:
        try:
            tree = _stop_tree(psutil.Process(process.pid))
        except psutil.NoSuchProcess:  # already reaped
            tree = []
        out = process.communicate(timeout=60)
        # A killed process closes its pipes before it is done exiting: wait until each is gone or a zombie.
        deadline = time.monotonic() + 60
        while not all(map(process_ended, tree)) and time.monotonic() < deadline:
            time.sleep(0.05)
        return out

    pipe = subprocess.PIPE
    process = subprocess.Popen(command, stdout=pipe, stderr=pipe, text=True, env=env, cwd=cwd)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stdout, stderr = stop()
        pytest.fail(f"{' '.join(map(str, command))} ran past {timeout} s:\n{stdout[-3000:]}{stderr[-3000:]}")
    except BaseException:  # pytest-timeout's failure or ^C: the launch must not outlive the test either
        stop()
        raise
    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return stdout + stderr
