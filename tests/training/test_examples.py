"""The training entry point: recipes, accelerate configs, examples/train.py launches, resume, the demo and its data."""

import json
import logging
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file

from cgd_trainer import CritiqueCollator, cli
from cgd_trainer.commands.parser import UsageError
from cgd_trainer.commands.train import (
    LaunchArguments,
    default_recipe,
    make_parser,
    parse,
    with_default_recipe,
    without_launch_flags,
)
from cgd_trainer.demo.problems import demo_data_path, generate_records, to_jsonl
from cgd_trainer.scripts.train import summarize
from helpers import launch, run_cgd

ROOT = Path(__file__).resolve().parents[2]
# The recipes and accelerate configs ship inside the package; examples/recipes/* and examples/accelerate_configs link
# there.
RECIPE_DIR = ROOT / "src" / "cgd_trainer" / "recipes"
RECIPES = sorted(path for path in RECIPE_DIR.glob("*/*.yaml") if path.parent.name != "accelerate_configs")
ACCELERATE_CONFIGS = sorted((ROOT / "examples" / "accelerate_configs").glob("*.yaml"))
# GPUs each paper-scale recipe assumes (its header comment says so), to check the global batch of 64; an entry by
# recipe name overrides the one by file name.
ASSUMED_GPUS = {"full.yaml": 8, "lora.yaml": 1, "qlora.yaml": 1, "qwen2.5-1.5b-instruct/full.yaml": 1}


def is_cpu_recipe(recipe: Path) -> bool:
    """The CPU recipes: `tiny/*` and the demo's real-student recipe (`*/toy.yaml`), quiet and unpacked."""
    return recipe.parent.name == "tiny" or recipe.name == "toy.yaml"


# Recipes that batch records instead of packing rows: the small-scale comparison of docs/replicate.md, where every
# condition must take the same number of steps.
RECORD_BATCHES = {"qwen2.5-1.5b-instruct/full.yaml"}


def _env():
    return dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
    )


def test_recipes_exist():
    names = {str(path.relative_to(RECIPE_DIR)) for path in RECIPES}
    for name in names:  # the repository's examples/ shows the very files the package ships
        assert (ROOT / "examples" / "recipes" / name).resolve() == (RECIPE_DIR / name).resolve()
    assert {
        "tiny/cpu.yaml",
        "tiny/toy.yaml",
        "llama-3.1-8b-instruct/full.yaml",
        "llama-3.1-8b-instruct/lora.yaml",
        "llama-3.1-8b-instruct/qlora.yaml",
        "qwen2.5-math-7b/full.yaml",
        "qwen2.5-math-7b/lora.yaml",
        "qwen2.5-math-7b/qlora.yaml",
        "qwen2.5-1.5b-instruct/full.yaml",
        "smollm2-135m-instruct/toy.yaml",
    } <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(RECIPE_DIR)))
