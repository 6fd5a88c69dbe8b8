"""`cgd demo`: the paper's comparison in miniature, offline on a CPU, scored on held-out questions.

1. `cgd generate` on the toy task's training questions (`builtin:toy`) with the demo student and teacher, and on its
   held-out questions (`builtin:toy-heldout`, disjoint by construction), then `cgd build` on each;
2. `cgd train` of a small model from scratch (`builtin:tiny-digits`) on each chosen condition's set, per seed, on the
   same budget (the `tiny/toy` recipe);
3. `cgd eval` of the untrained model and every trained one on the held-out questions, twice: asked alone (the
   paper's inference) and inside the CGD context with the held-out draft and critique (what the CGD student is
   trained on, so a check of the training path itself);
4. a report: accuracy mean ± sd per condition over the seeds, format drift (boxed answers, critique-style outputs),
   a plot, written under `<output_dir>/`.

`cgd demo` alone trains CGD and distilled SFT (the same refined answers, question alone) with one seed;
`cgd demo --conditions all --seeds 0 1 2` (`make replicate`) trains every condition `cgd build` writes. Other flags
go to training, e.g. `--max_steps 100`.
"""

from __future__ import annotations

import importlib
import json
import statistics
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

DEMO_OUTPUT_DIR = "outputs/cgd-demo"
DEMO_RECIPE = "tiny/toy"
DEMO_CONDITIONS = ("cgd", "distilled_sft")
UNTRAINED = "builtin:tiny-digits"
HELDOUT = "builtin:toy-heldout"
IN_CONTEXT_FILE = "heldout_in_cgd_context.jsonl"
# The two held-out benchmarks (as `cgd eval` names them) and their columns in the report: the question alone, and the
# CGD context around it.
ALONE, IN_CONTEXT = "toy-heldout", "heldout_in_cgd_context"
COLUMNS = {ALONE: "question alone", IN_CONTEXT: "in CGD context"}
ANY_NUMBER = "question alone, harness grading"


@dataclass
class DemoArguments:
    """
    Settings of `cgd demo`; any other flag is a training setting of the `tiny/toy` recipe (e.g. `--max_steps`).

    Args:
        output_dir (`str`): Where the data, the trained models, the evaluation and the report go.
        conditions (`list[str]`): Conditions of `cgd build` to train (`all` for every one).
        seeds (`list[int]`): Training seeds; each condition is trained once per seed.
        eval_problems (`int`, *optional*): Score only the first held-out questions (all 160 by default).
        max_new_tokens (`int`): Token budget of each evaluated answer.
    """

    output_dir: str = field(default=DEMO_OUTPUT_DIR, metadata={"help": "Data, models, evaluation and report."})
    conditions: list[str] = field(
        default_factory=lambda: list(DEMO_CONDITIONS),
        metadata={"help": "Conditions of `cgd build` to train, or `all`."},
    )
    seeds: list[int] = field(default_factory=lambda: [42], metadata={"help": "Training seeds."})
    eval_problems: int | None = field(default=None, metadata={"help": "First held-out questions only."})
    max_new_tokens: int = field(default=96, metadata={"help": "Token budget of each evaluated answer."})


def pipeline_toy_recipe_path() -> Path:
    """The `cgd generate` recipe of the demo's data, shipped in the package (`examples/pipeline/toy.yaml`)."""
    return Path(str(resources.files("cgd_trainer.demo") / "recipes" / "pipeline-toy.yaml"))


def toy_recipe_path() -> Path:
    """The training recipe of `cgd demo` (`tiny/toy`), shipped in the package."""
    from ..commands.recipes import recipe_path

    return Path(recipe_path(DEMO_RECIPE))


def _generate_and_build(dataset: str, data_dir: Path) -> Path:
    """`cgd generate` (demo backends) on a dataset, then `cgd build`; returns the sets' folder."""
    from ..commands import build, generate

    status = generate.main(
        ["--config", str(pipeline_toy_recipe_path()), "--dataset_name", dataset, "--output_dir", str(data_dir)]
    )
    if status != 0:
        raise RuntimeError(f"`cgd generate` on {dataset} ended with status {status}; see the messages above.")
    sets = data_dir / "sets"
    status = build.main(["--input", str(data_dir / "records.jsonl"), "--output_dir", str(sets)])
    if status != 0:
        raise RuntimeError(f"`cgd build` on {dataset} ended with status {status}; see the messages above.")
    return sets


