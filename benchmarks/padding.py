"""Share of padding tokens per CGD layout: random padded batches vs length-grouped batches vs packing (CPU, seconds).

Uses records with the paper's length mix, prepared by CGDTrainer exactly as for training, and the samplers and
packing code that training uses. Run: `python benchmarks/padding.py`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from common import bench_config, paper_like_records, quiet  # noqa: E402
from datasets import Dataset  # noqa: E402
from torch.utils.data import RandomSampler  # noqa: E402
from transformers.trainer_pt_utils import LengthGroupedSampler  # noqa: E402
from trl.data_utils import pack_dataset  # noqa: E402

from cgd_trainer import CGDTrainer  # noqa: E402
from cgd_trainer.demo.tiny import build_model, build_tokenizer  # noqa: E402


def padding_share(lengths: list[int], order: list[int], batch: int) -> float:
    """Pad tokens / all tokens when the examples are batched in `order` and padded to each batch's longest."""
    real = padded = 0
    for start in range(0, len(order), batch):
        chunk = [lengths[i] for i in order[start : start + batch]]
        real += sum(chunk)
        padded += max(chunk) * len(chunk)
    return 1 - real / padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max_length", type=int, default=8192)
    options = parser.parse_args()
    quiet()

    records = Dataset.from_list(paper_like_records(options.records, seed=0))
    print(
        f"{options.records} records with the paper's length mix, batches of {options.batch}, "
        f"max_length {options.max_length}\n"
    )
    print(
        "| layout | tokens/record (mean) | random padded batches | length-grouped batches | packed (bfd) | "
        "packed rows filled |"
    )
    print("|---|---|---|---|---|---|")
    for layout, family in (("single_turn", "chatml"), ("multi_turn", "chatml"), ("plain", "plain")):
        tokenizer = build_tokenizer(family)
        with tempfile.TemporaryDirectory() as output_dir:
            args = bench_config(output_dir, cgd_layout=layout, max_length=options.max_length)
            trainer = CGDTrainer(
                model=build_model(tokenizer, family), args=args, train_dataset=records, processing_class=tokenizer
            )
        prepared = trainer.train_dataset
        lengths = [len(ids) for ids in prepared["input_ids"]]
        generator = torch.Generator().manual_seed(0)
        random_order = list(RandomSampler(range(len(lengths)), generator=generator))
        grouped = list(LengthGroupedSampler(options.batch, lengths=lengths, generator=generator))
        packed = pack_dataset(prepared.select_columns(["input_ids", "labels"]), options.max_length, "bfd")
        filled = sum(len(ids) for ids in packed["input_ids"]) / (len(packed) * options.max_length)
        # Padding-free batches (what bfd packing uses) concatenate rows: no pad token is ever computed.
        print(
            f"| {layout} | {sum(lengths) / len(lengths):.0f} | "
            f"{100 * padding_share(lengths, random_order, options.batch):.1f}% | "
            f"{100 * padding_share(lengths, grouped, options.batch):.1f}% | 0.0% | {100 * filled:.1f}% |"
        )


if __name__ == "__main__":
    main()
