"""`cgd eval`: pass@k, drift metrics, benchmarks, transformers and openai backends end to end, checkpoint selection."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from PIL import Image

from cgd_trainer.backends import Backend, OpenAIBackend, Reply, Request
from cgd_trainer.commands import eval as eval_command
from cgd_trainer.commands.eval import run as cli_main
from cgd_trainer.evaluation import (
    EvalConfig,
    check_selection_set,
    drift_metrics,
    find_checkpoints,
    load_problems,
    normalize_gold,
    parse_models,
    pass_at_k,
    resolve_benchmark,
    score_samples,
)
from cgd_trainer.evaluation import runner as ev
from cgd_trainer.evaluation.config import DEFAULT_SYSTEM_PROMPT, backend_options
from helpers import build_model

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "examples" / "eval").glob("*.yaml"))
FIXTURES = Path(__file__).parents[1] / "fixtures"
MINI = str(FIXTURES / "mini_math.jsonl")
HELDOUT = str(FIXTURES / "mini_heldout.jsonl")
MINI_IDS = [json.loads(line)["id"] for line in Path(MINI).read_text("utf-8").splitlines()]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text("utf-8").splitlines() if line.strip()]


def check_png(path: Path) -> tuple[int, int]:
    assert Path(path).read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= 400 and image.height >= 300
        return image.size


# --- pass@k and per-sample scores ------------------------------------------------------------------------------------


def test_pass_at_k_by_hand():
    # n = 5 samples, c = 2 correct: 1 - C(3, k) / C(5, k).
    assert pass_at_k(5, 2, 1) == pytest.approx(1 - 3 / 5)  # 0.4
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 0.7
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)  # 0.9
    assert pass_at_k(5, 2, 4) == 1.0  # fewer than k wrong samples: a correct one is always drawn
    assert pass_at_k(5, 0, 3) == 0.0 and pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(1, 0, 1) == 0.0
    for bad in [(5, 6, 1), (5, 2, 0), (5, 2, 6)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_score_samples_by_hand():
    pattern = {"a": [True, False, True, False], "b": [False, False, False, True]}
    rows = [
        {"id": pid, "sample": j, "correct": hit, "error": None}
        for pid, hits in pattern.items()
        for j, hit in enumerate(hits)
    ]
    rows[1]["error"] = "boom"  # a failed sample is a wrong sample, and counted
    scores = score_samples(rows, ks=[1, 2, 4, 8])
    assert scores["problems"] == 2 and scores["samples_per_problem"] == 4
    assert scores["accuracy"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert scores["pass@k"]["1"] == pytest.approx(0.375)
    # a: 1 - C(2,2)/C(4,2) = 5/6; b: 1 - C(3,2)/C(4,2) = 1/2.
    assert scores["pass@k"]["2"] == pytest.approx((5 / 6 + 1 / 2) / 2)
    assert scores["pass@k"]["4"] == 1.0 and "8" not in scores["pass@k"]
    # Accuracy of sample index 0..3 over both problems: 0.5, 0, 0.5, 0.5.
    assert scores["sample_accuracy_mean"] == pytest.approx(0.375)
    assert scores["sample_accuracy_sd"] == pytest.approx(0.25)
    assert scores["failed_samples"] == 1 and scores["failed_problems"] == 1 and scores["correct_samples"] == 3
    assert score_samples([])["accuracy"] is None


# --- format drift ----------------------------------------------------------------------------------------------------


def test_drift_metrics_on_crafted_outputs():
    outputs = [
        r"Step 1: 12 * 12 = 144. So the answer is \boxed{144}.",  # a clean solution
        "Critique:\nThe student's answer skips the carry.\nConclusion: wrong",  # a critique, no box
        r"**Conclusion:** right" + "\n" + r"\boxed{3}",  # verdict line with markdown, and a box
        "I think the answer is correct, it is 5.",  # a judgement, no box
        "## Critique of the solution\nNothing to add.",  # header only
        None,  # failed generation: left out
    ]
    drift = drift_metrics(outputs)
    assert drift["outputs"] == 5 and drift["failed"] == 1
    assert drift["boxed_rate"] == pytest.approx(2 / 5)
    assert drift["critique_rate"] == pytest.approx(4 / 5)
    assert drift["critique_rates"] == pytest.approx(
        {"verdict_line": 2 / 5, "critique_header": 2 / 5, "student_reference": 1 / 5, "answer_judgement": 1 / 5}
    )
    texts = [o for o in outputs if o is not None]
    assert drift["mean_chars"] == pytest.approx(sum(map(len, texts)) / 5)
    assert drift["mean_words"] == pytest.approx(sum(len(t.split()) for t in texts) / 5)
    # Words that only look like a detector do not count.
    assert drift_metrics(["The conclusion: we get 4, so \\boxed{4}", "critiques aside"])["critique_rate"] == 0
    assert drift_metrics([None])["boxed_rate"] is None


# --- benchmarks, gold answers, models --------------------------------------------------------------------------------


def test_benchmark_resolution_and_gold_normalization(tmp_path):
    assert resolve_benchmark("MATH-500").path == "HuggingFaceH4/MATH-500"
    assert resolve_benchmark("aime24").split == "train" and resolve_benchmark("gsm8k").config == "main"
    assert resolve_benchmark("HuggingFaceH4/MATH-500").name == "math500"  # the hub id of a registry set
    custom = resolve_benchmark("someone/heldout:main@validation")
    assert (custom.path, custom.config, custom.split, custom.test) == ("someone/heldout", "main", "validation", False)
    local = resolve_benchmark(MINI)
    assert local.name == "mini_math" and local.local and not local.test
    with pytest.raises(ValueError, match="Unknown benchmark 'nonsense'"):
        resolve_benchmark("nonsense")
    assert normalize_gold("Natalia sold 48 clips ... #### 1,072") == "1072"
    assert normalize_gold(["(2, 3)"]) == "(2, 3)" and normalize_gold(["1", "2"]) == "1, 2"
    assert normalize_gold(27.0) == "27" and normalize_gold(None) == ""

    problems = load_problems(local)
    assert [p.id for p in problems] == MINI_IDS and all(p.gold_parsed is not None for p in problems)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "", "answer": "3"}\n', "utf-8")
    with pytest.raises(ValueError, match=r"row 1: the question column 'problem' is empty"):
        load_problems(resolve_benchmark(str(bad)))
    with pytest.raises(ValueError, match="no column 'query'"):
        load_problems(resolve_benchmark(str(bad), question_field="query"))


def test_models_and_config_validation():
    specs = parse_models(["org/Model-7B", "cgd=runs/out/checkpoint-10", {"model": "m", "label": "M", "x": 1}], "vllm")
    assert [(s.label, s.model, s.backend) for s in specs] == [
        ("Model-7B", "org/Model-7B", "vllm"),
        ("cgd", "runs/out/checkpoint-10", "vllm"),
        ("M", "m", "vllm"),
    ]
    assert specs[2].options == {"x": 1}
    with pytest.raises(ValueError, match="share the label"):
        parse_models(["a=x", "a=y"], "transformers")
    with pytest.raises(ValueError, match="needs a `model` key"):
        parse_models([{"label": "x"}], "transformers")
    vllm = EvalConfig(
        backend="vllm", dtype="bfloat16", max_model_len=12288, vllm_kwargs='{"enforce_eager": true}', seed=3
    )
    assert backend_options(vllm, "vllm") == {
        "prompt_format": "auto",
        "tensor_parallel_size": 1,
        "llm_kwargs": {
            "seed": 3,
            "trust_remote_code": False,
            "dtype": "bfloat16",
            "max_model_len": 12288,
            "enforce_eager": True,
        },
    }
    served = backend_options(
        EvalConfig(backend="openai", base_url="http://a/v1"), "openai", {"base_url": "http://b/v1"}
    )
    assert served["base_url"] == "http://b/v1" and served["api_key_env"] == "OPENAI_API_KEY"
    assert EvalConfig(temperature=0, num_samples=8).num_samples == 1  # greedy: one sample
    assert EvalConfig(temperature=0.6, num_samples=8).ks == [1, 2, 4, 8]
    with pytest.raises(ValueError, match="pass_k"):
        EvalConfig(temperature=0.6, num_samples=4, pass_k=[8])
    with pytest.raises(ValueError, match="backend"):
        EvalConfig(backend="nope")


def test_per_model_settings_reach_the_backend(tmp_path):
    # Per-model keys are setting names: `request_timeout` becomes the openai class's `timeout`.
    entry = {"model": "m", "backend": "openai", "base_url": "http://gpu2:8000/v1", "request_timeout": 60}
    config = EvalConfig(models=[entry], output_dir=str(tmp_path))
    (spec,) = parse_models(config.models, config.backend)
    backend = ev.open_backend(spec, config)
    assert isinstance(backend, OpenAIBackend)
    assert backend.timeout == 60 and backend.base_url == "http://gpu2:8000/v1"
    assert (backend.max_retries, backend.concurrency) == (config.max_retries, config.concurrency)


def test_misspelt_per_model_setting_is_refused_before_any_model_loads(tmp_path, monkeypatch):
    entry = {"model": "m", "backend": "openai", "request_timout": 60}
    with pytest.raises(
        ValueError, match=r"models\[0\]: `request_timout` .* Did you mean `request_timeout`\?"
    ) as error:
        EvalConfig(models=[entry])
    assert "Its settings are: prompt_format, base_url, api_key_env, concurrency" in str(error.value)

    def no_backend(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was checked")

    monkeypatch.setattr(ev, "make_backend", no_backend)
    config = tmp_path / "eval.yaml"
    config.write_text(
        "models:\n"
        "  - {model: a, label: a}\n"
        "  - {model: m, backend: openai, request_timout: 60}\n"
        f"benchmarks: [{MINI}]\n",
        "utf-8",
    )
    with pytest.raises(ValueError, match=r"models\[1\]: `request_timout`"):
        cli_main(["--config", str(config), "--output_dir", str(tmp_path / "out")])


def test_setting_of_another_backend_is_refused():
    with pytest.raises(ValueError, match=r"models\[0\]: `batch_size` is not a setting of the openai backend \(it is"):
        EvalConfig(models=[{"model": "m", "backend": "openai", "batch_size": 4}])
    with pytest.raises(ValueError, match=r"models\[1\]: `request_timeout` is not a setting of the transformers"):
        EvalConfig(models=["a", {"model": "m", "request_timeout": 60}])
    with pytest.raises(ValueError, match=r"models\[0\]: `backend` must be one of"):
        EvalConfig(models=[{"model": "m", "backend": "demo"}])


def test_prompts():
    question = "What is 1 + 1?"
    system, user = ev.build_prompt(question, EvalConfig(), chat=True)
    assert system == {"role": "system", "content": DEFAULT_SYSTEM_PROMPT} and user["content"] == question
    assert ev.build_prompt(question, EvalConfig(system_prompt=""), chat=True) == [
        {"role": "user", "content": question}
    ]
    (merged,) = ev.build_prompt(question, EvalConfig(instruction_in_user=True), chat=True)
    assert merged["content"] == f"{question}\n\n{DEFAULT_SYSTEM_PROMPT}"
    plain = ev.build_prompt(question, EvalConfig(completion_template="Q: {question}\nA:"), chat=False)
    assert plain == "Q: What is 1 + 1?\nA:"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.name)
def test_eval_recipes_parse(recipe, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "0")  # restored after the test; a recipe may set it
    (config,) = eval_command.make_parser().parse_args_and_config(args=["--config", str(recipe)])
    specs = parse_models(config.models, config.backend)
    assert specs and {spec.backend for spec in specs} == {config.backend}
    benchmarks = [resolve_benchmark(name) for name in config.benchmarks]
    if recipe.name.startswith(("llama", "qwen")):
        assert config.temperature == 0 and config.num_samples == 1
        assert {b.name for b in benchmarks} >= {"math500", "minerva", "gsm8k", "olympiadbench", "amc23"}
        # Qwen2.5-Math-7B: inside its 4,096-position window (prompt + new tokens), as the authors' vLLM run was.
        assert config.max_new_tokens == (8192 if recipe.name.startswith("llama") else 3584)
        assert config.max_model_len is None or config.max_new_tokens < config.max_model_len
    if config.checkpoints_dir:
        validation, forced = check_selection_set(config)
        assert not forced and not validation.test


def test_builtin_demo_benchmark(tiny_dirs, tmp_path):
    config = EvalConfig(
        models=[tiny_dirs["chatml"]],
        benchmarks=["builtin:demo"],
        max_problems=2,
        max_new_tokens=4,
        output_dir=str(tmp_path),
        plot=False,
    )
    summary = ev.evaluate(config)
    assert summary["benchmarks"][0]["source"] == "builtin:demo" and summary["benchmarks"][0]["problems"] == 2
    rows = read_jsonl(tmp_path / "samples.jsonl")
    assert sorted(r["id"] for r in rows) == ["demo-0000", "demo-0001"]
    assert {r["gold"] for r in rows} == {"52", "199"}


# --- a scripted backend: grading and reporting end to end with known outputs -----------------------------------------


class ScriptedBackend(Backend):
    """Answers each request from a script keyed by the problem id (the part of the request id after the slash)."""

    name = "scripted"

    def __init__(self, model: str, script: dict[str, list[str] | str], chat: bool = True) -> None:
        super().__init__(model, "auto" if chat else "completion")
        self.script = script
        self.seen: list[Request] = []

    def generate(self, requests: Sequence[Request]) -> Iterator[Reply]:
        for request in reversed(list(requests)):  # any order
            self.seen.append(request)
            answer = self.script.get(request.id.split("/", 1)[1], "no idea")
            if answer == "FAIL":
                yield Reply(request, error="RuntimeError: scripted failure")
                continue
            texts = answer if isinstance(answer, list) else [answer] * request.sampling.n
            yield Reply(request, texts=texts[: request.sampling.n])


GOOD = {
    "frac": r"She ate 6/8 of it, which is \boxed{\dfrac{3}{4}}.",
    "neg": r"3x = -15 so \boxed{-5}",
    "interval": r"Subtract 1: \boxed{[1, 5)}",
    "set": r"n^2 - n - 2 = 0 gives \boxed{\{2, -1\}}",
    "percent": r"10/40 is \boxed{25\%}",
    "units": r"2(7 + 3) = \boxed{20 \text{ cm}}",
    "int": r"\boxed{124}",  # wrong
    "sqrt": "FAIL",  # failed generation
}
CRITIC = {pid: "Critique: the student's answer is incorrect.\nConclusion: wrong" for pid in [*MINI_IDS, "0"]}


def install_scripts(monkeypatch, scripts: dict[str, dict], chat: bool = True) -> dict[str, ScriptedBackend]:
    made: dict[str, ScriptedBackend] = {}

    def fake_make_backend(kind, model, **options):
        made[model] = ScriptedBackend(model, scripts[Path(model).name if Path(model).exists() else model], chat)
        return made[model]

    monkeypatch.setattr(ev, "make_backend", fake_make_backend)
    return made


def test_grading_and_reports_end_to_end_with_known_outputs(tmp_path, monkeypatch):
    extra = tmp_path / "extra.jsonl"
    extra.write_text('{"problem": "2+2?", "answer": "4"}\n{"problem": "Name it.", "answer": "???"}\n', "utf-8")
    made = install_scripts(monkeypatch, {"good": {**GOOD, "0": r"\boxed{4}"}, "critic": CRITIC})
    out = tmp_path / "out"
    result = cli_main(["--models", "good", "critic", "--benchmarks", MINI, str(extra), "--output_dir", str(out)])
    summary = result["summary"]
    assert json.loads((out / "summary.json").read_text("utf-8")) == summary

    good, critic = summary["results"]["good"], summary["results"]["critic"]
    assert good["mini_math"]["accuracy"] == pytest.approx(6 / 8)
    assert good["mini_math"]["failed_samples"] == 1 and good["mini_math"]["problems"] == 8
    assert good["extra"]["accuracy"] == 1.0 and good["extra"]["problems"] == 1  # the ungradable one is excluded
    assert critic["mini_math"]["accuracy"] == 0.0
    assert summary["average"]["good"] == pytest.approx((6 / 8 + 1) / 2)
    info = {b["name"]: b for b in summary["benchmarks"]}
    assert (info["extra"]["problems"], info["extra"]["ungradable"], info["extra"]["ungradable_ids"]) == (1, 1, ["1"])
    assert len(made["good"].seen) == 9  # the ungradable problem is not even generated

    assert summary["drift"]["good"]["boxed_rate"] == 1.0 and summary["drift"]["good"]["failed"] == 1
    assert summary["drift"]["good"]["critique_rate"] == 0.0
    assert summary["drift"]["critic"]["critique_rate"] == 1.0 and summary["drift"]["critic"]["boxed_rate"] == 0.0

    rows = {(r["model"], r["id"]): r for r in read_jsonl(out / "samples.jsonl") if r["benchmark"] == "mini_math"}
    assert len(rows) == 16
    assert rows["good", "frac"]["extracted"] == r"\dfrac{3}{4}" and rows["good", "frac"]["correct"] is True
    assert rows["good", "int"]["correct"] is False and rows["good", "int"]["gold"] == "144"
    failed = rows["good", "sqrt"]
    assert failed["output"] is None and failed["correct"] is False and "scripted failure" in failed["error"]
    assert (
        rows["good", "neg"]["prompt"][0]["role"] == "system"
        and "\\boxed{}" in rows["good", "neg"]["prompt"][0]["content"]
    )
    assert rows["good", "neg"]["prompt"][1] == {"role": "user", "content": "Solve for x: 3x + 20 = 5."}

    report = (out / "report.md").read_text("utf-8")
    assert "| good | 75.0 | 100.0 | 87.5 |" in report
    assert "| critic | 0.0 | 0.0 | 0.0 |" in report
    assert "| extra | " in report and "| 1 | 1 | good: 0, critic: 0 |" in report
    assert "![accuracy per benchmark](accuracy.png)" in report
    check_png(out / "accuracy.png")


def test_sampled_pass_at_k_end_to_end(tmp_path, monkeypatch):
    script = {pid: [r"\boxed{0}"] * 4 for pid in MINI_IDS}
    script["int"] = [r"\boxed{144}", r"\boxed{1}", r"\boxed{144}", "none"]
    script["neg"] = [r"\boxed{1}", r"\boxed{1}", r"\boxed{1}", r"\boxed{-5}"]
    install_scripts(monkeypatch, {"sampler": script})
    config = EvalConfig(
        models=["sampler"], benchmarks=[MINI], temperature=0.7, num_samples=4, output_dir=str(tmp_path), plot=False
    )
    summary = ev.evaluate(config)
    scores = summary["results"]["sampler"]["mini_math"]
    assert scores["samples_per_problem"] == 4
    assert scores["pass@k"]["1"] == pytest.approx((2 / 4 + 1 / 4) / 8)
    assert scores["pass@k"]["2"] == pytest.approx((5 / 6 + 1 / 2) / 8)
    assert scores["pass@k"]["4"] == pytest.approx(2 / 8)
    per_index = [1 / 8, 0, 1 / 8, 1 / 8]
    assert scores["sample_accuracy_mean"] == pytest.approx(sum(per_index) / 4)
    mean = sum(per_index) / 4
    assert scores["sample_accuracy_sd"] == pytest.approx(math.sqrt(sum((p - mean) ** 2 for p in per_index) / 3))
    report = (tmp_path / "report.md").read_text("utf-8")
    assert "## Sampled pass@k" in report and "| sampler | mini_math | 9.4 ± 6.2 | 9.4 | 16.7 | 25.0 |" in report


def test_completion_prompt_for_base_models(monkeypatch, tmp_path):
    made = install_scripts(monkeypatch, {"base": GOOD}, chat=False)
    ev.evaluate(EvalConfig(models=["base"], benchmarks=[MINI], output_dir=str(tmp_path), plot=False))
    prompt = next(r.prompt for r in made["base"].seen if r.id.endswith("/neg"))
    assert made["base"].seen[0].messages is None
    assert prompt.startswith("Work through the problem") and "Problem:\nSolve for x: 3x + 20 = 5." in prompt
    assert prompt.endswith("Solution:\n")


# --- real models: the transformers backend, and the openai backend against `transformers serve` ----------------------


@pytest.fixture(scope="module")
def transformers_run(tiny_dirs, tmp_path_factory) -> Path:
    """`cgd eval` from a YAML config on the tiny ChatML model (chat) and the plain model (completion fallback)."""
    out = tmp_path_factory.mktemp("eval-transformers")
    config = out / "eval.yaml"
    config.write_text(
        "models:\n"
        f"  - {{model: {tiny_dirs['chatml']}, label: tiny-chat}}\n"
        f"  - tiny-base={tiny_dirs['plain']}\n"
        f"benchmarks: [{MINI}]\n"
        "max_new_tokens: 16\n"
        "batch_size: 4\n"
        f"output_dir: {out}\n",
        "utf-8",
    )
    cli_main(["--config", str(config)])
    return out


def test_transformers_backend_end_to_end(transformers_run):
    summary = json.loads((transformers_run / "summary.json").read_text("utf-8"))
    formats = {m["label"]: m["backend"]["prompt_format"] for m in summary["models"]}
    assert formats == {"tiny-chat": "chat", "tiny-base": "completion"}
    rows = read_jsonl(transformers_run / "samples.jsonl")
    assert len(rows) == 16 and all(isinstance(r["output"], str) and r["error"] is None for r in rows)
    chat = [r for r in rows if r["model"] == "tiny-chat"]
    base = [r for r in rows if r["model"] == "tiny-base"]
    assert all(r["prompt"][0]["role"] == "system" for r in chat)
    assert all(isinstance(r["prompt"], str) and "Problem:\n" in r["prompt"] for r in base)
    # A random tiny model writes no box: every answer is graded wrong, and that shows in the drift metrics.
    assert all(r["correct"] is False for r in rows)
    for label in formats:
        assert summary["results"][label]["mini_math"]["accuracy"] == 0.0
        assert summary["drift"][label]["outputs"] == 8 and summary["drift"][label]["mean_chars"] > 0
    report = (transformers_run / "report.md").read_text("utf-8")
    assert "| tiny-chat | 0.0 | 0.0 |" in report and "| tiny-base | 0.0 | 0.0 |" in report
    check_png(transformers_run / "accuracy.png")


def test_openai_backend_matches_transformers(served_tiny, transformers_run, tmp_path):
    base_url, model = served_tiny
    cli_main(
        [
            *("--models", f"served={model}", "--backend", "openai", "--base_url", base_url, "--concurrency", "4"),
            *("--benchmarks", MINI, "--max_new_tokens", "16", "--output_dir", str(tmp_path), "--plot", "false"),
        ]
    )
    remote = {r["id"]: r for r in read_jsonl(tmp_path / "samples.jsonl")}
    local = {r["id"]: r for r in read_jsonl(transformers_run / "samples.jsonl") if r["model"] == "tiny-chat"}
    assert set(remote) == set(local) == set(MINI_IDS)
    assert all(r["error"] is None for r in remote.values()), [r["error"] for r in remote.values()]
    assert all(remote[i]["prompt"] == local[i]["prompt"] for i in MINI_IDS)
    # Same weights, same chat template, greedy: the same tokens. `transformers serve` runs non-streaming chat replies
    # of Qwen2-type models through a response parser that trims whitespace around the content (here a trailing "\r"
    # on one problem), so texts are compared without their outer whitespace; grading ignores it too.
    assert {i: r["output"].strip() for i, r in remote.items()} == {i: r["output"].strip() for i, r in local.items()}
    assert {i: (r["extracted"], r["correct"]) for i, r in remote.items()} == {
        i: (r["extracted"], r["correct"]) for i, r in local.items()
    }


# --- checkpoint selection --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def training_dir(tmp_path_factory, tokenizers) -> Path:
    """A fake training output_dir: checkpoint-1, -2, -3 (different random weights), the final model, and clutter."""
    root = tmp_path_factory.mktemp("train-out")
    tokenizer = tokenizers["chatml"]
    for step in (1, 2, 3):
        build_model(tokenizer, "chatml", seed=step).save_pretrained(root / f"checkpoint-{step}")
        tokenizer.save_pretrained(root / f"checkpoint-{step}")
    build_model(tokenizer, "chatml", seed=3).save_pretrained(root)
    tokenizer.save_pretrained(root)
    (root / "runs").mkdir()
    (root / "checkpoint-9").mkdir()  # an interrupted save: no model in it
    return root


def test_find_checkpoints(training_dir, tmp_path):
    found = find_checkpoints(training_dir)
    assert [(c.label, c.step) for c in found] == [
        ("checkpoint-1", 1),
        ("checkpoint-2", 2),
        ("checkpoint-3", 3),
        ("final", None),
    ]
    assert [c.label for c in find_checkpoints(training_dir, include_final=False)][-1] == "checkpoint-3"
    with pytest.raises(ValueError, match="No `checkpoint-<step>` folder"):
        find_checkpoints(tmp_path)


def test_selection_refuses_test_benchmarks(training_dir):
    base = dict(checkpoints_dir=str(training_dir), benchmarks=[MINI])
    with pytest.raises(ValueError, match="needs a held-out validation set"):
        check_selection_set(EvalConfig(**base))
    with pytest.raises(ValueError, match="also a reported benchmark.*force_selection_on_test"):
        check_selection_set(EvalConfig(**base, selection_benchmark=MINI))
    for spec in ("math500", "HuggingFaceH4/MATH-500", "aime24"):
        with pytest.raises(ValueError, match="registry test benchmark"):
            check_selection_set(EvalConfig(**base, selection_benchmark=spec))
    with pytest.raises(ValueError, match="also a reported benchmark"):  # the same file, named another way
        check_selection_set(
            EvalConfig(**base, selection_benchmark=str(Path(MINI).parent / ".." / "fixtures" / "mini_math.jsonl"))
        )
    # A held-out file, or a train split of a registry dataset, is fine; a test set only with force.
    assert check_selection_set(EvalConfig(**base, selection_benchmark=HELDOUT)) == (resolve_benchmark(HELDOUT), False)
    assert check_selection_set(EvalConfig(**base, selection_benchmark="openai/gsm8k:main@train"))[1] is False
    forced = EvalConfig(**base, selection_benchmark="math500", force_selection_on_test=True)
    assert check_selection_set(forced)[1] is True
    # The refusal comes before any model is loaded (`benchmarks` defaults to math500, which is reported then).
    with pytest.raises(ValueError, match="'math500' is also a reported benchmark"):
        cli_main(["--checkpoints_dir", str(training_dir), "--selection_benchmark", "math500"])


def test_selection_prefers_accuracy_then_earlier_step(training_dir, tmp_path, monkeypatch):
    heldout = [json.loads(line)["reference"] for line in Path(HELDOUT).read_text("utf-8").splitlines()]
    right = {str(i): f"\\boxed{{{gold}}}" for i, gold in enumerate(heldout)}
    wrong = {str(i): r"\boxed{0}" for i in range(len(heldout))}
    three_of_four = {**right, "0": r"\boxed{0}"}
    scripts = {"checkpoint-1": {**wrong, "1": right["1"]}, "checkpoint-2": three_of_four}
    scripts.update({"checkpoint-3": three_of_four, training_dir.name: three_of_four})
    install_scripts(monkeypatch, scripts)
    config = EvalConfig(
        checkpoints_dir=str(training_dir),
        selection_benchmark=HELDOUT,
        benchmarks=[MINI],
        evaluate_selected=False,
        output_dir=str(tmp_path),
    )
    result = ev.run_eval(config)
    assert result["summary"] is None
    selection = result["selection"]
    assert [c["accuracy"] for c in selection["checkpoints"]] == [0.25, 0.75, 0.75, 0.75]
    assert selection["selected"]["label"] == "checkpoint-2"  # tie with checkpoint-3 and final: earlier step wins
    assert json.loads((tmp_path / "selection.json").read_text("utf-8")) == selection
    report = (tmp_path / "selection.md").read_text("utf-8")
    assert "Selected: **checkpoint-2**" in report and "| checkpoint-1 | 1 | 25.0 | 0 |  |" in report
    assert "![accuracy per checkpoint](selection.png)" in report
    check_png(tmp_path / "selection.png")


def test_selection_with_real_checkpoints(training_dir, tmp_path):
    out = tmp_path / "out"
    result = cli_main(
        [
            *("--checkpoints_dir", str(training_dir), "--selection_benchmark", HELDOUT, "--benchmarks", MINI),
            *("--max_new_tokens", "8", "--max_problems", "3", "--output_dir", str(out)),
        ]
    )
    selection = result["selection"]
    assert [c["label"] for c in selection["checkpoints"]] == ["checkpoint-1", "checkpoint-2", "checkpoint-3", "final"]
    assert selection["validation"]["problems"] == 3
    # The random tiny checkpoints all score 0: the tie goes to the earliest.
    assert selection["selected"]["label"] == "checkpoint-1"
    assert selection["selected"]["path"] == str(training_dir / "checkpoint-1")
    rows = read_jsonl(out / "selection_samples.jsonl")
    assert len(rows) == 12 and {r["benchmark"] for r in rows} == {"mini_heldout"}
    # Then the selected checkpoint is evaluated on the reported benchmark.
    summary = result["summary"]
    assert list(summary["results"]) == ["selected:checkpoint-1"]
    assert summary["results"]["selected:checkpoint-1"]["mini_math"]["problems"] == 3
    check_png(out / "selection.png")
    check_png(out / "accuracy.png")