def test_recipe_parses_with_the_train_parser(recipe, tmp_path):
    values = yaml.safe_load(recipe.read_text())
    # GPU recipes ask for bf16, which this CPU cannot do; the command line overrides it, as users may.
    overrides = ["--bf16", "false", "--use_cpu", "true", "--output_dir", str(tmp_path)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a shipped recipe parses without a warning (e.g. no deprecated setting)
        script, training, model, data, _ = make_parser().parse_args_and_config(
            args=["--config", str(recipe), *overrides], fail_with_unknown_args=True
        )
    assert model.model_name_or_path == values["model_name_or_path"]
    assert training.learning_rate == pytest.approx(values["learning_rate"])
    assert training.output_dir == str(tmp_path)
    if not is_cpu_recipe(recipe):
        name = str(recipe.relative_to(RECIPE_DIR))
        assert training.packing == (name not in RECORD_BATCHES) and training.max_length == values["max_length"]
        gpus = ASSUMED_GPUS.get(name, ASSUMED_GPUS[recipe.name])
        assert training.per_device_train_batch_size * training.gradient_accumulation_steps * gpus == 64
        assert f"{gpus} GPU" in recipe.read_text()
    if recipe.name == "full.yaml":
        assert training.learning_rate == 1e-6 and training.num_train_epochs == 1 and values["bf16"] is True
        assert model.attn_implementation == "flash_attention_2" and training.gradient_checkpointing
        assert "not published" in recipe.read_text().lower()
    if recipe.name == "qlora.yaml":
        assert model.load_in_4bit and model.use_peft
    if recipe.name == "lora.yaml":
        assert model.use_peft and not model.load_in_4bit


# The token each recipe's trained model must stop on, as its tokenizer and chat template define it (read from the
# models' tokenizer_config.json and chat templates): `eos_token` in the recipe when the tokenizer's own eos is not the
# end-of-turn token. Llama-3.1-8B-Instruct's tokenizer already ends on <|eot_id|>, Qwen2.5-1.5B-Instruct's on
# <|im_end|>; Qwen2.5-Math-7B's ends text with <|endoftext|> while its chat template closes turns with <|im_end|>.
STOP_TOKENS = {
    "Qwen/Qwen2.5-Math-7B": ("<|endoftext|>", "<|im_end|>"),
    "Qwen/Qwen2.5-1.5B-Instruct": ("<|im_end|>", "<|im_end|>"),
    "meta-llama/Llama-3.1-8B-Instruct": ("<|eot_id|>", "<|eot_id|>"),
    "builtin:tiny-chatml": ("<|im_end|>", "<|im_end|>"),
    "builtin:tiny-digits": ("<|im_end|>", "<|im_end|>"),
    "builtin:smollm2-135m-instruct": ("<|im_end|>", "<|im_end|>"),
}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(RECIPE_DIR)))
def test_recipe_stops_on_the_end_of_turn_token(recipe, tmp_path):
    overrides = ["--bf16", "false", "--use_cpu", "true", "--output_dir", str(tmp_path)]
    _, training, model, *_ = make_parser().parse_args_and_config(args=["--config", str(recipe), *overrides])
    tokenizer_eos, end_of_turn = STOP_TOKENS[model.model_name_or_path]
    assert (training.eos_token or tokenizer_eos) == end_of_turn


def test_saved_model_stops_on_the_end_of_turn_token(tmp_path, tokenizers, dataset):
    # A Qwen-base-like tokenizer (eos <|endoftext|>, ChatML template) trained with the recipes' `eos_token`: the saved
    # tokenizer and generation_config stop on <|im_end|>, which ends every trained refined answer.
    from transformers import AutoTokenizer, GenerationConfig

    from cgd_trainer import CGDTrainer
    from helpers import build_model, make_config

    tokenizer = AutoTokenizer.from_pretrained(_save_tokenizer(tokenizers["chatml"], tmp_path / "base"))
    tokenizer.eos_token = "<|endoftext|>"
    model = build_model(tokenizer, "chatml")
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    trainer = CGDTrainer(
        model=model,
        args=make_config(tmp_path, max_steps=1, eos_token="<|im_end|>"),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    example = trainer.train_dataset[0]
    trained = [t for t, label in zip(example["input_ids"], example["labels"]) if label != -100]
    assert im_end in trained[-2:]
    trainer.train()
    trainer.save_model(str(tmp_path / "trained"))
    saved = GenerationConfig.from_pretrained(tmp_path / "trained")
    stops = saved.eos_token_id if isinstance(saved.eos_token_id, list) else [saved.eos_token_id]
    assert stops[0] == im_end
    assert AutoTokenizer.from_pretrained(tmp_path / "trained").eos_token == "<|im_end|>"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(RECIPE_DIR)))
def test_paper_recipes_track_with_trackio_and_the_demo_stays_quiet(recipe, tmp_path):
    overrides = ["--bf16", "false", "--use_cpu", "true", "--output_dir", str(tmp_path)]
    _, training, *_ = make_parser().parse_args_and_config(args=["--config", str(recipe), *overrides])
    if is_cpu_recipe(recipe):
        assert training.report_to == []
    else:
        assert training.report_to == ["trackio"] and training.project == "cgd"
        assert training.run_name == f"{recipe.parent.name}-cgd-{recipe.stem}"


