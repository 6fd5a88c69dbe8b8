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

With `--student builtin:smollm2-135m-instruct` the student is a real pretrained model (SmolLM2-135M-Instruct): it
writes its own drafts in step 1 (the demo teacher still critiques and refines them), and step 2 fine-tunes it with
the `smollm2-135m-instruct/toy` recipe; the steps are otherwise the same.

`cgd demo` alone trains CGD and distilled SFT (the same refined answers, question alone) with one seed;
`cgd demo --conditions all --seeds 0 1 2` (`make replicate`) trains every condition `cgd build` writes. Other flags
go to training, e.g. `--max_steps 100`. A rerun (after a crash, or with more conditions or seeds) keeps every run that
finished with the same settings and data, and `cgd eval` reuses their samples; `--retrain true` trains them again.
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


@dataclass(frozen=True)
class DemoStudent:
    """
    A student `cgd demo` can train: its training recipe, its `cgd generate` recipe (who writes the drafts) and its
    defaults.

    Args:
        recipe (`str`): The training recipe, by name.
        pipeline (`str`): The `cgd generate` recipe in `cgd_trainer/demo/recipes/`.
        output_dir (`str`): The default output folder.
        max_new_tokens (`int`): The default token budget of each evaluated answer.
        trained_from (`str`): How the report describes the starting point.
        heldout_questions (`int`, *optional*): The held-out questions probed and scored by default (all when
            `None`): a real student's drafts take minutes per batch on a CPU.
    """

    recipe: str
    pipeline: str
    output_dir: str
    max_new_tokens: int
    trained_from: str
    heldout_questions: int | None = None


# The students by name. The tiny model is trained from scratch and its drafts come from the programmatic demo student
# (an untrained model writes nothing to critique); a pretrained student writes its own drafts, as in the paper.
STUDENTS: dict[str, DemoStudent] = {
    UNTRAINED: DemoStudent(
        DEMO_RECIPE, "pipeline-toy.yaml", DEMO_OUTPUT_DIR, 96, f"from the same random `{UNTRAINED}` weights"
    ),
    "builtin:smollm2-135m-instruct": DemoStudent(
        "smollm2-135m-instruct/toy",
        "pipeline-toy-smollm2.yaml",
        "outputs/cgd-demo-smollm2",
        192,
        "from pretrained SmolLM2-135M-Instruct (`builtin:smollm2-135m-instruct`), whose own greedy drafts the demo "
        "teacher critiqued and refined",
        heldout_questions=96,
    ),
}
# The held-out benchmarks, as `cgd eval` names them (after their files), and their columns in the report: the question
# alone, and the question inside the CGD context, split by the verdict on the draft. A student that only repeats the
# draft's answer scores on right drafts and nothing on wrong ones, so the wrong-draft column measures refinement.
ALONE, RIGHT_DRAFTS, WRONG_DRAFTS = "toy-heldout", "heldout_cgd_right_drafts", "heldout_cgd_wrong_drafts"
COLUMNS = {
    ALONE: "question alone",
    RIGHT_DRAFTS: "in CGD context, draft right",
    WRONG_DRAFTS: "in CGD context, draft wrong",
}
ANY_NUMBER = "question alone, harness grading"
# Training settings `cgd demo` sets itself, per condition and seed.
OWN_TRAINING_FLAGS = {
    "--dataset_name": "choose the sets with --conditions",
    "--model_name_or_path": f"choose the student with --student ({' or '.join(STUDENTS)})",
    "--seed": "give the seeds with --seeds",
    "--overwrite_output_dir": "a rerun trains afresh what is not finished; --retrain true trains everything again",
    "--config": "change a setting of the student's recipe with its own flag",
}


