"""End-to-end launches: TRL's own sft.py with CGDTrainer swapped in, and a 2-process torchrun run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trl

from helpers import launch, make_records, process_ended

SCRIPTS = Path(__file__).parents[1] / "scripts"


def _env():
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
    )
    return env


def _write_records(path, n=32):
    with open(path, "w") as handle:
        for record in make_records(n):
            handle.write(json.dumps(record) + "\n")
    return str(path)


@pytest.mark.slow
def test_trl_sft_script_with_cgd_trainer(tmp_path, tiny_dirs):
    source = (Path(trl.__file__).parent / "scripts" / "sft.py").read_text()
    assert source.count("from trl import SFTTrainer, ") == 1 and source.count("SFTTrainer(") == 1
    source = source.replace("from trl import SFTTrainer, ", "from cgd_trainer import CGDTrainer\n    from trl import ")
    source = source.replace("SFTTrainer(", "CGDTrainer(")
    script = tmp_path / "sft_cgd.py"
    script.write_text(source)
    data = _write_records(tmp_path / "cgd.jsonl")
    output = tmp_path / "out"
    config = tmp_path / "recipe.yaml"
    config.write_text(
        f"model_name_or_path: {tiny_dirs['chatml']}\n"
        f"dtype: float32\n"
        f"datasets:\n  - path: json\n    data_files: {data}\n    split: train\n"
        f"output_dir: {output}\n"
        "bf16: false\nuse_cpu: true\nmax_steps: 2\nper_device_train_batch_size: 4\nlogging_steps: 1\n"
        "save_strategy: steps\nsave_steps: 2\nreport_to: none\nmax_length: 512\ngradient_checkpointing: false\n"
    )
    run = subprocess.run(
        [sys.executable, str(script), "--config", str(config)], capture_output=True, text=True, env=_env(), timeout=600
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Training completed" in run.stdout + run.stderr
    assert (output / "model.safetensors").exists()
    state = json.loads((output / "checkpoint-2" / "trainer_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2]
    assert "2505.11628" in (output / "README.md").read_text()


def _train(tmp_path, model_dir, data, name, nproc, batch, packing=False):
    output = tmp_path / name
    command = [
        str(SCRIPTS / "train_tiny.py"),
        "--model",
        model_dir,
        "--data",
        data,
        "--output",
        str(output),
        "--batch",
        str(batch),
    ] + (["--packing"] if packing else [])
    if nproc > 1:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",  # a free port: a fixed one may still be held by another run
            "--nproc_per_node",
            str(nproc),
            *command,
        ]
    else:
        command = [sys.executable, *command]
    launch(command, _env())
    return json.loads((output / "losses.json").read_text())


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, tiny_dirs):
    data = _write_records(tmp_path / "cgd.jsonl")
    single = _train(tmp_path, tiny_dirs["chatml"], data, "single", nproc=1, batch=4)
    double = _train(tmp_path, tiny_dirs["chatml"], data, "double", nproc=2, batch=2)
    assert single["world_size"] == 1 and double["world_size"] == 2
    assert len(single["losses"]) == len(double["losses"]) == 4
    assert double["losses"] == pytest.approx(single["losses"], rel=1e-4)
    assert double["stats"]["train"]["kept"] == 32


def test_a_launch_past_its_timeout_fails_and_leaves_no_process_behind(tmp_path):
    # Like torchrun's ranks, each child runs in a session of its own and holds the launcher's output pipes. The
    # launcher keeps starting them up to the kill, so one started while the others are being killed is caught too.
    script, pids = tmp_path / "launcher.py", tmp_path / "pids"
    script.write_text(
        "import subprocess, sys, time\n"
        "with open(sys.argv[1], 'w') as pids:\n"
        "    for _ in range(1000):\n"
        "        child = subprocess.Popen(['sleep', '600'], start_new_session=True)\n"
        "        pids.write(f'{child.pid}\\n')\n"
        "        pids.flush()\n"
        "        time.sleep(0.005)\n"
        "    time.sleep(600)\n"
    )
    with pytest.raises(pytest.fail.Exception, match="ran past 3 s"):
        launch([sys.executable, str(script), str(pids)], _env(), timeout=3)
    children = [int(pid) for pid in pids.read_text().split()]
    assert children
    assert not [pid for pid in children if not process_ended(pid)]