@pytest.mark.slow
def test_trackio_records_the_run_offline(tmp_path):
    # What the paper recipes log, on the demo: trackio's local store, no network.
    env = {**_env(), "TRACKIO_DIR": str(tmp_path / "trackio")}
    args = ["--max_steps", "2", "--logging_steps", "1", "--output_dir", str(tmp_path / "run")]
    args += ["--report_to", "trackio", "--project", "cgd-test", "--run_name", "tiny-cgd"]
    command = [sys.executable, "-m", "cgd_trainer.cli", "train", *args]
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    read = "s.SQLiteStorage.get_logs('cgd-test', 'tiny-cgd')"
    code = f"import json, trackio.sqlite_storage as s; print(json.dumps({read}, default=str))"
    logs = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    losses = [row["train/loss"] for row in json.loads(logs.stdout) if "train/loss" in row]
    assert len(losses) == 2 and all(loss > 0 for loss in losses), logs.stderr[-2000:]


def _save_tokenizer(tokenizer, path):
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("config", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_config_loads(config):
    loaded = load_config_from_file(str(config))
    expected = {
        "single_gpu.yaml": "NO",
        "multi_gpu.yaml": "MULTI_GPU",
        "zero2.yaml": "DEEPSPEED",
        "zero3.yaml": "DEEPSPEED",
        "fsdp2.yaml": "FSDP",
        "fsdp_qlora.yaml": "FSDP",
    }[config.name]
    assert str(loaded.distributed_type).split(".")[-1] == expected
    if config.name.startswith("zero"):
        assert loaded.deepspeed_config["zero_stage"] == int(config.name[4])
    if config.name == "fsdp2.yaml":
        assert loaded.fsdp_config["fsdp_version"] == 2


def test_all_accelerate_configs_shipped():
    assert {p.name for p in ACCELERATE_CONFIGS} == {
        "single_gpu.yaml",
        "multi_gpu.yaml",
        "zero2.yaml",
        "zero3.yaml",
        "fsdp2.yaml",
        "fsdp_qlora.yaml",
    }


def test_default_recipe_is_the_tiny_cpu_recipe():
    assert (ROOT / "examples" / "recipes" / "tiny" / "cpu.yaml").resolve() == Path(default_recipe()).resolve()
    assert with_default_recipe([]) == ["--config", default_recipe()]
    assert with_default_recipe(["--max_steps", "3"])[:2] == ["--config", default_recipe()]
    assert with_default_recipe(["--config", "x.yaml"]) == ["--config", "x.yaml"]
    assert with_default_recipe(["--model_name_or_path", "m"]) == ["--model_name_or_path", "m"]


def test_demo_data_is_deterministic_and_shipped():
    first, second = to_jsonl(generate_records()), to_jsonl(generate_records())
    assert first == second
    assert demo_data_path().read_bytes() == first.encode("utf-8")
    assert to_jsonl(generate_records(seed=1)) != first


def test_demo_records_are_valid_and_consistent():
    records = generate_records()
    collator = CritiqueCollator()
    verdicts = {"right": 0, "wrong": 0}
    for index, record in enumerate(records):
        collator.format(record, "single_turn", index=index)  # core validation
        verdict = record["critique"].rsplit("\n", 1)[-1]
        assert verdict == f"Conclusion: {record['verdict']}"
        verdicts[record["verdict"]] += 1
        assert record["refined_response"].endswith(f"\\boxed{{{record['reference_answer']}}}.")
        # A wrong draft really ends on a wrong number; a right one on the reference answer.
        final = record["initial_response"].rstrip(".").rsplit(" ", 1)[-1]
        assert (final == record["reference_answer"]) == (record["verdict"] == "right"), record
    assert len({r["id"] for r in records}) == len(records)
    assert 0.2 < verdicts["right"] / len(records) < 0.5


def _launch(command):
    return launch(command, _env(), ROOT)


def _accelerate():
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]


