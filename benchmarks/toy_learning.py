"""Does a toy student trained on 2 CPU cores learn from CGD? Groundwork for a demo whose held-out accuracy moves.

The method in miniature, end to end, with no network:

1. A toy task with exact answers: "Mia has 7 marbles, finds 5 more, then gives 4 away. How many ...?" (digits 1-9),
   solved in two steps and boxed. The (a, b, c) triples are split once: held-out questions never occur in training
   (checked).
2. A base student: a small Qwen2-shaped model built from config with a digit-level tokenizer, pretrained on questions
   with imperfect answers (half of them hold a typical mistake: an addition slip, the wrong operation, a skipped step),
   as a weak pretrained student would be.
3. Its real drafts (greedy, on the fine-tuning questions), critiqued by a programmatic teacher that names the mistake
   and ends with the verdict line; the refined answer is the worked solution.
4. Fine-tuning from the base on the same records and budget, per condition: CGD (single_turn and multi_turn layouts)
   and SFT on the refined answers; then greedy accuracy on the held-out questions, asked alone, as at inference.

    python benchmarks/toy_learning.py                    # one seed, about 7 minutes on 2 cores
    python benchmarks/toy_learning.py --seeds 0 1 2 --finetune_lr 2e-4
    python benchmarks/toy_learning.py --seeds 0 1 2 --pretrain_formats general --pretrain_steps 700 \
        --finetune_steps 40 --finetune_lr 3e-4   # a sturdier base, a small CGD budget (about 3 minutes a seed)

Results and what they mean: docs/performance.md ("Toy-scale learning").
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import tempfile
import time

NAMES = ["Mia", "Leo", "Ava", "Noah", "Zara", "Omar"]
ITEMS = ["marbles", "cards", "shells", "stamps", "beads", "coins"]
BOXED = re.compile(r"\\boxed\{(-?\d+)\}")
CONDITIONS = ("cgd", "cgd_multi_turn", "sft")


def question(a: int, b: int, c: int, rng: random.Random) -> str:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    return f"{name} has {a} {item}, finds {b} more, then gives {c} away. How many {item} does {name} have now?"


def solution(a: int, b: int, c: int) -> str:
    total = a + b
    return f"{a} + {b} = {total}.\n{total} - {c} = {total - c}.\nSo the answer is \\boxed{{{total - c}}}."


def imperfect(a: int, b: int, c: int, rng: random.Random) -> str:
    """A pretraining answer: right half of the time, otherwise one typical mistake."""
    total = a + b
    kind = rng.choices(["right", "slip", "operation", "skip"], [2, 1, 1, 1])[0]
    if kind == "right":
        return solution(a, b, c)
    if kind == "slip":
        wrong = total + rng.choice([-1, 1])
        return f"{a} + {b} = {wrong}.\n{wrong} - {c} = {wrong - c}.\nSo the answer is \\boxed{{{wrong - c}}}."
    if kind == "operation":
        return f"{a} + {b} = {total}.\n{total} + {c} = {total + c}.\nSo the answer is \\boxed{{{total + c}}}."
    return f"{a} + {b} = {total}.\nSo the answer is \\boxed{{{total}}}."


def user_turn(text: str, form: str, rng: random.Random, pool: list[tuple[int, int, int]]) -> str:
    """A pretraining question in one of the base student's prompt forms (`general` pretraining mixes them)."""
    if form == "plain":
        return text
    other = rng.choice(pool)
    if form == "heading":
        return f"Solve this problem.\n\n### Question\n{text}"
    if form == "example":
        return f"### Example\n{question(*other, rng)}\n{solution(*other)}\n\n### Question\n{text}"
    if form == "notes":
        return f"### Question\n{text}\n\n### Notes\n{question(*other, rng)}"
    raise ValueError(f"unknown prompt form {form!r}")


# A real student has answered questions in many prompt shapes before it meets the CGD context; `general` pretraining
# gives the toy base some of that (none of the forms holds a draft or a critique).
PRETRAIN_FORMS = {"plain": ("plain",), "general": ("plain", "heading", "example", "notes")}


def critique(a: int, b: int, c: int, draft: str) -> str:
    """The teacher's critique of any draft: it names the mistake, then gives the verdict."""
    total = a + b
    boxes = BOXED.findall(draft)
    final = int(boxes[-1]) if boxes else None
    if final == total - c:
        return "Both steps are right and the answer is correct.\nConclusion: right"
    first = re.match(r"\s*(\d+) \+ (\d+) = (-?\d+)", draft)
    if first and int(first.group(3)) != total:
        return f"The first step is wrong: {a} + {b} is {total}, not {first.group(3)}.\nConclusion: wrong"
    if final == total + c:
        return f"The second step adds the {c} given away; they must be taken away.\nConclusion: wrong"
    if final == total:
        return f"The answer stops after the first step and never takes away the {c}.\nConclusion: wrong"
    return "The answer does not follow from the question.\nConclusion: wrong"


