"""Dataset preparation throughput: CGD records → rendered, fitted, tokenized, labelled rows (records/s), with 1 and 2
processes, split into CGDTrainer's own step (`_convert`: validate, render, fit `max_length`, and since the fix below
tokenize and label) and what TRL's `_prepare_dataset` does after it. Run: `python benchmarks/prepare.py` (about 30 s).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import bench_config, paper_like_records, quiet  # noqa: E402
from datasets import Dataset  # noqa: E402
from trl import SFTTrainer  # noqa: E402

from cgd_trainer import CGDTrainer  # noqa: E402
from cgd_trainer.tiny import build_model, build_tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=300)
    parser.add_argument("--max_length", type=int, default=4096)
    options = parser.parse_args()
    quiet()

    tokenizer = build_tokenizer("chatml")
    raw = Dataset.from_list(paper_like_records(options.records, seed=0))
    print(
        f"{options.records} records with the paper's length mix, max_length {options.max_length} "
        f"(records longer than that are shortened)\n"
    )
    print(
        "| processes | CGD step (validate, render, fit) | TRL step (tokenize, labels, truncate) | total | records/s |"
    )
    print("|---|---|---|---|---|")
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
            f"| {num_proc} | {cgd_seconds:.1f} s | {trl_seconds:.1f} s | {total:.1f} s | "
            f"{options.records / total:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
