"""TRL's internals that cgd_trainer relies on, all in `cgd_trainer.trl_boundary`: the installed TRL is a release they
were checked on, each one still has the shape relied on, and no other module names them. A TRL upgrade that changes
one fails here, with its name, instead of deep inside training."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest
import trl
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from trl import SFTTrainer
from trl.trainer.base_trainer import _BaseTrainer

from cgd_trainer import CGDTrainer, trl_boundary
from cgd_trainer.trl_boundary import BARE_TRAINER_ATTRIBUTES, CHECKED_ON, PRIVATE_ATTRIBUTES, TRL_REQUIREMENT
from helpers import build_model, make_config

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "cgd_trainer"
BOUNDARY = PACKAGE / "trl_boundary.py"
UPGRADE = (
    f"TRL {trl.__version__} changed an internal that src/cgd_trainer/trl_boundary.py relies on (checked on "
    f"{TRL_REQUIREMENT}): fix the function that uses it there, then record the new version in CHECKED_ON."
)

# Hooks of SFTTrainer that CGDTrainer overrides by name (TRL calls them); each must keep TRL's signature.
OVERRIDDEN_HOOKS = {("trainer.py", "_prepare_dataset")}
# TRL's convention for a trainer class: the model card's tags, name and paper, declared as class attributes.
DECLARED_CLASS_ATTRIBUTES = {("trainer.py", name) for name in ("_tag_names", "_name", "_paper")}


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


# ---------------------------------------------------------------------------------------------------------- versions


def test_pyproject_allows_exactly_the_checked_trl_range():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    dependencies = text.split("dependencies = [", 1)[1].split("]", 1)[0]
    (pinned,) = re.findall(r'"trl\s*([^"\[;]+)"', dependencies)
    assert SpecifierSet(pinned) == SpecifierSet(TRL_REQUIREMENT), (
        f"pyproject.toml allows trl{pinned} but trl_boundary.TRL_REQUIREMENT is {TRL_REQUIREMENT}: keep them equal"
    )


def test_installed_trl_is_a_checked_release():
    installed = Version(trl.__version__)
    assert installed in SpecifierSet(TRL_REQUIREMENT), (
        f"TRL {installed} is installed, but cgd_trainer's use of TRL internals was checked on {TRL_REQUIREMENT} "
        "only (src/cgd_trainer/trl_boundary.py): install a checked TRL, or run this file on the new one and update "
        "CHECKED_ON, TRL_REQUIREMENT and pyproject.toml."
    )
    checked_minors = {Version(v).release[:2] for v in CHECKED_ON.values()}
    assert installed.release[:2] in checked_minors, (
        f"no internal was checked on TRL {installed.major}.{installed.minor}"
    )


def test_every_checked_version_is_in_the_allowed_range():
    outside = {
        name: version for name, version in CHECKED_ON.items() if Version(version) not in SpecifierSet(TRL_REQUIREMENT)
    }
    assert not outside, f"CHECKED_ON names versions outside {TRL_REQUIREMENT}: {outside}"


# ------------------------------------------------------------------------------------------------------------ shapes


SIGNATURES = [
    ("trl.data_utils._tokenize", trl_boundary._tokenize, ["processing_class", "input", "apply_chat_template_kwargs"]),
    (
        "SFTTrainer._prepare_dataset",
        SFTTrainer._prepare_dataset,
        ["self", "dataset", "processing_class", "args", "packing", "formatting_func", "dataset_name"],
    ),
    (
        "CGDTrainer._prepare_dataset (the override)",
        CGDTrainer._prepare_dataset,
        ["self", "dataset", "processing_class", "args", "packing", "formatting_func", "dataset_name"],
    ),
    ("trl.data_utils.common_prefix_length", trl_boundary.common_prefix_length, ["ids", "other_ids"]),
    ("trl.data_utils.get_dataset_column_names", trl_boundary.get_dataset_column_names, ["dataset"]),
    ("trl.trainer.utils.global_then_local_main_first", trl_boundary.global_then_local_main_first, []),
    ("trl.chat_template_utils.has_generation_markers", trl_boundary.has_generation_markers, ["chat_template"]),
    (
        "trl.chat_template_utils.get_training_chat_template",
        trl_boundary.get_training_chat_template,
        ["processing_class", "tokenizer"],
    ),
]


@pytest.mark.parametrize("name, function, expected", SIGNATURES, ids=[case[0] for case in SIGNATURES])
def test_functions_keep_the_signature_relied_on(name, function, expected):
    assert parameters(function) == expected, f"{name}: {UPGRADE}"


def test_tokenize_and_common_prefix_behave_as_relied_on(tokenizers):
    tokenizer = tokenizers["chatml"]
    assert trl_boundary.tokenize(tokenizer, "Hello there")["input_ids"] == tokenizer(text="Hello there")["input_ids"]
    messages = [{"role": "user", "content": "Hi"}]
    expected = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)
    tokenized = trl_boundary.tokenize(tokenizer, messages, add_generation_prompt=True)
    assert list(tokenized["input_ids"]) == list(expected["input_ids"]), UPGRADE
    assert trl_boundary.common_prefix_length([1, 2, 3], [1, 2, 4, 5]) == 2, UPGRADE


def test_language_modeling_collator_keeps_the_fields_relied_on():
    fields = trl_boundary.DataCollatorForLanguageModeling.__dataclass_fields__
    assert {"pad_token_id", "padding_free", "pad_to_multiple_of", "return_tensors"} <= set(fields), UPGRADE
    assert callable(getattr(trl_boundary.DataCollatorForLanguageModeling, "torch_call", None)), UPGRADE


def test_sft_trainer_sets_the_attributes_relied_on(tmp_path, tokenizers, dataset):
    tokenizer = tokenizers["chatml"]
    trainer = CGDTrainer(
        model=build_model(tokenizer, "chatml"),
        args=make_config(tmp_path),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    assert set(trainer._metrics) == {"train", "eval"}, UPGRADE
    assert trainer._metrics["train"]["anything"] == [], f"`_metrics` lists must default to []: {UPGRADE}"
    assert trainer._total_train_tokens == 0 and trainer._tp_size == 1, UPGRADE
    assert trainer._tokenizer is tokenizer and hasattr(trainer, "_signature_columns"), UPGRADE
    assert trainer.chat_template is None and trainer.completion_only_loss is True, UPGRADE
    assert isinstance(trainer.padding_free, bool) and isinstance(trainer.aux_loss_enabled, bool), UPGRADE
    # The helpers keep TRL's bookkeeping as TRL keeps it.
    trl_boundary.log_metric(trainer, "train", "entropy", 1.5)
    trl_boundary.add_train_tokens(trainer, "train", 10)
    trl_boundary.add_train_tokens(trainer, "eval", None)
    assert trainer._metrics["train"]["entropy"] == [1.5]
    assert trainer._metrics["train"]["num_tokens"] == [10] and trainer._metrics["eval"]["num_tokens"] == [10]


def test_metrics_and_token_count_are_kept_as_trl_keeps_them():
    # `log_metric`/`add_train_tokens` do what TRL's own `compute_loss` and `log` do with the same attributes.
    loss_source = inspect.getsource(SFTTrainer.compute_loss)
    assert 'self._metrics[mode]["num_tokens"] = [self._total_train_tokens]' in loss_source, UPGRADE
    assert "self._total_train_tokens += num_tokens_in_batch // self._tp_size" in loss_source, UPGRADE
    assert 'self._metrics[mode]["entropy"].append(' in loss_source, UPGRADE
    log_source = inspect.getsource(SFTTrainer.log)
    assert "self._metrics[mode].items()" in log_source and "self._metrics[mode].clear()" in log_source, UPGRADE


def test_bare_trainer_sets_everything_prepare_dataset_reads():
    source = inspect.getsource(SFTTrainer._prepare_dataset)
    reads = set(re.findall(r"self\.(\w+)", source))
    missing = {name for name in reads - set(BARE_TRAINER_ATTRIBUTES) if not callable(getattr(SFTTrainer, name, None))}
    assert not missing, f"SFTTrainer._prepare_dataset now reads {sorted(missing)}, which bare_trainer does not set"


def test_sft_trainer_samples_the_training_set_before_preparing_that_same_object():
    source = inspect.getsource(SFTTrainer.__init__)
    sample = source.find("next(iter(train_dataset))")
    prepare = re.search(r"self\._prepare_dataset\(\s*train_dataset,", source)
    assert sample != -1 and prepare is not None and sample < prepare.start(), (
        f"the CGD stand-in training set relies on this order (trl_boundary.stand_in): {UPGRADE}"
    )
    pending: list = []
    raw, substitute = object(), object()
    assert trl_boundary.stand_in(pending, raw, substitute) is substitute
    assert trl_boundary.swap_back(pending, substitute) is raw and trl_boundary.swap_back(pending, raw) is raw


def test_model_card_attributes_are_read_by_trl():
    for name in ("_tag_names", "_name", "_paper"):
        assert hasattr(_BaseTrainer, name), UPGRADE
    source = inspect.getsource(_BaseTrainer.create_model_card)
    for read in ("self._tag_names", "self._name", 'self._paper.get("citation")'):
        assert read in source, f"{read}: {UPGRADE}"
    assert CGDTrainer._name == "CGD" and "cgd" in CGDTrainer._tag_names and CGDTrainer._paper["id"] == "2505.11628"
    assert SFTTrainer._name == "SFT", "CGDTrainer declares its own attributes, TRL's stay"


# ---------------------------------------------------------------------------------------------------- one boundary


def trl_internals_used(relative: str, source: str) -> list[str]:
    """Where a module imports from TRL's submodules or a private TRL name, or names a private trainer attribute."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "trl":
            if node.module != "trl":
                found.append(f"{relative}:{line}: from {node.module} import ...")
            found += [f"{relative}:{line}: imports trl.{a.name}" for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Import):
            found += [f"{relative}:{line}: import {a.name}" for a in node.names if a.name.startswith("trl.")]
        elif isinstance(node, ast.Attribute) and (node.attr in PRIVATE_ATTRIBUTES or node.attr == "__new__"):
            found.append(f"{relative}:{line}: .{node.attr}")
        elif isinstance(node, ast.Constant) and node.value in PRIVATE_ATTRIBUTES:
            found.append(f"{relative}:{line}: {node.value!r}")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in PRIVATE_ATTRIBUTES:
            if (relative, node.name) not in OVERRIDDEN_HOOKS:
                found.append(f"{relative}:{line}: def {node.name}")
        elif isinstance(node, ast.ClassDef):
            for statement in node.body:
                targets = statement.targets if isinstance(statement, ast.Assign) else []
                targets += [statement.target] if isinstance(statement, ast.AnnAssign) else []
                found += [
                    f"{relative}:{statement.lineno}: class attribute {t.id}"
                    for t in targets
                    if isinstance(t, ast.Name)
                    and t.id in PRIVATE_ATTRIBUTES
                    and (relative, t.id) not in DECLARED_CLASS_ATTRIBUTES
                ]
    return found