@dataclass
class DemoArguments:
    """
    Settings of `cgd demo`; any other flag is a training setting of the student's recipe (e.g. `--max_steps`).

    Args:
        student (`str`): The student: `builtin:tiny-digits` (trained from scratch, drafts by the demo student) or
            `builtin:smollm2-135m-instruct` (pretrained; it writes its own drafts).
        output_dir (`str`, *optional*): Where the data, the trained models, the evaluation and the report go; by
            default the student's folder (`outputs/cgd-demo`, `outputs/cgd-demo-smollm2`).
        conditions (`list[str]`): Conditions of `cgd build` to train (`all` for every one).
        seeds (`list[int]`): Training seeds; each condition is trained once per seed.
        eval_problems (`int`, *optional*): Score only the first held-out questions (by default all that the student
            probes: 160, or 96 for SmolLM2).
        max_new_tokens (`int`, *optional*): Token budget of each evaluated answer (96 for the tiny student, 192 for
            SmolLM2).
        retrain (`bool`): Train every run again, even those a previous `cgd demo` finished with the same settings.
    """

    student: str = field(default=UNTRAINED, metadata={"help": f"The student: one of {', '.join(STUDENTS)}."})
    output_dir: str | None = field(
        default=None, metadata={"help": "Data, models, evaluation and report (default: the student's folder)."}
    )
    conditions: list[str] = field(
        default_factory=lambda: list(DEMO_CONDITIONS),
        metadata={"help": "Conditions of `cgd build` to train, or `all`."},
    )
    seeds: list[int] = field(default_factory=lambda: [42], metadata={"help": "Training seeds."})
    eval_problems: int | None = field(default=None, metadata={"help": "First held-out questions only."})
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "Token budget of each evaluated answer (default: the student's)."}
    )
    retrain: bool = field(
        default=False, metadata={"help": "Train every run again, even those finished with the same settings."}
    )

    @property
    def spec(self) -> DemoStudent:
        return STUDENTS[self.student]


def pipeline_toy_recipe_path(student: str = UNTRAINED) -> Path:
    """The `cgd generate` recipe of a student's data, shipped in the package (the tiny student's is
    `examples/pipeline/toy.yaml`)."""
    return Path(str(resources.files("cgd_trainer.demo") / "recipes" / STUDENTS[student].pipeline))


def toy_recipe_path(student: str = UNTRAINED) -> Path:
    """The training recipe of a student in `cgd demo` (`tiny/toy` by default), shipped in the package."""
    from ..commands.recipes import recipe_path

    return Path(recipe_path(STUDENTS[student].recipe))


class DemoStepFailed(Exception):
    """A command of the demo ended with a non-zero exit status (it has printed why)."""

    def __init__(self, status: int):
        super().__init__(f"exit status {status}")
        self.status = status


def _generate_and_build(
    dataset: str, data_dir: Path, student: str = UNTRAINED, max_records: int | None = None
) -> Path:
    """`cgd generate` (the student's drafts, the demo teacher) on a dataset, then `cgd build`; returns the sets."""
    from ..commands import build, generate

    argv = [
        "--config",
        str(pipeline_toy_recipe_path(student)),
        "--dataset_name",
        dataset,
        "--output_dir",
        str(data_dir),
    ]
    status = generate.main([*argv, "--max_records", str(max_records)] if max_records else argv)
    if status != 0:
        raise DemoStepFailed(status)
    sets = data_dir / "sets"
    status = build.main(["--input", str(data_dir / "records.jsonl"), "--output_dir", str(sets)])
    if status != 0:
        raise DemoStepFailed(status)
    return sets


def make_demo_data(
    data_dir: str | Path, training_args: Any = None, student: str = UNTRAINED, heldout_questions: int | None = None
) -> tuple[Path, dict[str, Path]]:
    """
    Generates and builds the training sets, and the held-out benchmarks in the CGD context.

    Args:
        data_dir (`str` or `Path`): Where the generated records and the sets go.
        training_args (*optional*): The runs' training arguments; their record settings (`cgd_*`) render the
            benchmarks' questions as the trainer renders them (the library's defaults when `None`).
        student (`str`, *optional*): Whose drafts: a name of [`STUDENTS`].
        heldout_questions (`int`, *optional*): Probe only the first held-out questions (all 160 by default).

    Returns:
        `tuple`: The training sets' folder, and `{benchmark name: JSONL file}` for the CGD-context benchmarks (`id`,
        `question`, `answer`): the held-out records' user turns exactly as `CGDTrainer` renders them (`single_turn`),
        one file for the records whose draft was right and one for those whose draft was wrong.

    Raises:
        `RuntimeError`: when a held-out question's numbers occur in the training data.
    """
    from ..record_format import record_format
    from ..sources import read_jsonl, write_jsonl
    from .problems import TOY_HELDOUT_SIZE, toy_key

    fmt = record_format(training_args)
    data_dir = Path(data_dir)
    sets = _generate_and_build("builtin:toy", data_dir, student)
    heldout_sets = _generate_and_build(HELDOUT, data_dir / "heldout", student, heldout_questions or TOY_HELDOUT_SIZE)
    heldout = list(read_jsonl(heldout_sets / "cgd.jsonl"))
    # Disjoint by construction; checked on the numbers, so that a question reworded with another name still counts.
    seen = {toy_key(row["prompt"]) for row in read_jsonl(sets / "cgd.jsonl")}
    overlap = [record["prompt"] for record in heldout if toy_key(record["prompt"]) in seen]
    if overlap:
        raise RuntimeError(f"{len(overlap)} held-out questions occur in the training data, e.g. {overlap[0]!r}.")
    files = {}
    for name, verdict in ((RIGHT_DRAFTS, "right"), (WRONG_DRAFTS, "wrong")):
        rows = [
            {
                "id": record["id"],
                "question": fmt.render("cgd", fmt.parts(record), "single_turn")[-1]["content"],
                "answer": record["reference_answer"],
            }
            for record in heldout
            if record["verdict"] == verdict
        ]
        files[name] = data_dir / f"{name}.jsonl"
        write_jsonl(files[name], rows)
    return sets, files


