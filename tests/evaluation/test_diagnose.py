"""`cgd diagnose`: NLL and entropy of the refined answer in three contexts, checked against a forward pass by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cgd_trainer.collator import CritiqueCollator
from cgd_trainer.commands.diagnose import run as cli_main
from cgd_trainer.evaluation.diagnose import (
    CONDITIONS,
    DiagnoseConfig,
    context_ids,
    diagnose,
    render_contexts,
    render_markdown,
    target_ids,
)
from cgd_trainer.templates import (
    NO_CRITIQUE_FOLLOW_UP,
    NO_CRITIQUE_INSTRUCTION,
    NO_CRITIQUE_TEMPLATE,
    QUESTION_INSTRUCTION,
    fill,
)
from cgd_trainer.templates import NO_CRITIQUE_INSTRUCTION as ATTEMPT_INSTRUCTION


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), "utf-8")
    return str(path)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text("utf-8").splitlines() if line.strip()]


def by_hand(model, context: list[int], target: list[int]) -> tuple[float, float]:
    """Mean NLL and entropy of `target` after `context`: one unpadded forward pass and a log-softmax."""
    with torch.no_grad():
        logits = model(torch.tensor([context + target])).logits[0]
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    nll = [-log_probs[len(context) - 1 + i, token].item() for i, token in enumerate(target)]
    entropy = [
        -(log_probs[len(context) - 1 + i].exp() * log_probs[len(context) - 1 + i]).sum().item()
        for i in range(len(target))
    ]
    return sum(nll) / len(nll), sum(entropy) / len(entropy)


@pytest.fixture(scope="module")
def chatml(tiny_dirs):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs["chatml"])
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["chatml"], dtype=torch.float32).eval()
    return model, tokenizer


def test_numbers_match_a_direct_computation(tmp_path, tiny_dirs, chatml, records):
    model, tokenizer = chatml
    data = write_jsonl(tmp_path / "cgd.jsonl", records[:3])
    config = DiagnoseConfig(model=tiny_dirs["chatml"], dataset=data, batch_size=2, output_dir=str(tmp_path / "out"))
    summary = diagnose(config)
    rows = read_jsonl(tmp_path / "out" / "diagnose_records.jsonl")
    assert summary["records"] == 3 and summary["layout"] == "single_turn" and len(rows) == 3

    for record, row in zip(records[:2], rows):
        question, initial = record["prompt"], record["initial_response"]
        # The three contexts, written out here independently of the module.
        texts = {
            "question": f"{QUESTION_INSTRUCTION}\n\n### Question\n{question}",
            "question+initial": f"{ATTEMPT_INSTRUCTION}\n\n### Question\n{question}\n\n"
            f"### Student's initial answer\n{initial}",
        }
        contexts = {
            name: tokenizer(
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
                ),
                add_special_tokens=False,
            )["input_ids"]
            for name, text in texts.items()
        }
        # The full CGD context: what training tokenizes before the refined answer (CritiqueCollator, TRL-style).
        collator = CritiqueCollator(processing_class=tokenizer)
        tokenized, _ = collator.tokenize(record, "single_turn")
        start = next(i for i, label in enumerate(tokenized["labels"]) if label != -100)
        contexts["question+initial+critique"] = tokenized["input_ids"][:start]
        target = tokenizer(record["refined_response"], add_special_tokens=False)["input_ids"]
        # The refined answer is tokenized the same alone as inside the training sequence.
        assert tokenized["input_ids"][start : start + len(target)] == target
        assert row["target_tokens"] == len(target)
        for condition in CONDITIONS:
            nll, entropy = by_hand(model, contexts[condition], target)
            assert row[condition]["context_tokens"] == len(contexts[condition])
            assert row[condition]["nll"] == pytest.approx(nll, abs=1e-4)
            assert row[condition]["entropy"] == pytest.approx(entropy, abs=1e-4)

    # Summary means are pooled over tokens; the reductions follow from them.
    tokens = [row["target_tokens"] for row in rows]
    for condition in CONDITIONS:
        pooled = sum(row[condition]["nll"] * n for row, n in zip(rows, tokens)) / sum(tokens)
        assert summary["conditions"][condition]["mean_nll"] == pytest.approx(pooled, abs=1e-6)
        per_record = sum(row[condition]["entropy"] for row in rows) / len(rows)
        assert summary["conditions"][condition]["mean_entropy_per_record"] == pytest.approx(per_record, abs=1e-6)
    before = summary["conditions"]["question+initial"]["mean_nll"]
    after = summary["conditions"]["question+initial+critique"]["mean_nll"]
    assert summary["critique_reduction"]["nll"]["absolute"] == pytest.approx(before - after)
    assert summary["critique_reduction"]["nll"]["relative"] == pytest.approx((before - after) / before)
    # The signed change the report prints: after - before, the opposite sign of the older `*_reduction` keys.
    change = summary["critique_change"]["nll"]
    assert (change["before"], change["after"]) == (before, after)
    assert change["absolute"] == pytest.approx(after - before)
    assert change["direction"] == ("higher" if after > before else "lower" if after < before else "unchanged")
    report = (tmp_path / "out" / "diagnose.md").read_text("utf-8")
    assert "| question+initial+critique |" in report and "## Change when the context grows" in report
    assert json.loads((tmp_path / "out" / "diagnose.json").read_text("utf-8"))["records"] == 3


@pytest.mark.parametrize("family,layout", [("chatml", "multi_turn"), ("llama3", "auto"), ("plain", "auto")])
def test_layouts_score_identical_targets(tmp_path, tiny_dirs, records, family, layout):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs[family])
    collator = CritiqueCollator(processing_class=tokenizer, layout=layout)
    resolved = collator.resolve_layout()
    record = records[1]
    contexts = render_contexts(record, collator, resolved)
    ids = {condition: context_ids(contexts[condition], tokenizer) for condition in CONDITIONS}
    # The CGD context is exactly the prompt CritiqueCollator tokenizes for training.
    prompt_ids, _ = collator.token_ids(collator.format(record, resolved), tokenizer)
    assert ids["question+initial+critique"] == prompt_ids
    # Shorter contexts are strictly shorter and keep the question; none holds the critique.
    assert len(ids["question"]) < len(ids["question+initial"]) < len(ids["question+initial+critique"])
    rendered = {c: json.dumps(contexts[c]) for c in CONDITIONS}
    assert all(json.dumps(record["prompt"])[1:-1] in text for text in rendered.values())
    critique = json.dumps(record["critique"])[1:-1]
    assert critique not in rendered["question"] and critique not in rendered["question+initial"]

    data = write_jsonl(tmp_path / "cgd.jsonl", records[:2])
    summary = cli_main(
        ["--model", tiny_dirs[family], "--dataset", data, "--layout", layout, "--output_dir", str(tmp_path / "out")]
    )
    assert summary["layout"] == resolved and summary["records"] == 2
    target = target_ids(record["refined_response"], tokenizer)
    row = read_jsonl(tmp_path / "out" / "diagnose_records.jsonl")[1]
    assert row["target_tokens"] == len(target)
    assert [row[c]["context_tokens"] for c in CONDITIONS] == [len(ids[c]) for c in CONDITIONS]


def test_builtin_demo_limits_and_bad_records(tmp_path, tiny_dirs, records):
    summary = diagnose(
        DiagnoseConfig(model=tiny_dirs["chatml"], max_records=2, max_length=440, output_dir=str(tmp_path / "demo"))
    )
    assert summary["dataset"] == "builtin:demo"
    assert (summary["records"], summary["skipped_too_long"]) == (1, 1)
    bad = [dict(records[0]), {k: v for k, v in records[1].items() if k != "critique"}]
    data = write_jsonl(tmp_path / "bad.jsonl", bad)
    with pytest.raises(ValueError, match="critique"):
        diagnose(DiagnoseConfig(model=tiny_dirs["chatml"], dataset=data, output_dir=str(tmp_path / "bad")))
    with pytest.raises(ValueError, match="Set `model`"):
        diagnose(DiagnoseConfig(dataset=data, output_dir=str(tmp_path / "none")))


def test_question_and_initial_context_is_the_no_critique_condition(records):
    # What `cgd diagnose` scores as (x, y') must be what the `no_critique` ablation trains on. The condition's user
    # turn is written out from the shared templates, as `cgd build` fills them.
    collator = CritiqueCollator()
    for record in records[:3]:
        expected = fill(
            NO_CRITIQUE_TEMPLATE,
            instruction=NO_CRITIQUE_INSTRUCTION,
            question=record["prompt"],
            initial_response=record["initial_response"],
        )
        contexts = render_contexts(record, collator, "single_turn")
        assert contexts["question+initial"] == [{"role": "user", "content": expected}]
        multi = render_contexts(record, collator, "multi_turn")["question+initial"]
        assert multi[-1] == {"role": "user", "content": NO_CRITIQUE_FOLLOW_UP}
        assert multi[-2] == {"role": "assistant", "content": record["initial_response"]}


def _diagnose_summary(nll: dict[str, float], entropy: dict[str, float]) -> dict:
    """What `diagnose` returns, with the given means per context (what the report reads, today's and older keys)."""
    conditions = {
        c: {"mean_nll": nll[c], "mean_entropy": entropy[c], "perplexity": math.exp(nll[c])} for c in CONDITIONS
    }
    summary = {"model": "m", "dataset": "d", "layout": "single_turn", "records": 3, "target_tokens": 30,
               "skipped_too_long": 0, "conditions": conditions}  # fmt: skip
    for key, before in (("critique", "question+initial"), ("context", "question")):
        for metric, means in (("nll", nll), ("entropy", entropy)):
            b, a = means[before], means["question+initial+critique"]
            summary.setdefault(f"{key}_reduction", {})[metric] = {"absolute": b - a, "relative": (b - a) / b}
            summary.setdefault(f"{key}_change", {})[metric] = {
                "before": b, "after": a, "absolute": a - b, "relative": (a - b) / b,
                "direction": "higher" if a > b else "lower" if a < b else "unchanged",
            }  # fmt: skip
    return summary


def test_report_signs_each_change_and_names_its_direction():
    """A critique that raises the refined answer's NLL (the untrained SmolLM2: 1.639 -> 1.692) reads as a rise."""
    nll = {"question": 1.900, "question+initial": 1.639, "question+initial+critique": 1.692}
    entropy = {"question": 2.0, "question+initial": 1.5, "question+initial+critique": 1.5}
    report = render_markdown(_diagnose_summary(nll, entropy))
    rows = {
        tuple(cell.strip() for cell in line.strip("|").split("|")[:2]): line
        for line in report.splitlines()
        if line.startswith("| critique") or line.startswith("| all")
    }
    critique = "critique (x, y' → x, y', c)"
    assert rows[critique, "nll"] == (f"| {critique} | nll | 1.639 | 1.692 | +0.053 | +3.2% | higher: more uncertain |")
    assert rows["all (x → x, y', c)", "nll"].endswith("| -0.208 | -10.9% | lower: less uncertain |")
    assert rows[critique, "entropy"].endswith("| +0.000 | +0.0% | unchanged |")
    assert "Reduction" not in report and "-3.2%" not in report
    assert "change = after − before" in report