def make_demo_data(data_dir: str | Path, training_args: Any = None) -> tuple[Path, Path]:
    """
    Generates and builds the training sets, and the held-out benchmark in the CGD context.

    Args:
        data_dir (`str` or `Path`): Where the generated records and the sets go.
        training_args (*optional*): The runs' training arguments; their `cgd_*` settings render the benchmark's
            questions with the trainer's own collator (the library's defaults when `None`).

    Returns:
        `tuple[Path, Path]`: The training sets' folder, and a JSONL benchmark (`id`, `question`, `answer`) whose
        questions are the held-out CGD records' user turns exactly as `CGDTrainer` renders them (`single_turn`).
    """
    from ..collator import CritiqueCollator
    from ..sources import read_jsonl, write_jsonl

    collator = CritiqueCollator.from_config(training_args)

    def cgd_context(record: dict[str, Any]) -> str:
        (turn,) = collator.format(record, "single_turn")["prompt"]
        return turn["content"]

    data_dir = Path(data_dir)
    sets = _generate_and_build("builtin:toy", data_dir)
    heldout_sets = _generate_and_build(HELDOUT, data_dir / "heldout")
    heldout = list(read_jsonl(heldout_sets / "cgd.jsonl"))
    overlap = {row["prompt"] for row in read_jsonl(sets / "cgd.jsonl")} & {record["prompt"] for record in heldout}
    if overlap:  # the split is disjoint by construction; this guards the shipped files
        raise RuntimeError(f"{len(overlap)} held-out questions occur in the training data, e.g. {min(overlap)!r}.")
    rows = [{"id": r["id"], "question": cgd_context(r), "answer": r["reference_answer"]} for r in heldout]
    in_context = data_dir / IN_CONTEXT_FILE
    write_jsonl(in_context, rows)
    return sets, in_context


def resolve_conditions(names: list[str]) -> list[str]:
    """The conditions to train, in `cgd build`'s order; `all` means every one. Unknown names are a usage error."""
    from ..commands.parser import UsageError, did_you_mean
    from ..conditions.config import CONDITIONS

    if "all" in names:
        return list(CONDITIONS)
    for name in names:
        if name not in CONDITIONS:
            raise UsageError(
                f"--conditions: unknown condition {name!r}{did_you_mean(name, CONDITIONS)}; "
                f"choose from {', '.join(CONDITIONS)} or all."
            )
    return [name for name in CONDITIONS if name in names]


def run_label(condition: str, seed: int) -> str:
    return f"{condition} (seed {seed})"


def aggregate(summary: dict[str, Any], conditions: list[str], seeds: list[int]) -> dict[str, dict[str, Any]]:
    """
    Mean and sample standard deviation over the seeds, per condition, of the held-out scores in a `cgd eval` summary.

    Returns:
        `dict`: `{"untrained" | condition: {benchmark | ANY_NUMBER | "boxed_rate" | "critique_rate": {"mean", "sd",
        "values"}}}`.
    """

    def spread(values: list[float]) -> dict[str, Any]:
        return {
            "mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else None,
            "values": values,
        }

    table: dict[str, dict[str, Any]] = {}
    groups = {"untrained": ["untrained"]} | {c: [run_label(c, s) for s in seeds] for c in conditions}
    for name, labels in groups.items():
        row: dict[str, Any] = {}
        for benchmark in (ALONE, IN_CONTEXT):
            row[benchmark] = spread([summary["results"][label][benchmark]["accuracy"] for label in labels])
        # The harness grading also reads an unboxed final number: the `sft` targets are bare reference answers.
        row[ANY_NUMBER] = spread(
            [summary["results"][label][ALONE]["accuracy_by_protocol"]["harness"] for label in labels]
        )
        # Format drift is read on the answers to the question alone: what a user of the trained model sees.
        drift = [summary["drift_per_benchmark"][label][ALONE] for label in labels]
        row["boxed_rate"] = spread([d["boxed_rate"] for d in drift])
        row["critique_rate"] = spread([d["critique_rate"] for d in drift])
        table[name] = row
    return table


def render_table(table: dict[str, dict[str, Any]], seeds: list[int]) -> str:
    """The comparison as a markdown table (percentages, `mean ± sd` when there are several seeds)."""
    from ..evaluation.report import markdown_table, percent

    def cell(value: dict[str, Any]) -> str:
        text = percent(value["mean"])
        return text if value["sd"] is None else f"{text} ± {percent(value['sd'])}"

    headers = ["student", *(f"held-out, {COLUMNS[b]} (%)" for b in (ALONE, IN_CONTEXT)), f"held-out, {ANY_NUMBER} (%)"]
    headers += ["boxed (%)", "critique-style (%)"]
    keys = (ALONE, IN_CONTEXT, ANY_NUMBER, "boxed_rate", "critique_rate")
    rows = [[name, *(cell(row[key]) for key in keys)] for name, row in table.items()]
    return markdown_table(headers, rows)