@pytest.mark.slow
def test_train_script_under_accelerate_launch(tmp_path):
    output = tmp_path / "demo"
    log = _launch(
        [
            *_accelerate(),
            "examples/train.py",
            "--max_steps",
            "3",
            "--per_device_train_batch_size",
            "4",
            "--output_dir",
            str(output),
            "--save_strategy",
            "no",
            "--logging_steps",
            "1",
        ]
    )
    assert "CGD training summary" in log and "records used: 256 (0 shortened to fit, 0 dropped)" in log
    assert "loss: " in log and "over 3 steps" in log and f"model saved to: {output}" in log
    assert (output / "model.safetensors").exists() and (output / "tokenizer.json").exists()
    card = (output / "README.md").read_text()
    assert "2505.11628" in card


@pytest.mark.slow
def test_train_script_under_torchrun_two_processes(tmp_path):
    output = tmp_path / "ddp"
    log = _launch(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",  # a free port: a fixed one may still be held by another run
            "--nproc_per_node",
            "2",
            "examples/train.py",
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "2",
            "--ddp_backend",
            "gloo",
            "--output_dir",
            str(output),
            "--save_strategy",
            "no",
        ]
    )
    assert log.count("CGD training summary") == 1  # printed by the main process only
    assert (output / "model.safetensors").exists()


def _losses(checkpoint: Path) -> dict[int, float]:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}


def _crash_after(output_dir: Path, step: int) -> None:
    """Leaves `output_dir` as a run killed after its checkpoint at `step`: later checkpoints gone, not finished."""
    for checkpoint in output_dir.glob("checkpoint-*"):
        if int(checkpoint.name.split("-")[1]) > step:
            shutil.rmtree(checkpoint)
    record = json.loads((output_dir / "cgd_run.json").read_text())
    (output_dir / "cgd_run.json").write_text(json.dumps({**record, "finished": False}))


@pytest.mark.slow
def test_resume_gives_the_same_loss_curve(tmp_path, caplog):
    common = [
        "examples/train.py",
        "--per_device_train_batch_size",
        "4",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--save_total_limit",
        "5",
        "--logging_steps",
        "1",
        "--lr_scheduler_type",
        "constant",
        "--warmup_steps",
        "0",
    ]
    # In this process: what is under test is the relaunch's decision and the resumed losses, not a launcher (the
    # launches are tested above).
    common = common[1:]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _train_here(*common, "--max_steps", "6", "--output_dir", str(straight))[0] == 0
    shutil.copytree(straight, resumed)
    _crash_after(resumed, step=4)
    with caplog.at_level(logging.WARNING, logger="cgd_trainer.runs"):
        assert _train_here(*common, "--max_steps", "6", "--output_dir", str(resumed))[0] == 0
    assert "Resuming from" in caplog.text and "checkpoint-4" in caplog.text
    expected, got = _losses(straight / "checkpoint-6"), _losses(resumed / "checkpoint-6")
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    assert [got[s] for s in range(1, 7)] == pytest.approx([expected[s] for s in range(1, 7)], rel=1e-5)


# What every `cgd inspect`/`cgd train` printed before: bitsandbytes' notice about its optional CPU kernels (peft
# imports bitsandbytes) and transformers 5.24's FutureWarning on `gradient_checkpointing` (TRL's configs set it).
LIBRARY_NOISE = ("No module named 'kernels'", "FutureWarning", "is deprecated")


def test_cgd_inspect_shows_records_and_no_library_noise(tmp_path):
    command = [sys.executable, "-m", "cgd_trainer.cli", "inspect", "--config", "tiny/cpu", "--count", "1"]
    run = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "=== record 0: kept" in run.stdout
    assert not [noise for noise in LIBRARY_NOISE if noise in run.stdout + run.stderr], run.stderr[-3000:]
    # Inspecting saves no model: the bar of saving the built-in tiny model (which it builds first) says nothing.
    assert "Writing model shards" not in run.stderr


def _train(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cgd_trainer.cli", "train", *args]
    return subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=600, cwd=ROOT)