def refined_answer_nll(
    model_dir: str | Path, records: list[dict[str, Any]], training_args: Any = None, batch_size: int = 16
) -> dict[str, float]:
    """
    How well a model predicts the held-out refined answers: the mean negative log-likelihood per token (nats) of each
    record's refined answer, teacher-forced, after the CGD context (`single_turn`, rendered as the trainer renders it)
    and after the question alone (the paper's inference).

    A graded answer is right or wrong on one token; this averages over every token of every answer, so it moves little
    with the floating-point path of a CPU or the order of the training data, and it tells which context a model was
    trained on: only a CGD student is at home in the CGD context, only an SFT-style student after the bare question.

    Args:
        model_dir (`str` or `Path`): The model folder.
        records (`list[dict]`): CGD records (`prompt`, `initial_response`, `critique`, `refined_response`).
        training_args (*optional*): The runs' training arguments, for their `cgd_*` wording.
        batch_size (`int`): Sequences per forward pass.

    Returns:
        `dict[str, float]`: `{"cgd_context": nll, "question_alone": nll}`.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..evaluation.diagnose import context_ids, score_sequences, target_ids
    from ..record_format import record_format

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    fmt = record_format(training_args)
    contexts = {
        name: [fmt.render(kind, fmt.parts(record), "single_turn") for record in records]
        for name, kind in (("cgd_context", "cgd"), ("question_alone", "question_alone"))
    }
    targets = [target_ids(record["refined_response"], tokenizer) for record in records]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    result = {}
    for name, prompts in contexts.items():
        pairs = [(context_ids(prompt, tokenizer), target) for prompt, target in zip(prompts, targets)]
        scores = score_sequences(model, pairs, pad, batch_size)
        result[name] = statistics.fmean(value for token_nll, _ in scores for value in token_nll)
    return result


def resolve_conditions(names: list[str]) -> list[str]:
    """The conditions to train, in `cgd build`'s order; `all` means every one. Unknown names are a usage error."""
    from ..commands.parser import UsageError, did_you_mean
    from ..conditions.config import CONDITIONS

    for name in names:
        if name not in (*CONDITIONS, "all"):
            raise UsageError(
                f"--conditions: unknown condition {name!r}{did_you_mean(name, CONDITIONS)}; "
                f"choose from {', '.join(CONDITIONS)} or all."
            )
    return list(CONDITIONS) if "all" in names else [name for name in CONDITIONS if name in names]


def run_label(condition: str, seed: int) -> str:
    """The label of one trained model in the evaluation."""
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
        for benchmark in COLUMNS:
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


def render_table(table: dict[str, dict[str, Any]]) -> str:
    """The comparison as a markdown table (percentages, `mean ± sd` when there are several seeds)."""
    from ..evaluation.report import markdown_table, percent

    def cell(value: dict[str, Any]) -> str:
        text = percent(value["mean"])
        return text if value["sd"] is None else f"{text} ± {percent(value['sd'])}"

    keys = (*COLUMNS, ANY_NUMBER, "boxed_rate", "critique_rate")
    headers = ["student", *(f"{COLUMNS[key]} (%)" for key in COLUMNS), f"{ANY_NUMBER} (%)"]
    headers += ["boxed (%)", "critique-style (%)"]
    rows = [[name, *(cell(row[key]) for key in keys)] for name, row in table.items()]
    return markdown_table(headers, rows)