def test_the_scanner_sees_every_kind_of_use():
    source = (
        "from trl.data_utils import x\nfrom trl import _hidden\nimport trl.trainer\n"
        "a = t._metrics\nb = getattr(t, '_tp_size')\nc = C.__new__(C)\n"
        "class T:\n    _tag_names = []\n    def _prepare_dataset(self): ...\n"
    )
    found = trl_internals_used("probe.py", source)
    assert len(found) == 8, found
    # The override of TRL's hook is allowed where it is declared, and only there.
    assert trl_internals_used("trainer.py", "class T:\n    def _prepare_dataset(self): ...\n") == []


def test_no_module_but_the_boundary_uses_trl_internals():
    offenders = [
        use
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != BOUNDARY
        for use in trl_internals_used(path.relative_to(PACKAGE).as_posix(), path.read_text(encoding="utf-8"))
    ]
    assert not offenders, (
        "TRL internals used outside src/cgd_trainer/trl_boundary.py (add a function there, with a note of what it "
        "relies on and an entry in CHECKED_ON, and call it instead):\n" + "\n".join(offenders)
    )


def test_every_private_attribute_is_checked_on_a_version():
    for name in PRIVATE_ATTRIBUTES:
        assert any(key.endswith(f".{name}") for key in CHECKED_ON), f"{name} has no entry in CHECKED_ON"


def test_fitted_rows_skip_trls_truncation_and_get_max_length_back():
    # CGD's rows already fit: TRL sees no max_length while it prepares them (no truncation pass), and the setting is
    # restored afterwards, also when preparation fails; packed rows keep it, since packing needs it.
    from types import SimpleNamespace

    seen = []

    class Recorder:
        def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
            seen.append(args.max_length)
            if dataset == "fail":
                raise ValueError("boom")
            return dataset

    args = SimpleNamespace(max_length=512)
    assert trl_boundary.prepare_dataset(Recorder(), "rows", None, args, False, None, "train", fitted=True) == "rows"
    trl_boundary.prepare_dataset(Recorder(), "rows", None, args, True, None, "train", fitted=True)
    trl_boundary.prepare_dataset(Recorder(), "rows", None, args, False, None, "train")
    with pytest.raises(ValueError, match="boom"):
        trl_boundary.prepare_dataset(Recorder(), "fail", None, args, False, None, "train", fitted=True)
    assert seen == [None, 512, 512, None] and args.max_length == 512
