"""Dataset preparation throughput with real vocabularies: raw CGD records → validated, rendered, fitted, tokenized and
labelled rows, as `CGDTrainer` prepares them (`prepare_records`: the CGD step and TRL's truncation after it).

Compared in the same run, on the same records, each measurement in its own process, with `dataset_num_proc` 1 (unset,
as by default) and 2, and `TOKENIZERS_PARALLELISM=false` so that processes are the only parallelism; the setting `1t`
measures CGD with one process and the tokenizer's own threads (`TOKENIZERS_PARALLELISM` unset: the default), which
`encode_batch` uses and text-by-text tokenization (TRL, LLaMA-Factory, the commit before) cannot:

- `CGDTrainer, before`: the same preparation by the cgd-trainer of another commit (`--before`, default the last one
  before the batched tokenization), extracted with `git archive`;
- `SFTTrainer`: TRL's own preparation (`_prepare_dataset`) of the same rendered and fitted text, given as
  prompt-completion rows (what a user of plain TRL would hand it);
- `LLaMA-Factory`: with `--lf_python`, LLaMA-Factory 0.9.5's `get_dataset` on the same records exported as Alpaca by
  `cgd build` (its own chat template for the vocabulary, `cutoff_len` = max_length; reading the file included);
- `encode_batch limit`: the fast tokenizer's batched encoding (`tokenizers`; one thread, or as many threads as
  processes) of the very texts CGD tokenizes: no framework can tokenize faster than this.

Vocabularies: SmolLM2-135M-Instruct's 49,152 tokens (`builtin:smollm2-135m-instruct`, ChatML template) and Mistral
Nemo's Tekken, 131,072 tokens (the `tekken_240911.json` shipped in the `mistral-common` package, converted by
transformers, Mistral's `[INST]` template); `--vocabs mistral` adds Mistral 7B v0.3's 32,768-token SentencePiece
vocabulary (the `.model.v3` file `mistral-common` ships, which transformers 5 builds as its Llama class does:
`Metaspace(split=False)`, the text read in one piece; needs `pip install sentencepiece protobuf`), with an
`[INST]` template of its control tokens; `--vocabs tiny` adds the 700-token test tokenizer of the old table.
Records: `common.maths_like_records` (the paper's length mix in words, written like worked maths); `max_length` 16384
(nothing is shortened) and 4096 (most records are).

Run: `pip install mistral-common` (for Tekken; `sentencepiece protobuf` too for `--vocabs mistral`), then
`python benchmarks/prepare.py [--lf_python <venv>/bin/python]`
(about 40 minutes with LLaMA-Factory).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

BEFORE = "c2cd875"  # the last commit that tokenized every record twice, one record at a time
LF_TEMPLATES = {"smollm2": "chatml", "tekken": "mistral", "mistral": "mistral", "tiny": "chatml"}
# An `[INST]` chat template for the SentencePiece vocabulary, whose file carries none.
INST_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}[INST] {{ message['content'] }}"
    "[/INST]{% elif message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}{% else %}"
    "{{ message['content'] }}\n\n{% endif %}{% endfor %}"
)

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


def load_tokenizer(vocab: str):
    """The tokenizer of a vocabulary name, built or converted offline."""
    if vocab == "smollm2":
        from transformers import AutoTokenizer

        from cgd_trainer.sources import resolve_model

        return AutoTokenizer.from_pretrained(resolve_model("builtin:smollm2-135m-instruct", "benchmark"))
    if vocab == "tekken":
        from transformers.integrations.mistral.tokenizer import convert_tekken_tokenizer

        return convert_tekken_tokenizer(str(_mistral_common_data() / "tekken_240911.json"))
    if vocab == "mistral":
        import shutil

        from transformers import AutoTokenizer

        model = _mistral_common_data() / "mistral_instruct_tokenizer_240323.model.v3"
        with tempfile.TemporaryDirectory() as folder:
            shutil.copy(model, Path(folder) / "tokenizer.model")
            config = {
                "tokenizer_class": "LlamaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
            }
            (Path(folder) / "tokenizer_config.json").write_text(json.dumps(config))
            try:
                tokenizer = AutoTokenizer.from_pretrained(folder)
            except (ImportError, ValueError) as error:
                raise SystemExit(
                    f"Converting Mistral's SentencePiece file needs `pip install sentencepiece protobuf`: {error}"
                ) from None
        tokenizer.chat_template, tokenizer.pad_token = INST_TEMPLATE, "<unk>"
        return tokenizer
    if vocab == "tiny":
        from cgd_trainer.demo.tiny import build_tokenizer

        return build_tokenizer("chatml")
    raise ValueError(f"Unknown vocabulary {vocab!r}; choose among smollm2, tekken, mistral, tiny.")


def _mistral_common_data() -> Path:
    try:
        import mistral_common
    except ImportError:
        raise SystemExit("Mistral's vocabularies ship in `mistral-common`: pip install mistral-common") from None
    return Path(mistral_common.__file__).parent / "data"


def measure(spec: dict) -> dict:
    """One measurement, in this process: seconds, rows and tokens of one preparation."""
    from common import bench_config, maths_like_records, quiet
    from datasets import Dataset

    quiet()
    tokenizer = load_tokenizer(spec["vocab"])
    records = maths_like_records(spec["records"], seed=0)
    with tempfile.TemporaryDirectory() as output_dir:
        # One process is `datasets`' default, no `num_proc` (`num_proc=1` would still fork one worker).
        num_proc = spec["num_proc"] if spec["num_proc"] > 1 else None
        args = bench_config(output_dir, max_length=spec["max_length"], dataset_num_proc=num_proc)
        if spec["kind"] == "cgd":
            from cgd_trainer.trainer import prepare_records

            start = time.perf_counter()
            rows, counts = prepare_records(Dataset.from_list(records), tokenizer, args)
            seconds = time.perf_counter() - start
            return {"seconds": seconds, "rows": len(rows), "tokens": sum(map(len, rows["input_ids"])), **counts}
        from trl import SFTTrainer

        from cgd_trainer import CritiqueCollator, trl_boundary
        from cgd_trainer.tokenization import ExampleEncoder

        collator = CritiqueCollator.from_config(args, tokenizer)
        layout = collator.resolve_layout()
        fitted = [example for example, _ in collator.fit_batch(records, layout, tokenize=False) if example]
        if spec["kind"] == "trl":
            bare = trl_boundary.bare_trainer(SFTTrainer, args, tokenizer, None, True)
            data = Dataset.from_list(fitted)
            start = time.perf_counter()
            rows = trl_boundary.prepare_dataset(bare, data, tokenizer, args, False, None, "bench")
            seconds = time.perf_counter() - start
            return {"seconds": seconds, "rows": len(rows), "tokens": sum(map(len, rows["input_ids"]))}
        # The limit: the fast tokenizer's batched encoding of the texts CGD tokenizes, nothing else.
        encoder = ExampleEncoder(tokenizer, layout)
        texts = [encoder.texts(example, {})[0] for example in fitted]
        start = time.perf_counter()
        encodings = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=encoder.add_special_tokens)
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "rows": len(encodings), "tokens": sum(len(e.ids) for e in encodings)}


def run_worker(spec: dict, src: str | None = None) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    if spec["threads"] or (spec["kind"] == "limit" and spec["num_proc"] > 1):
        # The tokenizer's own threads: `encode_batch` spreads a batch over the cores (per-text encoding does not).
        env["TOKENIZERS_PARALLELISM"] = "true"
        env["RAYON_NUM_THREADS"] = str(max(spec["num_proc"], os.cpu_count() if spec["threads"] else 1))
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, env=env, cwd=ROOT
    )
    if result.returncode != 0:
        raise RuntimeError(f"{spec} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def llamafactory(lf_python: str, vocab: str, n: int, max_length: int, num_proc: int, workdir: Path) -> dict:
    """LLaMA-Factory's preparation of the same records (exported as Alpaca by `cgd build`)."""
    from common import maths_like_records

    from cgd_trainer.commands.build import run as build_main

    model_dir = workdir / f"model-{vocab}"
    if not model_dir.exists():
        tokenizer = load_tokenizer(vocab)
        tokenizer.save_pretrained(model_dir)
        # LLaMA-Factory's transformers may not know the class name transformers 5 writes.
        config_path = model_dir / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_path.write_text(json.dumps(config))
    sets = workdir / f"sets-{n}"
    if not sets.exists():
        source = workdir / "records.jsonl"
        source.write_text("".join(json.dumps(r) + "\n" for r in maths_like_records(n, seed=0)))
        with contextlib.redirect_stdout(io.StringIO()):
            build_main(
                ["--input", str(source), "--output_dir", str(sets), "--conditions", "cgd", "--ratios", "none",
                 "--export", "alpaca"]
            )  # fmt: skip
    script = workdir / "lf_prepare.py"
    script.write_text(LF_PREPARE)
    config = {
        "model_name_or_path": str(model_dir),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "dataset": "cgd",
        "dataset_dir": str(sets / "alpaca"),
        "template": LF_TEMPLATES[vocab],
        "cutoff_len": max_length,
        "overwrite_cache": True,
        "preprocessing_num_workers": num_proc if num_proc > 1 else None,
        "output_dir": str(workdir / "lf-out"),
        "report_to": "none",
        "use_cpu": True,
    }
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "DISABLE_VERSION_CHECK": "1",
        "LLAMAFACTORY_VERBOSITY": "WARN",
        "TOKENIZERS_PARALLELISM": "false",
    }
    result = subprocess.run(
        [lf_python, str(script), json.dumps(config)],
        capture_output=True,
        text=True,
        env=env,
        cwd=workdir,
    )
    if result.returncode != 0:
        raise RuntimeError(f"LLaMA-Factory preparation failed:\n{result.stderr[-3000:]}")
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    return {"seconds": measured["seconds"], "rows": measured["rows"], "tokens": measured["tokens"]}


