"""The package's shape: imports only go down the layers, no module imports another in a circle, and the `cgd`
command starts without torch or TRL."""

from __future__ import annotations

import ast
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "cgd_trainer"

# Each unit (a top-level module or subpackage of cgd_trainer) and its layer. A module may import from a lower layer or
# from its own unit, never from a higher layer nor from another unit of the same layer (one stage never reaches into
# another stage's internals).
LAYERS = [
    ("templates", "errors"),
    ("records",),
    ("record_format",),  # the CGD record: columns, settings, the one context renderer
    ("sources", "grading", "pretrained"),
    ("backends",),
    ("trl_boundary",),  # the one module that touches TRL's internals (tests/training/test_trl_boundary.py)
    ("tokenization",),  # examples tokenized as TRL tokenizes them, a batch at a time, each text once
    ("config", "collator"),
    ("trainer",),
    ("__init__",),  # the package root: lazy public names
    ("pipeline", "conditions", "evaluation", "runs"),  # the stages, and a training run's output folder
    # What launchers run (`accelerate launch -m cgd_trainer.scripts.train`): the training run itself, as TRL's
    # `trl/scripts/sft.py`. Its `if __name__ == "__main__":` block reaches up to `cli` for the command's errors.
    ("scripts",),
    ("commands",),
    ("demo",),
    ("cli",),
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that a module imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    # A script's `if __name__ == "__main__":` block is its entry when launched, not part of the module others import.
    tree.body = [node for node in tree.body if not _is_main_block(node)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from . import x` names a module when x is one.
            targets = [
                f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in known else prefix for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target.startswith("cgd_trainer") and target != name:
                found.add(target)
    return found


def _is_main_block(node: ast.stmt) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


def unit_of(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def test_every_unit_has_a_layer():
    units = {unit_of(name) for name in modules()}
    assert units <= set(RANK), f"add {sorted(units - set(RANK))} to LAYERS in this test"


def test_the_import_reader_sees_relative_and_function_level_imports(graph):
    assert "cgd_trainer.templates" in graph["cgd_trainer.collator"]  # `from .templates import ...`
    assert "cgd_trainer.pipeline" in graph["cgd_trainer.commands.generate"]  # inside a function
    assert "cgd_trainer.commands" in graph["cgd_trainer.commands.build"]  # `from . import EXIT_OK`


def test_imports_only_go_down(graph):
    wrong = []
    for name, targets in graph.items():
        for target in targets:
            a, b = unit_of(name), unit_of(target)
            if a != b and RANK[b] >= RANK[a]:
                wrong.append(f"{name} -> {target}")
    assert not wrong, "imports that go up or sideways between layers:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles(graph):
    # Depth-first search; a back edge closes a cycle.
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join(stack[stack.index(target) :] + [node, target]))
            elif target not in state:
                visit(target, stack + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_registries_name_real_classes():
    from cgd_trainer.backends import REGISTRY, Backend, backend_class
    from cgd_trainer.sources import BUILTIN_DATASETS, BUILTIN_MODELS

    for kind in REGISTRY:
        assert issubclass(backend_class(kind), Backend)
    for path in {**BUILTIN_DATASETS, **BUILTIN_MODELS}.values():
        module, _, attr = path.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), path
    # `sources` names the built-in models without importing the demo; the demo's registry builds them.
    from cgd_trainer.demo.tiny import BUILTIN_TOKENIZERS
    from cgd_trainer.pretrained import PACKAGED_MODELS

    assert set(BUILTIN_MODELS) == {f"builtin:tiny-{key}" for key in BUILTIN_TOKENIZERS} | set(PACKAGED_MODELS)


PROBE = """
import json, sys
from cgd_trainer.cli import main
try:
    status = main({args!r})
except SystemExit as exit:
    status = exit.code
heavy = sorted(name for name in ("torch", "trl", "transformers.trainer", "datasets", "vllm") if name in sys.modules)
print(json.dumps({{"status": status, "heavy": heavy}}))
"""


@pytest.mark.parametrize(
    "args",
    [[], ["--help"], ["build", "--help"], ["generate", "--help"], ["eval", "--help"], ["diagnose", "--help"]]
    + [["models", "--help"]],
    ids=" ".join,
)
def test_cli_starts_without_torch_or_trl(args):
    run = subprocess.run([sys.executable, "-c", PROBE.format(args=args)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result == {"status": 0, "heavy": []}


def test_importing_the_package_costs_no_torch():
    code = "import sys, cgd_trainer; print('torch' in sys.modules or 'trl' in sys.modules, cgd_trainer.__version__)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.stdout.split()[0] == "False", run.stderr[-2000:]
    # ...and the public names still come from the top of the package.
    from cgd_trainer import CGDConfig, CGDTrainer, CritiqueCollator

    assert CGDTrainer.__module__ == "cgd_trainer.trainer" and CGDConfig.__name__ == "CGDConfig"
    assert CritiqueCollator.__module__ == "cgd_trainer.collator"


def test_stages_are_registered_objects_not_setting_names_built_from_strings():
    from cgd_trainer.pipeline import STAGES, GenerateConfig

    # Only the registry spells a stage's setting names; everything else asks its Stage.
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name != "stages.py" and re.search(r"f[\"']\{stage\}_", path.read_text("utf-8"))
    ]
    assert not offenders, offenders
    config = GenerateConfig(critique_max_new_tokens=7, refine_stop=["###"], probe_stop_token_ids=[5])
    seen: list[str] = ["question"]
    for stage in STAGES.values():
        assert set(stage.reads) <= set(seen), f"{stage.name} reads what no earlier stage writes"
        seen.append(stage.output)
        for name in (stage.template, stage.system, stage.budget, stage.stop, stage.stop_token_ids):
            assert hasattr(config, name), f"{stage.name}: GenerateConfig has no {name}"
    assert [s.role for s in STAGES.values()] == ["student", "teacher", "teacher"]
    assert config.sampling("critique").max_tokens == 7 and config.sampling("probe").max_tokens == 16384
    assert config.sampling("refine").stop == ("###",) and config.sampling("probe").stop_token_ids == (5,)


def test_every_command_module_has_the_same_three_functions():
    # `make_parser()`, `run(argv)` (the result, for scripts and tests) and `main(argv) -> int` (the exit status).
    import inspect as pyinspect

    from cgd_trainer.cli import COMMANDS

    for name, (module_name, _) in COMMANDS.items():
        module = importlib.import_module(module_name)
        for function in ("make_parser", "run", "main"):
            assert callable(getattr(module, function, None)), f"cgd {name}: {module_name} has no {function}()"
        assert (
            "argv" in pyinspect.signature(module.run).parameters
            and "argv" in pyinspect.signature(module.main).parameters
        )
        parser = module.make_parser()
        assert parser.prog is None or name in parser.prog or parser.prog.startswith("cgd"), (name, parser.prog)
