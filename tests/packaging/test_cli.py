"""Exit statuses and errors of the `cgd` command, run as a real subprocess: 0 done, 2 a usage or configuration error
in one line without a traceback, 3 work left undone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cgd_trainer.demo.problems import generate_records
from cgd_trainer.errors import MissingDependency


def cgd(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cgd_trainer.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=300)


def assert_usage_error(run: subprocess.CompletedProcess, *words: str) -> str:
    assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
    assert "Traceback" not in run.stderr
    line = run.stderr.strip().splitlines()[-1]
    for word in words:
        assert word in line, line
    return line


def test_unknown_command_and_bad_flag_are_usage_errors():
    assert cgd("nope").returncode == 2
    run = cgd("build", "--input", "x.jsonl", "--output_dri", "out")
    assert_usage_error(run, "--output_dri", "--output_dir")


def test_a_missing_input_file_is_one_line(tmp_path):
    run = cgd("build", "--input", str(tmp_path / "missing.jsonl"), "--output_dir", str(tmp_path / "out"))
    assert_usage_error(run, "cgd build: error:", "missing.jsonl")


def test_a_typo_in_a_yaml_config_is_refused_with_a_suggestion(tmp_path):
    config = tmp_path / "pipeline.yaml"
    config.write_text("dataset_name: builtin:demo\nstudent_backend: demo\nteacher_backend: demo\nmax_recods: 3\n")
    run = cgd("generate", "--config", str(config), "--output_dir", str(tmp_path / "out"))
    assert_usage_error(run, "max_recods", "max_records")
    assert not (tmp_path / "out").exists()  # refused before any work


def test_a_bad_value_is_one_line(tmp_path):
    run = cgd("generate", "--student_backend", "vlm", "--output_dir", str(tmp_path))
    assert_usage_error(run, "student_backend", "vllm")


def write_questions(path: Path, questions: list[str]) -> None:
    path.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in questions), encoding="utf-8")


@pytest.fixture
def demo_args(tmp_path):
    return ["--student_backend", "demo", "--teacher_backend", "demo", "--output_dir", str(tmp_path / "data")]


def test_generate_exits_0_when_complete_and_3_when_work_is_left(tmp_path, demo_args):
    questions = [record["prompt"] for record in generate_records(4)]
    good = tmp_path / "good.jsonl"
    write_questions(good, questions)
    assert cgd("generate", "--dataset_name", str(good), *demo_args).returncode == 0

    # The demo teacher cannot answer a question outside its task: that request fails and the record is incomplete.
    mixed = tmp_path / "mixed.jsonl"
    write_questions(mixed, [*questions, "What is the capital of France?"])
    run = cgd("generate", "--dataset_name", str(mixed), *demo_args)
    assert run.returncode == 3, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and "Work left undone" in run.stderr
    summary = json.loads((tmp_path / "data" / "summary.json").read_text())
    assert summary["records"] == 4 and summary["failed"]["probe"] == 1


def test_build_and_train_help_exit_0():
    for command in ("build", "train", "demo"):
        run = cgd(command, "--help")
        assert run.returncode == 0, run.stderr[-2000:]
        assert "usage:" in run.stdout


def test_train_refuses_a_misspelt_recipe_key_or_flag_before_any_work(tmp_path):
    # TRL's parser used to drop `lerning_rate` without a word and train at the default rate.
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "env:\n  CGD_TEST_ENV: 'yes'\nmodel_name_or_path: builtin:tiny-chatml\ndataset_name: builtin:demo\n"
        f"output_dir: {tmp_path / 'run'}\nuse_cpu: true\nbf16: false\nlerning_rate: 0.5\n"
    )
    run = cgd("train", "--config", str(recipe))
    assert_usage_error(run, "lerning_rate", "learning_rate")
    run = cgd("train", "--config", str(recipe).replace("recipe", "missing"))
    assert_usage_error(run, "missing.yaml")
    recipe.write_text(recipe.read_text().replace("lerning_rate", "learning_rate"))
    run = cgd("train", "--config", str(recipe), "--max_stepz", "1")
    assert_usage_error(run, "--max_stepz", "--max_steps")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("raised", "status"),
    [
        (KeyError("a lookup the code got wrong"), None),  # a bug: the traceback is what finds it
        (ImportError("cannot import name 'x' from 'cgd_trainer.y'", name="cgd_trainer.y"), None),
        (AttributeError("'NoneType' object has no attribute 'z'"), None),
        (ModuleNotFoundError("No module named 'cgd_trainer.gone'", name="cgd_trainer.gone"), None),
        (ValueError("--max_records: at least 1, got 0."), 2),
        (MissingDependency("The `vllm` backend needs vLLM: pip install 'cgd-trainer[vllm]'."), 2),
    ],
    ids=["KeyError", "ImportError", "AttributeError", "own-module-missing", "ValueError", "MissingDependency"],
)
def test_only_user_mistakes_are_one_line_and_a_bug_keeps_its_traceback(monkeypatch, capsys, raised, status):
    from cgd_trainer import cli
    from cgd_trainer.commands import build

    def fails(argv):
        raise raised

    monkeypatch.setattr(build, "main", fails)
    if status is None:
        with pytest.raises(type(raised)):  # uncaught: Python prints the traceback and exits 1
            cli.main(["build"])
        return
    assert cli.main(["build"]) == status
    assert capsys.readouterr().err.strip() == f"cgd build: error: {raised}"


@pytest.mark.parametrize(
    "raised",
    [
        ModuleNotFoundError("No module named 'vllm'", name="vllm"),
        # What transformers raises for QLoRA without bitsandbytes: a plain ImportError, from its own code.
        ImportError("Using `bitsandbytes` 4-bit quantization requires bitsandbytes: `pip install -U bitsandbytes`"),
    ],
    ids=["module-not-found", "a-library-asks-for-it"],
)
def test_another_package_not_installed_is_one_line(monkeypatch, capsys, raised):
    from cgd_trainer import cli
    from cgd_trainer.commands import build

    def fails(argv):
        raise raised

    monkeypatch.setattr(build, "main", fails)
    assert cli.main(["build"]) == 2
    assert f"{raised} (a package this needs is not installed" in capsys.readouterr().err


def test_an_import_that_fails_in_the_package_code_is_a_bug(monkeypatch):
    # Raised by a module of the package itself (here its own `from x import y` of a name that is not there).
    from cgd_trainer import cli
    from cgd_trainer.commands import build

    def fails(argv):
        exec(compile("from cgd_trainer.templates import no_such_name", build.__file__, "exec"), {})

    monkeypatch.setattr(build, "main", fails)
    with pytest.raises(ImportError, match="no_such_name"):
        cli.main(["build"])


def test_a_missing_optional_dependency_is_one_line_naming_the_extra(monkeypatch):
    import builtins

    from cgd_trainer.evaluation import report

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(MissingDependency, match=r"cgd-trainer\[eval\].*plot: false"):
        report._pyplot()