def _train_here(*args: str) -> tuple[int, str]:
    """`cgd train` in this process (no launcher under test): its exit status and what it wrote to stderr."""
    code, _, err = run_cgd(["train", *args])
    return code, err


def _refused_here(result: tuple[int, str], *words: str) -> None:
    code, err = result
    assert code == 2 and "Traceback" not in err, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert all(word in line for word in words), line


def _refused(run: subprocess.CompletedProcess, *words: str) -> None:
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    line = run.stderr.strip().splitlines()[-1]
    assert all(word in line for word in words), line


@pytest.mark.slow
def test_a_finished_or_different_run_is_not_resumed(tmp_path):
    # Before, a relaunch "resumed" the finished run: it trained nothing, printed the old summary and ignored new flags.
    common = ["--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2", "--output_dir", str(tmp_path)]
    assert _train_here(*common)[0] == 0
    refusal = ("holds a finished run", "--overwrite_output_dir", "--output_dir")
    _refused_here(_train_here(*common), str(tmp_path), *refusal)
    _refused_here(_train_here(*common, "--learning_rate", "1e-3"), "learning_rate 0.003 -> 0.001")
    code, err = _train_here(*common, "--learning_rate", "1e-3", "--overwrite_output_dir", "true")
    assert code == 0, err[-2000:]
    assert json.loads((tmp_path / "cgd_run.json").read_text())["arguments"]["learning_rate"] == 1e-3