def scored_questions(counts: dict[str, int], drafted: dict[str, int] | None = None, cap: int | None = None) -> str:
    """
    The report's first words: which held-out questions each column scored.

    The CGD-context benchmarks split the held-out questions the student drafted by the verdict on the draft, and
    `--eval_problems N` keeps the first N of *each* benchmark; then the three columns no longer score the same
    questions (the first N right drafts are not among the first N questions), and the report says so, per column.

    Args:
        counts (`dict[str, int]`): The questions each benchmark scored (`problems` in the `cgd eval` summary).
        drafted (`dict[str, int]`, *optional*): The questions of each CGD-context benchmark before the cut (its
            file's rows); unknown when `None`.
        cap (`int`, *optional*): The `--eval_problems` the evaluation ran with.

    Returns:
        `str`: A sentence, without its final full stop.
    """
    from .problems import TOY_HELDOUT_SIZE

    split = {name: (drafted or {}).get(name) for name in (RIGHT_DRAFTS, WRONG_DRAFTS)}
    # The held-out questions the student drafted, all 160 or the first ones (SmolLM2 drafts the first 96).
    pool = None if None in split.values() else split[RIGHT_DRAFTS] + split[WRONG_DRAFTS]
    available = {ALONE: (drafted or {}).get(ALONE, pool), **split}  # the question-alone file, where it is known

    def cut(name: str) -> bool:
        if available[name] is not None:
            return counts[name] < available[name]
        return cap is not None and counts[name] >= cap  # unknown size: at the cap, it may have had more

    def questions(size: int | None) -> str:
        if size is None:
            return "the toy task's held-out questions"
        if size >= TOY_HELDOUT_SIZE:
            return f"the toy task's {TOY_HELDOUT_SIZE} held-out questions"
        return f"the first {size} of the toy task's {TOY_HELDOUT_SIZE} held-out questions"

    # Nothing cut, and the two CGD-context columns split the first one's questions: one count says it all.
    if not any(cut(name) for name in COLUMNS) and counts[RIGHT_DRAFTS] + counts[WRONG_DRAFTS] == counts[ALONE]:
        return (
            f"Scored on {questions(counts[ALONE])}, none of them in training ({counts[RIGHT_DRAFTS]} with a right "
            f"draft, {counts[WRONG_DRAFTS]} with a wrong one)"
        )

    def column(name: str, what: str) -> str:
        if not cut(name):
            return f"{counts[name]} {what} (all of them)"
        of = f" of {available[name]}" if available[name] is not None else ""
        return f"{counts[name]} {what} (the first {counts[name]}{of})"

    limit = f", at most {cap} per column (`--eval_problems {cap}`)" if cap is not None else ""
    return (
        f"Scored on {questions(pool)}, none of them in training{limit}: {column(ALONE, 'asked alone')}, and in the "
        f"CGD context {column(RIGHT_DRAFTS, 'whose draft was right')} and "
        f"{column(WRONG_DRAFTS, 'whose draft was wrong')}, so the two CGD-context columns are not a split of the "
        "first column's questions"
    )


