"""Paper scale: 10K and 100K synthetic CGD records of the paper's lengths through `cgd build` (every condition and
the ratio subsets) and through CGD preparation (`prepare_records`, SmolLM2's vocabulary, `max_length` 4096,
`dataset_num_proc` 2), each step in its own process. Reported per step: wall time, peak memory of the process and its
workers (the sum of their proportional set sizes, PSS, sampled every half second, so shared pages count once), the
size of what it wrote, and how each grows from the smaller size to the larger; linear growth is 10×.

Run: `python benchmarks/scale.py` (10K and 100K: about an hour on 2 cores, 12 GB of disk), or
`python benchmarks/scale.py --sizes 2000,20000` for a quicker look.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# Runs in its own process: CGD preparation of the `cgd` condition written by `cgd build`, as training prepares it.
PREPARE = r"""
import json, sys, tempfile, time
from datasets import load_dataset
from transformers import AutoTokenizer
from cgd_trainer import CGDConfig
from cgd_trainer.sources import resolve_model
from cgd_trainer.trainer import prepare_records

data_file, max_length, num_proc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tokenizer = AutoTokenizer.from_pretrained(resolve_model("builtin:smollm2-135m-instruct", "benchmark"))
start = time.perf_counter()
records = load_dataset("json", data_files=data_file, split="train")
read = time.perf_counter() - start
with tempfile.TemporaryDirectory() as output_dir:
    args = CGDConfig(output_dir=output_dir, bf16=False, use_cpu=True, report_to="none", max_length=max_length,
                     dataset_num_proc=num_proc)
    rows, counts = prepare_records(records, tokenizer, args)
print(json.dumps({"read_seconds": read, "rows": len(rows), "tokens": sum(len(ids) for ids in rows["input_ids"]),
                  **counts}))
"""


def write_records(path: Path, n: int, chunk: int = 5000) -> None:
    """`n` paper-length records, written in chunks so that the generator never holds them all."""
    from common import maths_like_records

    with open(path, "w", encoding="utf-8") as handle:
        for first in range(0, n, chunk):
            for offset, record in enumerate(maths_like_records(min(chunk, n - first), seed=first)):
                record["prompt"] = record["prompt"].replace("Question ", f"Question {first + offset} / ", 1)
                if (first + offset) % 3 == 0:  # a third of the drafts are right, for the ratio subsets
                    record["critique"] = record["critique"].replace("Conclusion: wrong", "Conclusion: right")
                handle.write(json.dumps(record) + "\n")


def watch(command: list[str], env: dict, log: Path) -> dict:
    """Runs a command to its end; its wall time, its peak PSS with its children, and its last output line."""
    start = time.perf_counter()
    with open(log, "w") as handle:
        process = psutil.Popen(command, stdout=subprocess.PIPE, stderr=handle, env=env, text=True)
        peak = 0
        while process.poll() is None:
            total = 0
            for member in [process, *process.children(recursive=True)]:
                try:
                    total += member.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            peak = max(peak, total)
            time.sleep(0.5)
        out = process.stdout.read()
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed; see {log}:\n{log.read_text()[-3000:]}")
    return {"seconds": seconds, "peak": peak, "last": out.strip().splitlines()[-1] if out.strip() else ""}


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--max_length", type=int, default=4096)
    parser.add_argument("--num_proc", type=int, default=2)
    parser.add_argument("--workdir", default=None, help="where the files go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the files of each size")
    options = parser.parse_args()

    base = Path(options.workdir or tempfile.mkdtemp(prefix="cgd-scale-"))
    results = {}
    for n in map(int, options.sizes.split(",")):
        folder = base / str(n)
        folder.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(folder / "hf-cache")}
        source = folder / "records.jsonl"
        start = time.perf_counter()
        write_records(source, n)
        print(f"{n} records: {gib(size_of(source))} written in {time.perf_counter() - start:.0f} s", flush=True)

        build = watch(
            [sys.executable, "-m", "cgd_trainer.cli", "build", "--input", str(source), "--output_dir",
             str(folder / "sets")],
            env,
            folder / "build.log",
        )  # fmt: skip
        build["output"] = size_of(folder / "sets")
        build["files"] = len(list((folder / "sets").glob("*.jsonl")))
        print(f"  cgd build: {build['seconds']:.0f} s, peak {gib(build['peak'])}, {build['files']} files, "
              f"{gib(build['output'])}", flush=True)  # fmt: skip

        prepare = watch(
            [sys.executable, "-c", PREPARE, str(folder / "sets" / "cgd.jsonl"), str(options.max_length),
             str(options.num_proc)],
            env,
            folder / "prepare.log",
        )  # fmt: skip
        prepare.update(json.loads(prepare.pop("last")))
        prepare["output"] = size_of(folder / "hf-cache")
        print(f"  preparation: {prepare['seconds']:.0f} s (reading {prepare['read_seconds']:.0f} s), peak "
              f"{gib(prepare['peak'])}, Arrow cache {gib(prepare['output'])}, {prepare['rows']} rows, "
              f"{prepare['tokens'] / 1e6:.0f}M tokens, {prepare['shortened']} shortened", flush=True)  # fmt: skip
        results[n] = {"input": size_of(source), "build": build, "prepare": prepare}
        if not options.keep:
            shutil.rmtree(folder)

    sizes = sorted(results)
    print("\n| step | records | input | wall time | records/s | peak memory (PSS) | written |")
    print("|---|---|---|---|---|---|---|")
    for step, name in (("build", "`cgd build`, every condition"), ("prepare", "CGD preparation, 2 processes")):
        for n in sizes:
            r = results[n][step]
            print(
                f"| {name} | {n:,} | {gib(results[n]['input'])} | {r['seconds']:.0f} s | {n / r['seconds']:.0f} | "
                f"{gib(r['peak'])} | {gib(r['output'])} |"
            )
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        print(f"\nGrowth from {small:,} to {large:,} records ({large / small:.0f}× the records):\n")
        print("| step | wall time | peak memory | written |")
        print("|---|---|---|---|")
        for step in ("build", "prepare"):
            a, b = results[small][step], results[large][step]
            print(
                f"| {step} | {b['seconds'] / a['seconds']:.1f}× | {b['peak'] / a['peak']:.1f}× | "
                f"{b['output'] / a['output']:.1f}× |"
            )
    (base / "scale.json").write_text(json.dumps(results, indent=2))
    print(f"\n(raw numbers: {base / 'scale.json'})")


if __name__ == "__main__":
    main()