@pytest.mark.slow
def test_model_only_checkpoints_are_not_resumed_as_if_exact(tmp_path):
    # The paper recipes' `save_only_model: true`: a relaunch would restart the optimizer and the schedule.
    common = ["--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "5"]
    common += ["--save_only_model", "true", "--output_dir", str(tmp_path)]
    assert _train_here(*common)[0] == 0
    _crash_after(tmp_path, step=2)
    _refused_here(_train_here(*common), "model-only checkpoints", "save_only_model", "--resume_from_checkpoint")


def test_cli_usage(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "demo" in out
    assert cli.main(["nope"]) == 2
    assert "unknown command 'nope'" in capsys.readouterr().err


def test_cgd_console_script_is_declared():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'cgd = "cgd_trainer.cli:main"' in pyproject


def test_train_from_local_jsonl_file(tmp_path):
    # A local JSONL file as `dataset_name`, in-process, with an eval split from the recipe-style mixture.
    from cgd_trainer.commands.train import run as cli_main

    data = tmp_path / "records.jsonl"
    data.write_text(to_jsonl(generate_records(24)))
    trainer = cli_main(
        [
            "--dataset_name",
            str(data),
            "--model_name_or_path",
            "builtin:tiny-plain",
            "--max_steps",
            "1",
            "--output_dir",
            str(tmp_path / "out"),
            "--use_cpu",
            "true",
            "--bf16",
            "false",
            "--per_device_train_batch_size",
            "4",
            "--save_strategy",
            "no",
            "--report_to",
            "none",
            "--dtype",
            "float32",
        ]
    )
    assert trainer.cgd_stats["train"]["kept"] == 24
    assert trainer.cgd_collator.resolve_layout(trainer.processing_class) == "plain"
    # The summary counts trained tokens in Arrow; check it against a plain count.
    trained = sum(label != -100 for labels in trainer.train_dataset["labels"] for label in labels)
    assert f"trained tokens per epoch: {trained} " in summarize(trainer)


def test_eval_without_test_split_is_a_clear_error(tmp_path):
    from cgd_trainer.commands.train import run as cli_main

    with pytest.raises(ValueError, match="needs a 'test' split"):
        cli_main(["--max_steps", "1", "--eval_strategy", "steps", "--output_dir", str(tmp_path)])


def test_recipes_and_accelerate_configs_by_name(tmp_path):
    # A wheel install has no examples/ folder: shipped recipes are named without a path.
    overrides = ["--bf16", "false", "--use_cpu", "true", "--output_dir", str(tmp_path)]
    by_name = parse(["--config", "qwen2.5-math-7b/full", *overrides])
    by_path = parse(["--config", str(ROOT / "examples" / "recipes" / "qwen2.5-math-7b" / "full.yaml"), *overrides])
    assert by_name[1].learning_rate == by_path[1].learning_rate == 1e-6
    assert by_name[2].model_name_or_path == "Qwen/Qwen2.5-Math-7B"
    assert parse(["--config", "tiny/cpu.yaml"])[2].model_name_or_path == "builtin:tiny-chatml"
    with pytest.raises(UsageError, match=r"qwen2.5-math-7b/ful: no such file.*Did you mean `qwen2.5-math-7b/full`"):
        parse(["--config", "qwen2.5-math-7b/ful"])
    launch = parse(["--accelerate_config", "zero3", "--num_processes", "4", *overrides])[-1]
    assert launch.is_set() and launch.accelerate_args() == [
        "--config_file",
        str(RECIPE_DIR / "accelerate_configs" / "zero3.yaml"),
        "--num_processes",
        "4",
    ]
    with pytest.raises(UsageError, match="Did you mean `fsdp2`"):
        LaunchArguments(accelerate_config="fsdp3").accelerate_args()
    assert not parse(overrides)[-1].is_set()
    argv = ["--config", "x", "--num_processes", "2", "--accelerate_config=zero3", "--max_steps", "3"]
    assert without_launch_flags(argv) == ["--config", "x", "--max_steps", "3"]


@pytest.mark.slow
def test_cgd_train_launches_through_accelerate_and_passes_its_exit_status_on(tmp_path):
    common = ["--config", "tiny/cpu", "--num_processes", "1", "--max_steps", "2", "--save_strategy", "no"]
    common += ["--output_dir", str(tmp_path)]
    first = _train(*common)
    assert first.returncode == 0, first.stderr[-3000:]
    # Launched once: the launched script does not launch again.
    assert first.stderr.count("Running: accelerate launch --num_processes 1 -m cgd_trainer.scripts.train") == 1
    # Nothing of the libraries' noise the shipped recipe and imports once caused.
    assert not [noise for noise in LIBRARY_NOISE if noise in first.stderr], first.stderr[-3000:]
    assert "CGD training summary" in first.stdout and (tmp_path / "model.safetensors").exists()
    # The launched process refuses a finished run (here one without checkpoints): its status 2 reaches the caller.
    _refused(_train(*common), str(tmp_path), "holds a finished run", "--overwrite_output_dir")


@pytest.mark.slow
def test_fsdp2_config_on_cpu_trains_as_one_process_and_says_it_is_not_sharded(tmp_path):
    # accelerate 1.15 turns FSDP on for GPUs only: with the shipped fsdp2.yaml on a CPU the two processes run data
    # parallel. The run must still be right (same losses as one process with the same global batch) and say so.
    common = ["--max_steps", "3", "--learning_rate", "1e-3", "--lr_scheduler_type", "constant", "--warmup_steps", "0"]
    common += ["--save_strategy", "steps", "--save_steps", "3", "--logging_steps", "1"]
    fsdp = tmp_path / "fsdp2"
    log = _launch(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            "examples/accelerate_configs/fsdp2.yaml",
            "--num_processes",
            "2",
            "--mixed_precision",
            "no",
            "--main_process_port",
            "0",  # a free port, as a fixed one may still be held by another run
            "examples/train.py",
            *common,
            "--per_device_train_batch_size",
            "2",
            "--output_dir",
            str(fsdp),
        ]
    )
    assert "asks for FSDP, but accelerate runs this job as MULTI_CPU with 2 process(es)" in log
    single = tmp_path / "single"
    _launch(
        [
            *_accelerate(),
            "examples/train.py",
            *common,
            "--per_device_train_batch_size",
            "4",
            "--output_dir",
            str(single),
        ]
    )
    got, expected = _losses(fsdp / "checkpoint-3"), _losses(single / "checkpoint-3")
    assert sorted(got) == [1, 2, 3]
    assert [got[s] for s in (1, 2, 3)] == pytest.approx([expected[s] for s in (1, 2, 3)], rel=1e-5)
