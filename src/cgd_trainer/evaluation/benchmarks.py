"""The benchmarks of `cgd eval`: the registry of the paper's maths sets, how names resolve, and how problems load."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..grading import parse_gold
from ..sources import LOCAL_FORMATS, is_builtin, load_source, write_jsonl

# Column names tried, in order, when a local file or hub dataset does not name its fields.
QUESTION_FIELDS = ("problem", "question", "prompt", "Problem", "Question", "input")
ANSWER_FIELDS = (
    "answer",
    "final_answer",
    "expected_answer",
    "gold",
    "reference_answer",
    "reference",
    "Answer",
    "solution",
)
ID_FIELDS = ("id", "unique_id", "idx", "problem_id", "ID")


@dataclass(frozen=True)
class Benchmark:
    """
    Where a benchmark's problems come from and how to read them.

    Args:
        name (`str`): Short name used in reports.
        path (`str`): Hub dataset id, or a local file.
        split (`str`): Split to evaluate.
        question_field (`str` or `None`): Column of the problem text; `None` picks the first of `QUESTION_FIELDS`.
        answer_field (`str` or `None`): Column of the reference answer; `None` picks the first of `ANSWER_FIELDS`.
        config (`str`, *optional*): Hub dataset configuration.
        id_field (`str`, *optional*): Column of a stable problem id; the row index otherwise.
        test (`bool`): Whether the set is a reported test set (checkpoint selection refuses it).
        note (`str`): Provenance, shown in the docs and the summary.
    """

    name: str
    path: str
    split: str = "test"
    question_field: str | None = None
    answer_field: str | None = None
    config: str | None = None
    id_field: str | None = None
    test: bool = True
    note: str = ""

    @property
    def local(self) -> bool:
        return Path(self.path).is_file()

    def identity(self) -> tuple[str, ...]:
        """What makes two benchmarks the same data: the resolved file, or the hub id, configuration and split."""
        if self.local:
            return ("file", str(Path(self.path).resolve()))
        return ("hub", self.path.lower(), self.config or "", self.split)


# Registry of the paper's maths benchmarks. The ids and fields are those used by public harnesses (lighteval,
# Math-Verify, SimpleRL-Zoo evaluation); see docs/evaluation.md for what could not be checked offline.
REGISTRY: dict[str, Benchmark] = {
    "math500": Benchmark(
        "math500", "HuggingFaceH4/MATH-500", "test", "problem", "answer", id_field="unique_id", note="500 problems"
    ),
    "amc23": Benchmark("amc23", "zwhe99/amc23", "test", "question", "answer", note="40 problems; answers are floats"),
    "aime24": Benchmark("aime24", "HuggingFaceH4/aime_2024", "train", "problem", "answer", note="30 problems"),
    "aime25": Benchmark("aime25", "yentinglin/aime_2025", "train", "problem", "answer", note="30 problems"),
    "gsm8k": Benchmark(
        "gsm8k", "openai/gsm8k", "test", "question", "answer", config="main", note="1319 problems; gold after ####"
    ),
    "minerva": Benchmark(
        "minerva", "zwhe99/simplerl-minerva-math", "test", "problem", "answer", note="272 problems (Minerva-Math)"
    ),
    "olympiadbench": Benchmark(
        "olympiadbench",
        "zwhe99/simplerl-OlympiadBench",
        "test",
        "question",
        "final_answer",
        note="675 problems (English maths, open-ended); final_answer is a list",
    ),
}
ALIASES = {
    "math-500": "math500",
    "math_500": "math500",
    "amc": "amc23",
    "aime2024": "aime24",
    "aime_2024": "aime24",
    "aime2025": "aime25",
    "aime_2025": "aime25",
    "minerva_math": "minerva",
    "minerva-math": "minerva",
    "minervamath": "minerva",
    "olympiad": "olympiadbench",
    "olympiad_bench": "olympiadbench",
}


@dataclass
class Problem:
    """One benchmark item: its id, question, reference answer as given and as parsed (`None`: ungradable)."""

    id: str
    question: str
    gold: str
    gold_parsed: list | None


def resolve_benchmark(
    spec: str,
    question_field: str | None = None,
    answer_field: str | None = None,
    id_field: str | None = None,
    split: str | None = None,
) -> Benchmark:
    """
    Turns a benchmark name from the config into a [`Benchmark`].

    Args:
        spec (`str`): A registry name (`math500`, `amc23`, `aime24`, `aime25`, `gsm8k`, `minerva`, `olympiadbench`),
            a local `.jsonl`/`.json`/`.parquet`/`.csv` file, a hub dataset written `owner/name[:config][@split]`, or
            `builtin:demo`.
        question_field, answer_field, id_field (`str`, *optional*): Columns of a local file or hub dataset.
        split (`str`, *optional*): Split of a hub dataset written without `@split` (default `test`).

    Returns:
        [`Benchmark`]
    """
    key = ALIASES.get(spec.lower(), spec.lower())
    if key in REGISTRY:
        return REGISTRY[key]
    if is_builtin(spec):
        # The demo records' questions and reference answers: an offline smoke test (they are training data).
        return Benchmark(spec.partition(":")[2], spec, "train", question_field, answer_field, test=False)
    path = Path(spec)
    if path.is_file():
        if path.suffix.lower() not in LOCAL_FORMATS:
            raise ValueError(f"Cannot read benchmark file {spec}: use one of {sorted(LOCAL_FORMATS)}.")
        return Benchmark(path.stem, spec, "train", question_field, answer_field, id_field=id_field, test=False)
    if "/" not in spec:
        raise ValueError(
            f"Unknown benchmark {spec!r}: not a registry name ({', '.join(REGISTRY)}), not an existing file, and "
            "not a hub dataset id (`owner/name[:config][@split]`)."
        )
    name, _, hub_split = spec.partition("@")
    hub_id, _, config = name.partition(":")
    hub_split = hub_split or split or "test"
    # A registry dataset named by its hub id is still that (test) benchmark.
    known = next((b for b in REGISTRY.values() if b.path.lower() == hub_id.lower() and b.split == hub_split), None)
    if known is not None and (config or None) in (None, known.config):
        return known
    short = hub_id.split("/")[-1] + ("" if hub_split == "test" else f"@{hub_split}")
    return Benchmark(
        short, hub_id, hub_split, question_field, answer_field, config=config or None, id_field=id_field, test=False
    )


def _pick(columns: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str, benchmark: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise ValueError(
                f"Benchmark {benchmark!r} has no column {wanted!r} for the {what}; it has {list(columns)}."
            )
        return wanted
    for name in candidates:
        if name in columns:
            return name
    raise ValueError(
        f"Benchmark {benchmark!r}: cannot tell which column holds the {what} (tried {list(candidates)}); it has "
        f"{list(columns)}. Set `{what}_field`."
    )


def normalize_gold(value: Any) -> str:
    """
    Brings a reference answer to text: lists are joined with commas (OlympiadBench's `final_answer`), GSM8K
    solutions are cut to what follows `####` (without thousands separators), integral floats lose their `.0`.

    Args:
        value: The reference as stored in the dataset.

    Returns:
        `str`: The reference answer; empty when there is none.
    """
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        parts = [normalize_gold(v) for v in value]
        return ", ".join(p for p in parts if p)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    if "####" in text:
        text = text.rsplit("####", 1)[1].strip().replace(",", "")
    return text


def load_problems(benchmark: Benchmark, max_problems: int | None = None) -> list[Problem]:
    """
    Loads a benchmark's problems with `datasets` and parses their reference answers.

    Args:
        benchmark ([`Benchmark`]): What to load.
        max_problems (`int`, *optional*): Keep only the first problems (smoke tests).

    Returns:
        `list[Problem]`: In dataset order; an unparsable reference gives `gold_parsed=None`.

    Raises:
        `ValueError`: naming the row and the column, for a missing or empty question.
    """
    if is_builtin(benchmark.path) or benchmark.local:
        dataset = load_source(benchmark.path)["train"]
    else:
        from datasets import load_dataset

        try:
            dataset = load_dataset(benchmark.path, name=benchmark.config, split=benchmark.split)
        except (ConnectionError, FileNotFoundError, OSError, ValueError) as error:
            reason = " ".join(str(error).split())
            raise ValueError(
                f"Benchmark {benchmark.name!r}: could not load {benchmark.path} (split {benchmark.split}) from the "
                f"hub or its cache ({type(error).__name__}: {reason}). Without hub access, write it to a file once "
                f"where there is (`cgd benchmarks --write {benchmark.name} --output_dir <dir>`) and name that file."
            ) from error
    if max_problems is not None:
        dataset = dataset.select(range(min(max_problems, len(dataset))))
    columns = dataset.column_names
    question_field = _pick(columns, benchmark.question_field, QUESTION_FIELDS, "question", benchmark.name)
    answer_field = _pick(columns, benchmark.answer_field, ANSWER_FIELDS, "answer", benchmark.name)
    id_field = benchmark.id_field or next((c for c in ID_FIELDS if c in columns), None)
    problems, seen = [], set()
    for index, row in enumerate(dataset):
        question = row.get(question_field)
        if not isinstance(question, str) or not question.strip():
            raise ValueError(
                f"Benchmark {benchmark.name!r}, row {index}: the question column {question_field!r} is empty or not "
                "text. Fix or drop the row."
            )
        problem_id = str(row[id_field]) if id_field and row.get(id_field) is not None else str(index)
        if problem_id in seen:  # ids only need to be unique within a run: fall back to the row index
            problem_id = f"{problem_id}#{index}"
        seen.add(problem_id)
        gold = normalize_gold(row.get(answer_field))
        problems.append(Problem(problem_id, question, gold, parse_gold(gold) if gold else None))
    return problems


def write_problems(problems: Sequence[Problem], path: str | Path) -> int:
    """
    Writes a benchmark's problems to a JSONL file (`id`, `question`, `answer`): what `cgd eval` and `cgd build
    --decontaminate` read back as a local benchmark, offline.

    Returns:
        `int`: The number of problems written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = ({"id": p.id, "question": p.question, "answer": p.gold} for p in problems)
    return write_jsonl(path, rows, atomic=True)


def benchmark_info(benchmark: Benchmark, problems: Sequence[Problem]) -> dict[str, Any]:
    """
    What the summary and the selection report say about a benchmark: its source and how many problems are graded.

    Args:
        benchmark ([`Benchmark`]): The benchmark.
        problems (`Sequence[Problem]`): Its loaded problems.

    Returns:
        `dict`: `name`, `source`, `test`, `problems` (graded), `ungradable` and the first 50 `ungradable_ids`.
    """
    ungradable = [p.id for p in problems if p.gold_parsed is None]
    source = benchmark.path + (f":{benchmark.config}" if benchmark.config else "")
    if not benchmark.local and not is_builtin(benchmark.path):
        source += f"@{benchmark.split}"
    return {
        "name": benchmark.name,
        "source": source,
        "test": benchmark.test,
        "problems": len(problems) - len(ungradable),
        "ungradable": len(ungradable),
        "ungradable_ids": ungradable[:50],
    }
