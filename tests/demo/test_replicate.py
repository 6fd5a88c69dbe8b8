"""The GPU comparison of docs/replicate.md: its pipeline, training and eval recipes parse with the commands' own
parsers, agree with each other, and the command sequence on the page is the one they describe (every condition of
`cgd build` trained once, each trained model evaluated under its condition's name)."""

import re
import shlex
from pathlib import Path

import pytest
import yaml

from cgd_trainer.commands.build import make_parser as build_parser
from cgd_trainer.commands.eval import make_parser as eval_parser
from cgd_trainer.commands.generate import make_parser as generate_parser
from cgd_trainer.commands.train import parse as parse_train
from cgd_trainer.conditions.config import CONDITIONS
from cgd_trainer.evaluation.benchmarks import resolve_benchmark
from cgd_trainer.evaluation.config import parse_models

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "replicate.md"
PIPELINE = ROOT / "examples" / "pipeline" / "replicate-qwen2.5-1.5b.yaml"
EVAL = ROOT / "examples" / "eval" / "replicate-qwen2.5-1.5b.yaml"
RECIPE = "qwen2.5-1.5b-instruct/full"
# GPU-only settings of the recipe, overridden so that it parses on this CPU (as a user may on a laptop).
CPU = ["--bf16", "false", "--use_cpu", "true"]


def documented_commands() -> list[list[str]]:
    """The `cgd ...` lines of the page's bash blocks, split as a shell would (continuation lines joined)."""
    text = DOC.read_text("utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["cgd"]:
                commands.append(words[1:])
    return commands


def by_command(name: str) -> list[list[str]]:
    return [words[1:] for words in documented_commands() if words[0] == name]


@pytest.fixture(scope="module")
def pipeline():
    (config,) = generate_parser().parse_args_and_config(args=["--config", str(PIPELINE)], fail_with_unknown_args=True)
    return config


@pytest.fixture(scope="module")
def evaluation():
    (config,) = eval_parser().parse_args_and_config(args=["--config", str(EVAL)], fail_with_unknown_args=True)
    return config


def test_the_page_runs_generate_build_train_eval_in_order():
    assert [words[0] for words in documented_commands()] == ["generate", "build", *["train"] * len(CONDITIONS), "eval"]
    assert by_command("generate") == [["--config", str(PIPELINE.relative_to(ROOT))]]
    assert by_command("eval") == [["--config", str(EVAL.relative_to(ROOT))]]


def test_pipeline_recipe_probes_the_trained_student_with_a_local_vllm_teacher(pipeline):
    _, _, model, *_ = parse_train(["--config", RECIPE, *CPU])
    assert pipeline.student_model == model.model_name_or_path
    assert pipeline.student_backend == pipeline.teacher_backend == "vllm"
    assert pipeline.teacher_model != pipeline.student_model
    assert pipeline.stages == ["probe", "critique", "refine"] and pipeline.temperature == 0.0
    assert pipeline.question_field and pipeline.reference_field  # the SFT condition needs the reference solutions
    # Stops are left to the library (the chat template's end of turn and the eos ids of each model).
    assert all(getattr(pipeline, f"{stage}_stop_token_ids") is None for stage in pipeline.stages)
    # The longest refine prompt (a draft and a critique at their full budgets) plus a full answer fits the engines.
    budgets = {stage: pipeline.sampling(stage).max_tokens for stage in pipeline.stages}
    assert budgets["probe"] + budgets["critique"] + budgets["refine"] < pipeline.max_model_len


def test_build_reads_the_generated_records_and_decontaminates_against_the_benchmarks(pipeline, evaluation):
    (argv,) = by_command("build")
    (config,) = build_parser().parse_args_and_config(args=argv, fail_with_unknown_args=True)
    assert Path(config.input) == Path(pipeline.output_dir) / "records.jsonl"
    assert list(config.conditions) == list(CONDITIONS)
    assert set(config.decontaminate) == set(evaluation.benchmarks)


def test_every_condition_is_trained_once_with_the_recipe_and_evaluated_under_its_name(evaluation):
    (build_argv,) = by_command("build")
    (build,) = build_parser().parse_args_and_config(args=build_argv)
    trained = {}
    for argv in by_command("train"):
        assert argv[:2] == ["--config", RECIPE]
        script, training, *_ = parse_train([*argv, *CPU])
        condition = Path(script.dataset_name).stem
        assert Path(script.dataset_name) == Path(build.output_dir) / f"{condition}.jsonl"
        assert training.run_name == f"qwen2.5-1.5b-instruct-{condition}"
        assert condition not in trained
        trained[condition] = training.output_dir
    assert sorted(trained) == sorted(CONDITIONS)
    models = {spec.label: spec.model for spec in parse_models(evaluation.models, evaluation.backend)}
    _, _, model, *_ = parse_train(["--config", RECIPE, *CPU])
    assert models == {"base": model.model_name_or_path, **trained}


def test_eval_recipe_uses_the_published_protocol_on_math500_and_gsm8k(evaluation):
    assert [resolve_benchmark(name).name for name in evaluation.benchmarks] == ["math500", "gsm8k"]
    assert evaluation.protocol == "harness" and evaluation.temperature == 0 and evaluation.num_samples == 1
    assert evaluation.backend == "vllm" and evaluation.max_new_tokens < evaluation.max_model_len


def test_recipe_defaults_are_the_cgd_run_of_the_page():
    script, training, model, *_ = parse_train(["--config", RECIPE, *CPU])
    (build_argv,) = by_command("build")
    (build,) = build_parser().parse_args_and_config(args=build_argv)
    assert Path(script.dataset_name) == Path(build.output_dir) / "cgd.jsonl"
    assert Path(training.output_dir).name == "cgd"
    # The same number of steps for every condition (batches of records, not packed rows), and float32 master weights
    # under bf16 autocast: in pure bf16 the paper's 1e-6 updates would round away.
    values = yaml.safe_load((ROOT / "src" / "cgd_trainer" / "recipes" / f"{RECIPE}.yaml").read_text("utf-8"))
    assert values["bf16"] is True and model.dtype == "float32"
    assert not training.packing


@pytest.mark.parametrize("condition", ["cgd", "sft"])
def test_recipe_trains_both_kinds_of_condition_set(condition, tmp_path):
    # The recipe's own settings (record batches, max length, CGD truncation, float32 weights, final model only) on a
    # CGD-column set and a prompt-completion set, with the tiny offline model in place of the 1.5B one.
    from cgd_trainer.commands.build import run as build
    from cgd_trainer.commands.train import run as train

    build(["--input", "builtin:demo", "--output_dir", str(tmp_path / "sets"), "--conditions", condition])
    output = tmp_path / "models" / condition
    trainer = train(
        ["--config", RECIPE, *CPU, "--dataset_name", str(tmp_path / "sets" / f"{condition}.jsonl")]
        + ["--output_dir", str(output), "--model_name_or_path", "builtin:tiny-chatml", "--attn_implementation", "sdpa"]
        + ["--max_steps", "1", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1"]
        + ["--report_to", "none", "--dataset_num_proc", "1"]
    )
    assert not trainer.args.packing and next(trainer.model.parameters()).dtype.itemsize == 4  # float32 weights
    assert (output / "model.safetensors").exists() and not list(output.glob("checkpoint-*"))
    assert sum(label != -100 for labels in trainer.train_dataset["labels"] for label in labels) > 0