def build_tokenizer(texts: list[str]):
    """A byte-level BPE that splits numbers into digits, with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from cgd_trainer.demo.tiny import CHATML_TEMPLATE

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    backend.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def train(model, tokenizer, rows: list[dict], steps: int, lr: float, seed: int, layout: str = "auto") -> float:
    """Trains in place with `CGDTrainer` (CGD records, or prompt-completion rows for SFT); returns the seconds."""
    from datasets import Dataset

    from cgd_trainer import CGDConfig, CGDTrainer

    with tempfile.TemporaryDirectory() as output_dir:
        args = CGDConfig(
            output_dir=output_dir,
            bf16=False,
            use_cpu=True,
            per_device_train_batch_size=16,
            max_steps=steps,
            learning_rate=lr,
            lr_scheduler_type="cosine",
            warmup_steps=10,
            save_strategy="no",
            report_to="none",
            gradient_checkpointing=False,
            max_length=512,
            seed=seed,
            disable_tqdm=True,
            logging_steps=steps,
            cgd_layout=layout,
        )
        trainer = CGDTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
        started = time.time()
        trainer.train()
        return time.time() - started


def answer(model, tokenizer, questions: list[str]) -> list[str]:
    """Greedy answers to questions asked alone (a user turn), as at inference."""
    import torch

    model.eval()
    tokenizer.padding_side = "left"
    outputs = []
    for start in range(0, len(questions), 100):
        prompts = [
            tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in questions[start : start + 100]
        ]
        batch = tokenizer(prompts, return_tensors="pt", padding=True)
        with torch.no_grad():
            generated = model.generate(
                **batch, max_new_tokens=40, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        width = batch["input_ids"].shape[1]
        outputs += [tokenizer.decode(row[width:], skip_special_tokens=True) for row in generated]
    model.train()
    return outputs


def accuracy(outputs: list[str], triples: list[tuple[int, int, int]]) -> float:
    right = 0
    for output, (a, b, c) in zip(outputs, triples):
        boxes = BOXED.findall(output)
        right += bool(boxes and int(boxes[-1]) == a + b - c)
    return right / len(triples)


def run(seed: int, options: argparse.Namespace) -> dict[str, float]:
    """One seed: pretrain the base, probe it, fine-tune each condition from it, score everything on held-out."""
    import torch
    from transformers import AutoModelForCausalLM

    from cgd_trainer.demo.tiny import build_model

    torch.set_num_threads(2)
    rng = random.Random(seed)
    triples = [(a, b, c) for a in range(1, 10) for b in range(1, 10) for c in range(1, 10) if c <= a + b]
    rng.shuffle(triples)
    heldout, pool = triples[:150], triples[150:]
    assert not set(heldout) & set(pool), "held-out questions must not occur in training"
    pretraining = [rng.choice(pool) for _ in range(options.pretrain_records)]
    rows = [
        {
            "prompt": [
                {
                    "role": "user",
                    "content": question(*t, rng)
                    if options.pretrain_formats == "plain"
                    else user_turn(question(*t, rng), rng.choice(PRETRAIN_FORMS[options.pretrain_formats]), rng, pool),
                }
            ],
            "completion": [{"role": "assistant", "content": imperfect(*t, rng)}],
        }
        for t in pretraining
    ]
    corpus = [row["prompt"][0]["content"] + " " + row["completion"][0]["content"] for row in rows[:500]]
    corpus += [critique(1, 2, 3, draft) for draft in ("1 + 2 = 4.", "\\boxed{6}", "\\boxed{3}", "\\boxed{0}", "x")]
    tokenizer = build_tokenizer(corpus)
    base = build_model(tokenizer, "chatml", hidden_size=128, num_layers=4, seed=seed)
    train(base, tokenizer, rows, options.pretrain_steps, 3e-3, seed)
    heldout_questions = [question(*t, rng) for t in heldout]
    scores = {"base": accuracy(answer(base, tokenizer, heldout_questions), heldout)}

    finetuning = [rng.choice(pool) for _ in range(options.finetune_records)]
    questions = [question(*t, rng) for t in finetuning]
    drafts = answer(base, tokenizer, questions)
    records = [
        {"prompt": q, "initial_response": d, "critique": critique(*t, d), "refined_response": solution(*t)}
        for t, q, d in zip(finetuning, questions, drafts)
    ]
    scores["drafts"] = accuracy(drafts, finetuning)
    with tempfile.TemporaryDirectory() as folder:
        base.save_pretrained(folder)
        for condition in CONDITIONS:
            model = AutoModelForCausalLM.from_pretrained(folder)
            if condition == "sft":
                data = [
                    {
                        "prompt": [{"role": "user", "content": r["prompt"]}],
                        "completion": [{"role": "assistant", "content": r["refined_response"]}],
                    }
                    for r in records
                ]
            else:
                data = records
            layout = "multi_turn" if condition == "cgd_multi_turn" else "auto"
            seconds = train(model, tokenizer, data, options.finetune_steps, options.finetune_lr, seed, layout)
            scores[condition] = accuracy(answer(model, tokenizer, heldout_questions), heldout)
            scores[f"{condition}_seconds"] = seconds
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--pretrain_records", type=int, default=2000)
    parser.add_argument("--pretrain_formats", choices=sorted(PRETRAIN_FORMS), default="plain")
    parser.add_argument("--pretrain_steps", type=int, default=300)
    parser.add_argument("--finetune_records", type=int, default=600)
    parser.add_argument("--finetune_steps", type=int, default=300)
    parser.add_argument("--finetune_lr", type=float, default=1e-3)
    options = parser.parse_args()
    from datasets.utils.logging import disable_progress_bar
    from transformers.utils import logging as hf_logging

    disable_progress_bar()
    hf_logging.set_verbosity_error()
    runs = [run(seed, options) for seed in options.seeds]
    print(
        f"\nheld-out accuracy, {len(runs)} seed(s), {options.pretrain_formats} pretraining "
        f"({options.pretrain_steps} steps), fine-tuning {options.finetune_steps} steps at lr {options.finetune_lr}:"
    )
    for name in ("base", "drafts", *CONDITIONS):
        values = [r[name] for r in runs]
        spread = f" ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else ""
        seconds = (
            f"  ({statistics.fmean(r[f'{name}_seconds'] for r in runs):.0f} s training)" if name in CONDITIONS else ""
        )
        label = "base student's drafts (fine-tuning questions)" if name == "drafts" else name
        print(f"  {label:<46} {100 * statistics.fmean(values):5.1f}%{spread}{seconds}")


if __name__ == "__main__":
    main()