def write_report(
    table: dict[str, dict[str, Any]],
    summary: dict[str, Any],
    args: DemoArguments,
    seconds: dict[str, float],
    drafted: dict[str, int] | None = None,
) -> str:
    """
    Writes `comparison.md`, `comparison.json` and `comparison.png` under the output folder; returns the markdown.
    `drafted` is the size of each CGD-context benchmark before `--eval_problems` cuts it (see [`scored_questions`]).
    """
    from ..evaluation.report import plot_benchmark_accuracy

    out = Path(args.output_dir)
    seeds = ", ".join(str(s) for s in args.seeds)
    # Two-line tick labels, so that three groups fit side by side under a narrow figure.
    ticks = {b: COLUMNS[b].replace(", ", ",\n") for b in COLUMNS}
    means = {name: {ticks[b]: row[b]["mean"] for b in COLUMNS} for name, row in table.items()}
    errors = {name: {ticks[b]: row[b]["sd"] for b in COLUMNS} for name, row in table.items()}
    title = f"Held-out accuracy (seed{'s' if len(args.seeds) > 1 else ''} {seeds})"
    plot_benchmark_accuracy(means, out / "comparison.png", title=title, errors=errors)
    counts = {benchmark["name"]: benchmark["problems"] for benchmark in summary["benchmarks"]}
    text = "\n".join(
        [
            "# cgd demo: held-out accuracy per condition",
            "",
            f"{scored_questions(counts, drafted, args.eval_problems)}. Greedy answers, graded with the "
            f"`{summary['config']['protocol']}` preset. Seeds: {seeds} (a seed orders the training data; every run "
            f"starts {args.spec.trained_from}). Training: the `{args.spec.recipe}` recipe, the same budget for "
            "every condition. Untrained: that model before training.",
            "",
            render_table(table),
            "",
            f"- **{COLUMNS[ALONE]}**: the paper's inference — the question as the only user turn, no system prompt.",
            "- **in CGD context**: the question inside the CGD training context, with the held-out question's draft "
            "(written as the training drafts were) and the demo teacher's critique, split by the verdict on the draft "
            "(a student that repeats the draft's answer scores on right drafts only); only the CGD-context conditions "
            "are trained on this input.",
            f"- **{ANY_NUMBER}**: the answers to the question alone graded by the harness preset, which also reads "
            "a final number without a box (the `sft` condition trains on the bare reference answers).",
            "- boxed and critique-style: format drift of the answers to the question alone.",
            "",
            f"Training seconds per run: {json.dumps(seconds)}. Evaluation: {summary['seconds']} s "
            "(`eval/report.md` has every model and sample).",
            "",
            "docs/demo.md in cgd-trainer says what these numbers do and do not show, with the measured tables.",
            "",
            "![held-out accuracy](comparison.png)",
            "",
        ]
    )
    (out / "comparison.md").write_text(text, encoding="utf-8")
    (out / "comparison.json").write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    return text


def make_parser(prog: str | None = "cgd demo"):
    """
    The `cgd demo` parser: the [`DemoArguments`]; the flags it does not take are training flags, which the student's
    recipe is parsed with (see [`parse`]).
    """
    from transformers import HfArgumentParser

    # No abbreviations: `--seed 7` must not silently become `--seeds 7`.
    return HfArgumentParser((DemoArguments,), prog=prog, allow_abbrev=False)


def parse(argv: list[str]) -> tuple[DemoArguments, list[str], Any]:
    """
    Splits the arguments into the demo's own settings and the training flags, and checks both before any work.

    Returns:
        `tuple`: The [`DemoArguments`], the training flags, and the training arguments they give with the recipe.

    Raises:
        [`UsageError`]: for a setting the demo makes itself, a bad demo setting, a misspelt training flag, or a
            missing evaluation extra.
    """
    from ..commands import train
    from ..commands.parser import UsageError, did_you_mean

    args, training_flags = make_parser().parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    for flag in training_flags:
        name = flag.split("=", 1)[0]
        if name in OWN_TRAINING_FLAGS:
            raise UsageError(f"cgd demo sets {name} itself for each run: {OWN_TRAINING_FLAGS[name]}.")
    if args.student not in STUDENTS:
        raise UsageError(
            f"--student: unknown student {args.student!r}.{did_you_mean(args.student, STUDENTS)} "
            f"Choose from {', '.join(STUDENTS)}."
        )
    args.output_dir = args.output_dir or args.spec.output_dir
    if len(set(args.seeds)) != len(args.seeds):
        raise UsageError(f"--seeds: each seed once, got {' '.join(map(str, args.seeds))}.")
    if args.eval_problems is not None and args.eval_problems < 1:
        raise UsageError(f"--eval_problems: at least 1 (or leave it out for all), got {args.eval_problems}.")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise UsageError(f"--max_new_tokens: at least 1, got {args.max_new_tokens}.")
    args.max_new_tokens = args.max_new_tokens or args.spec.max_new_tokens
    args.eval_problems = args.eval_problems or args.spec.heldout_questions
    resolve_conditions(args.conditions)
    for module in ("math_verify", "matplotlib"):
        try:
            importlib.import_module(module)
        except ImportError:
            raise UsageError(
                f"cgd demo scores the students with cgd eval, which needs {module.replace('_', '-')}: "
                "pip install 'cgd-trainer[eval]'."
            ) from None
    recipe = str(toy_recipe_path(args.student))
    _, training_args, *_ = train.parse(["--config", recipe, *training_flags], prog="cgd demo")
    if training_args.cgd_layout not in ("auto", "single_turn"):
        raise UsageError(
            f"--cgd_layout {training_args.cgd_layout}: cgd demo scores students in the single_turn CGD context; "
            "leave the layout at auto (the demo's students have a chat template)."
        )
    return args, training_flags, training_args


