"""Dataset preparation throughput: CGD records → rendered, fitted, tokenized, labelled rows (records/s), with 1 and 2
processes, split into CGDTrainer's own step (`_convert`: validate, render, fit `max_length`, and since the fix below
tokenize and label) and what TRL's `_prepare_dataset` does after it. Run: `python benchmarks/prepare.py` (about 30 s).

With `--lf_python <LLaMA-Factory venv>/bin/python`, LLaMA-Factory 0.9.5 prepares the same records, exported as Alpaca
by `cgd build`, with its own `get_dataset` (template `chatml`, `cutoff_len` = max_length): records/s for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import bench_config, paper_like_records, quiet  # noqa: E402
from datasets import Dataset  # noqa: E402
from trl import SFTTrainer  # noqa: E402

from cgd_trainer import CGDTrainer  # noqa: E402
from cgd_trainer.demo.tiny import build_model, build_tokenizer  # noqa: E402

# Runs inside LLaMA-Factory's virtualenv: its SFT data preparation alone (read the Alpaca file, render, tokenize, cut).
LF_PREPARE = r"""
import json, sys, time
from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
from llamafactory.hparams import get_train_args
from llamafactory.model import load_tokenizer

model_args, data_args, training_args, _, _ = get_train_args(json.loads(sys.argv[1]))
tokenizer_module = load_tokenizer(model_args)
template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
start = time.perf_counter()
module = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
rows = module["train_dataset"]
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "rows": len(rows), "tokens": sum(map(len, rows["input_ids"]))}))
"""


def llamafactory_rows(lf_python: str, records: list[dict], tokenizer, max_length: int, workdir: Path) -> list[str]:
    """LLaMA-Factory's preparation of the same records with 1 and 2 processes, as table rows."""
    from cgd_trainer.commands.build import run as build_main

    (workdir / "model").mkdir()
    tokenizer.save_pretrained(workdir / "model")
    source = workdir / "records.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    build_main(
        [
            "--input", str(source), "--output_dir", str(workdir / "sets"), "--conditions", "cgd", "--ratios", "none",
            "--export", "alpaca",
        ]
    )  # fmt: skip
    script = workdir / "lf_prepare.py"
    script.write_text(LF_PREPARE)
    rows = []
    for num_proc in (1, 2):
        config = {
            "model_name_or_path": str(workdir / "model"),
            "stage": "sft",
            "do_train": True,
            "finetuning_type": "full",
            "dataset": "cgd",
            "dataset_dir": str(workdir / "sets" / "alpaca"),
            "template": "chatml",
            "cutoff_len": max_length,
            "overwrite_cache": True,
            "preprocessing_num_workers": num_proc,
            "output_dir": str(workdir / f"lf-out-{num_proc}"),
            "report_to": "none",
            "use_cpu": True,
        }
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "DISABLE_VERSION_CHECK": "1", "LLAMAFACTORY_VERBOSITY": "WARN"}
        result = subprocess.run(
            [lf_python, str(script), json.dumps(config)], capture_output=True, text=True, env=env, cwd=workdir
        )
        if result.returncode != 0:
            raise RuntimeError(f"LLaMA-Factory preparation failed:\n{result.stderr[-3000:]}")
        measured = json.loads(result.stdout.strip().splitlines()[-1])
        rows.append(
            f"| {num_proc} | LLaMA-Factory 0.9.5 `get_dataset` (read, render, tokenize, cut) | | | "
            f"{measured['seconds']:.1f} s | {measured['rows'] / measured['seconds']:.0f} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=300)
    parser.add_argument("--max_length", type=int, default=4096)
    parser.add_argument("--lf_python", default=None, help="Python of a virtualenv with llamafactory 0.9.5")
    options = parser.parse_args()
    quiet()

    tokenizer = build_tokenizer("chatml")
    records = paper_like_records(options.records, seed=0)
    raw = Dataset.from_list(records)
    print(
        f"{options.records} records with the paper's length mix, max_length {options.max_length} "
        f"(records longer than that are shortened)\n"
    )
    print(
        "| processes | framework | CGD step (validate, render, fit, tokenize) | TRL step (labels, truncate) | total | "
        "records/s |"
    )
    print("|---|---|---|---|---|---|")
    for num_proc in (1, 2):
        with tempfile.TemporaryDirectory() as output_dir:
            args = bench_config(output_dir, max_length=options.max_length, dataset_num_proc=num_proc)
            trainer = CGDTrainer(
                model=build_model(tokenizer, "chatml"),
                args=args,
                train_dataset=raw.select(range(2)),
                processing_class=tokenizer,
            )
            start = time.perf_counter()
            converted = trainer._convert(raw, tokenizer, args, "bench")
            cgd_seconds = time.perf_counter() - start
            start = time.perf_counter()
            # TRL's own preparation of the already rendered data, as SFTTrainer would run it.
            SFTTrainer._prepare_dataset(trainer, converted, tokenizer, args, False, None, "bench")
            trl_seconds = time.perf_counter() - start
        total = cgd_seconds + trl_seconds
        print(
            f"| {num_proc} | CGDTrainer | {cgd_seconds:.1f} s | {trl_seconds:.1f} s | {total:.1f} s | "
            f"{options.records / total:.0f} |",
            flush=True,
        )

    if options.lf_python:
        with tempfile.TemporaryDirectory() as workdir:
            for row in llamafactory_rows(options.lf_python, records, tokenizer, options.max_length, Path(workdir)):
                print(row, flush=True)


if __name__ == "__main__":
    main()
