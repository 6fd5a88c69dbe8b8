"""The wheel installs into a clean virtualenv (no extras) where `import cgd_trainer`, a short run, and launches by
recipe name (`accelerate launch -m cgd_trainer.scripts.train`, `cgd train --num_processes 1`) work."""

import shutil
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

RUN = textwrap.dedent(
    """
    import importlib.util, sys, tempfile
    sys.path.insert(0, {tests!r})
    import cgd_trainer
    assert cgd_trainer.__file__.startswith({prefix!r}), cgd_trainer.__file__
    assert importlib.util.find_spec("bitsandbytes") is None, "no extra should be installed"
    from cgd_trainer.demo.problems import demo_data_path, generate_records, to_jsonl
    assert demo_data_path().read_text(encoding="utf-8") == to_jsonl(generate_records()), "demo data missing"
    from datasets import Dataset
    from helpers import build_model, build_tokenizer, make_config, make_records
    from pathlib import Path
    tokenizer = build_tokenizer("chatml")
    trainer = cgd_trainer.CGDTrainer(
        model=build_model(tokenizer, "chatml"),
        args=make_config(Path(tempfile.mkdtemp()), max_steps=2),
        train_dataset=Dataset.from_list(make_records(8)),
        processing_class=tokenizer,
    )
    print("loss", trainer.train().training_loss)
    """
)


LIST_SHIPPED = (
    "from cgd_trainer.commands.recipes import accelerate_config_names, recipe_names; "
    "print(*recipe_names(), *accelerate_config_names())"
)


@pytest.mark.slow
def test_wheel_installs_and_trains_in_a_clean_venv(tmp_path):
    # Built from a copy of the tracked files: a build in the clone writes build/ and src/cgd_trainer.egg-info, and
    # the second would be seen as another installed cgd-trainer by the tests running beside this one.
    source, dist = tmp_path / "source", tmp_path / "dist"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    for name in filter(None, tracked.split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(source)], check=True, capture_output=True
    )
    (wheel,) = dist.glob("cgd_trainer-*.whl")
    env_dir = tmp_path / "clean"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    # torch==2.13.0 is the CPU build this machine keeps on disk; everything else comes from the wheel's metadata.
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-compile", "torch==2.13.0", str(wheel)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    code = RUN.format(tests=str(ROOT / "tests"), prefix=str(env_dir))
    run = subprocess.run(
        [str(python), "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "loss" in run.stdout

    # Launch without a clone: the recipes, accelerate configs and launch script come with the wheel.
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "PATH": f"{env_dir / 'bin'}:/usr/bin:/bin"}
    names = subprocess.run(
        [str(python), "-c", LIST_SHIPPED], capture_output=True, text=True, cwd=tmp_path, env=env, check=True
    ).stdout.split()
    assert {"qwen2.5-math-7b/full", "llama-3.1-8b-instruct/qlora", "tiny/cpu", "zero3", "fsdp2"} <= set(names)
    short = ["--config", "tiny/cpu", "--max_steps", "2", "--save_strategy", "no", "--logging_steps", "1"]
    launches = {
        "accelerate": [str(env_dir / "bin" / "accelerate"), "launch", "--num_processes", "1", "--num_machines", "1"]
        + ["--mixed_precision", "no", "--dynamo_backend", "no", "-m", "cgd_trainer.scripts.train"],
        "cgd": [str(env_dir / "bin" / "cgd"), "train", "--num_processes", "1"],
    }
    for name, command in launches.items():
        output = tmp_path / f"run-{name}"
        run = subprocess.run(
            [*command, *short, "--output_dir", str(output)], capture_output=True, text=True, cwd=tmp_path, env=env
        )
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
        assert "CGD training summary" in run.stdout and (output / "model.safetensors").exists()