def evaluate_and_report(
    args: DemoArguments, benchmarks: dict[str, Path], seconds: dict[str, float] | None = None
) -> dict[str, dict[str, Any]]:
    """
    Evaluates the untrained model and the trained runs of `args` (in `<output_dir>/<condition>/seed-<seed>`) with
    `cgd eval`, writes the comparison and prints it. A rerun reuses the samples already in `<output_dir>/eval`.

    Returns:
        `dict`: The comparison table (see [`aggregate`]).
    """
    from ..evaluation import EvalConfig, run_eval
    from ..sources import read_jsonl

    out = Path(args.output_dir)
    conditions = resolve_conditions(args.conditions)
    models = [{"label": "untrained", "model": args.student}]
    models += [
        {"label": run_label(condition, seed), "model": str(out / condition / f"seed-{seed}")}
        for seed in args.seeds
        for condition in conditions
    ]
    config = EvalConfig(
        models=models,
        benchmarks=[HELDOUT, *(str(path) for path in benchmarks.values())],
        system_prompt="",
        max_new_tokens=args.max_new_tokens,
        max_problems=args.eval_problems,
        batch_size=32,
        output_dir=str(out / "eval"),
    )
    summary = run_eval(config)["summary"]
    table = aggregate(summary, conditions, args.seeds)
    drafted = {name: sum(1 for _ in read_jsonl(path)) for name, path in benchmarks.items()}
    print("\n" + write_report(table, summary, args, seconds or {}, drafted))
    print(f"Report: {out / 'comparison.md'}")
    return table


def run(argv: list[str]) -> dict[str, dict[str, Any]]:
    """
    `cgd demo [--conditions ...] [--seeds ...] [training flags]`: generate, build, train each condition from scratch,
    evaluate on the held-out questions and print the comparison.

    Returns:
        `dict`: The comparison table (see [`aggregate`]).

    Raises:
        [`DemoStepFailed`]: when one of the commands it runs ends with a non-zero exit status (it has said why).
    """
    from .. import runs
    from ..commands import train

    args, training_flags, training_args = parse(argv)
    out = Path(args.output_dir)
    # A student with a probing limit has (at least) the questions scored probed, however many are asked for.
    limit = args.spec.heldout_questions and max(args.spec.heldout_questions, args.eval_problems)
    sets, benchmarks = make_demo_data(out / "data", training_args, args.student, limit)
    seconds: dict[str, float] = {}
    conditions = resolve_conditions(args.conditions)
    for seed in args.seeds:
        for condition in conditions:
            label, run_dir = run_label(condition, seed), out / condition / f"seed-{seed}"
            run_argv = [
                "--config",
                str(toy_recipe_path(args.student)),
                "--dataset_name",
                str(sets / f"{condition}.jsonl"),
            ]
            run_argv += ["--output_dir", str(run_dir), "--seed", str(seed), *training_flags]
            # A rerun (after a crash, or to add conditions or seeds) keeps what already finished with these arguments:
            # the run's own record (`cgd_run.json`, the one `cgd train` keeps), which also holds the data's sha256.
            script_args, run_args, model_args, *_ = train.parse(run_argv, prog="cgd demo")
            arguments = runs.run_arguments(script_args, run_args, model_args)
            finished = None if args.retrain else runs.finished_run(run_dir, arguments)
            if finished is not None:
                print(f"cgd demo: reusing {run_dir}, trained with the same settings (--retrain true trains it again).")
                seconds[label] = finished.get("seconds")
                continue
            status = train.main([*run_argv, "--overwrite_output_dir", "true"], prog="cgd demo")
            if status != 0:
                raise DemoStepFailed(status)
            seconds[label] = runs.saved_run(run_dir).get("seconds")
    return evaluate_and_report(args, benchmarks, seconds)


def main(argv: list[str]) -> int:
    """`cgd demo`'s exit status: 0 when the comparison is printed, else the status of the step that failed."""
    try:
        run(argv)
    except DemoStepFailed as failure:
        return failure.status
    return 0