def before_source(rev: str, workdir: Path) -> str:
    """The `src` folder of another commit, for the `before` rows."""
    target = workdir / f"before-{rev}"
    target.mkdir()
    archive = subprocess.run(["git", "archive", rev, "src"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return str(target / "src")


def print_rows(vocab: str, max_length: int, setting: str, rows: dict) -> None:
    processes = f"{setting[:-1]} + tokenizer threads" if setting.endswith("t") else setting
    for i, (name, measured) in enumerate(rows.items()):
        ratio = measured["ratio"]
        relation = "—" if i == 0 else f"{ratio:.2f}× as fast" if ratio >= 1 else f"{1 / ratio:.2f}× as slow"
        print(
            f"| {vocab} | {max_length} | {measured['shortened']} | {processes} | {name} | {measured['seconds']:.2f} | "
            f"{measured['rows'] / measured['seconds']:.0f} | {measured['tokens'] / measured['seconds'] / 1e6:.2f}M | "
            f"{relation} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=400)
    parser.add_argument("--vocabs", default="smollm2,tekken", help="comma-separated: smollm2, tekken, mistral, tiny")
    parser.add_argument("--max_lengths", default="16384,4096")
    parser.add_argument(
        "--num_procs", default="1,2,1t", help="processes; `1t`: one process with the tokenizer's threads (the default)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds, each measuring every kind once in a rotating order"
    )
    parser.add_argument("--before", default=BEFORE, help="commit of the `before` rows; 'none' to skip them")
    parser.add_argument("--lf_python", default=None, help="Python of a virtualenv with llamafactory 0.9.5")
    parser.add_argument(
        "--compare", default="before,trl,lf,limit", help="comma-separated rows beside CGD now: before, trl, lf, limit"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        print(json.dumps(measure(json.loads(options.worker))))
        return

    compare = set(options.compare.split(","))
    print(f"{options.records} records with the paper's length mix (maths-like text); times in seconds\n")
    print(
        "| vocabulary | max_length | records shortened | processes | preparation | seconds | records/s | "
        "tokens/s | CGDTrainer after is (median of the rounds' ratios) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        before = before_source(options.before, workdir) if options.before != "none" else None
        for vocab in options.vocabs.split(","):
            for max_length in map(int, options.max_lengths.split(",")):
                for setting in options.num_procs.split(","):
                    num_proc, threads = int(setting.rstrip("t")), setting.endswith("t")
                    spec = {"vocab": vocab, "records": options.records, "max_length": max_length}
                    spec.update(num_proc=num_proc, threads=threads)
                    kinds = {"CGDTrainer, after": lambda spec=spec: run_worker({**spec, "kind": "cgd"})}
                    # TRL, LLaMA-Factory and the commit before encode text by text: the threads change nothing.
                    if before is not None and "before" in compare and not threads:
                        kinds[f"CGDTrainer, before ({options.before})"] = lambda spec=spec: run_worker(
                            {**spec, "kind": "cgd"}, before
                        )
                    if "trl" in compare and not threads:
                        kinds["SFTTrainer on the same rendered text"] = lambda spec=spec: run_worker(
                            {**spec, "kind": "trl"}
                        )
                    if options.lf_python and "lf" in compare and not threads:
                        kinds["LLaMA-Factory 0.9.5 `get_dataset`"] = lambda vocab=vocab, n=max_length, p=num_proc: (
                            llamafactory(options.lf_python, vocab, options.records, n, p, workdir)
                        )
                    if "limit" in compare:
                        kinds["`encode_batch` limit (same texts)"] = lambda spec=spec: run_worker(
                            {**spec, "kind": "limit"}
                        )
                    print_rows(vocab, max_length, setting, interleaved(kinds, options.repeats))


def interleaved(kinds: dict, rounds: int) -> dict:
    """
    Measures every kind once per round, in an order that rotates from round to round, so that a slow minute of the
    machine falls on all of them; each kind's median seconds, and the median over rounds of its time divided by CGD's
    time in the same round.
    """
    names = list(kinds)
    runs = {name: [] for name in names}
    for round_ in range(rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            runs[name].append(kinds[name]())
    after = runs[names[0]]
    return {
        name: {
            **measured[0],
            "seconds": statistics.median(run["seconds"] for run in measured),
            "ratio": statistics.median(run["seconds"] / cgd["seconds"] for run, cgd in zip(measured, after)),
            "shortened": after[0]["shortened"],
        }
        for name, measured in runs.items()
    }


if __name__ == "__main__":
    main()