def write_report(table: dict[str, dict[str, Any]], summary: dict[str, Any], args: DemoArguments, seconds: dict) -> str:
    """Writes `comparison.md`, `comparison.json` and `comparison.png` under the output folder; returns the markdown."""
    from ..evaluation.report import plot_benchmark_accuracy

    out = Path(args.output_dir)
    seeds = ", ".join(str(s) for s in args.seeds)
    means = {name: {COLUMNS[b]: row[b]["mean"] for b in COLUMNS} for name, row in table.items()}
    errors = {name: {COLUMNS[b]: row[b]["sd"] for b in COLUMNS} for name, row in table.items()}
    plot_benchmark_accuracy(means, out / "comparison.png", title=f"Held-out accuracy (seeds {seeds})", errors=errors)
    questions = summary["benchmarks"][0]["problems"]
    text = "\n".join(
        [
            "# cgd demo: held-out accuracy per condition",
            "",
            f"The toy task's {questions} held-out questions (never in training), greedy, graded with the "
            f"`{summary['config']['protocol']}` preset. Seeds: {seeds}. Training: the `{DEMO_RECIPE}` recipe, the "
            f"same budget for every condition. Untrained: `{UNTRAINED}` before training.",
            "",
            render_table(table, args.seeds),
            "",
            f"- **{COLUMNS[ALONE]}**: the paper's inference — the question as the only user turn, no system prompt.",
            f"- **{COLUMNS[IN_CONTEXT]}**: the question inside the CGD training context, with the held-out draft and "
            "critique of the demo student and teacher; only the CGD-context conditions are trained on this input.",
            f"- **{ANY_NUMBER}**: the same answers graded by the harness preset, which also reads a final number "
            "without a box (the `sft` condition trains on the bare reference answers).",
            "- boxed and critique-style: format drift of the answers to the question alone.",
            "",
            f"Training seconds per run: {json.dumps(seconds)}. Evaluation: {summary['seconds']} s "
            "(`eval/report.md` has every model and sample).",
            "",
            "![held-out accuracy](comparison.png)",
            "",
        ]
    )
    (out / "comparison.md").write_text(text, encoding="utf-8")
    (out / "comparison.json").write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    return text


def parse(argv: list[str]) -> tuple[DemoArguments, list[str], Any]:
    """
    Splits the arguments into the demo's own settings and the training flags, checked by the train parser.

    Returns:
        `tuple`: The [`DemoArguments`], the training flags, and the training arguments they give with the recipe.
    """
    from transformers import HfArgumentParser

    from ..commands import train
    from ..commands.parser import UsageError

    (args, training_flags) = HfArgumentParser((DemoArguments,), prog="cgd demo").parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True
    )
    if any(flag == "--config" or flag.startswith("--config=") for flag in training_flags):
        raise UsageError("cgd demo trains with its own recipe (tiny/toy); change a setting with its flag instead.")
    # Missing evaluation extras and misspelt training flags fail here, before minutes of training.
    for module in ("math_verify", "matplotlib"):
        try:
            importlib.import_module(module)
        except ImportError:
            raise UsageError(
                f"cgd demo scores the students with cgd eval, which needs {module.replace('_', '-')}: "
                "pip install 'cgd-trainer[eval]'."
            ) from None
    _, training_args, *_ = train.parse(["--config", str(toy_recipe_path()), *training_flags], prog="cgd demo")
    if training_args.cgd_layout not in ("auto", "single_turn"):
        raise UsageError(
            f"--cgd_layout {training_args.cgd_layout}: cgd demo scores students in the single_turn CGD context; "
            "leave the layout at auto (the demo model has a chat template)."
        )
    return args, training_flags, training_args


def main(argv: list[str]) -> int:
    """
    `cgd demo [--conditions ...] [--seeds ...] [training flags]`: generate, build, train each condition from scratch,
    evaluate on the held-out questions and print the comparison.
    """
    import time

    from ..commands import train
    from ..evaluation import EvalConfig, run_eval

    args, training_flags, training_args = parse(argv)
    conditions = resolve_conditions(args.conditions)
    out = Path(args.output_dir)
    sets, in_context = make_demo_data(out / "data", training_args)

    models: list[dict[str, str]] = [{"label": "untrained", "model": UNTRAINED}]
    seconds: dict[str, float] = {}
    for seed in args.seeds:
        for condition in conditions:
            run_dir = out / condition / f"seed-{seed}"
            started = time.time()
            status = train.main(
                [
                    "--config",
                    str(toy_recipe_path()),
                    "--dataset_name",
                    str(sets / f"{condition}.jsonl"),
                    "--output_dir",
                    str(run_dir),
                    "--seed",
                    str(seed),
                    "--overwrite_output_dir",
                    "true",
                    *training_flags,
                ],  # fmt: skip
                prog="cgd demo",
            )
            if status != 0:
                return status
            seconds[run_label(condition, seed)] = round(time.time() - started, 1)
            models.append({"label": run_label(condition, seed), "model": str(run_dir)})

    config = EvalConfig(
        models=models,
        benchmarks=[HELDOUT, str(in_context)],
        system_prompt="",
        max_new_tokens=args.max_new_tokens,
        max_problems=args.eval_problems,
        batch_size=32,
        output_dir=str(out / "eval"),
    )
    summary = run_eval(config)["summary"]
    table = aggregate(summary, conditions, args.seeds)
    print("\n" + write_report(table, summary, args, seconds))
    print(f"Report: {out / 'comparison.md'}")
    return 0
