"""`cgd inspect`: what it marks as trained is exactly what the trainer's labels train, record by record."""

import copy
import io
import json
import logging

import pytest
from datasets import Dataset

from cgd_trainer import CGDTrainer
from cgd_trainer.cli import main as cli
from cgd_trainer.commands import inspect
from cgd_trainer.trainer import prepare_records
from helpers import build_model, make_config, make_records

MAX_LENGTH = 320


def _records():
    # Long contexts (shortened), refined answers too long for MAX_LENGTH (dropped), and ordinary records.
    records = make_records(12, seed=1, long_every=4)
    unfit = make_records(2, seed=4, filler=120)
    return records[:5] + unfit[:1] + records[5:] + unfit[1:]


@pytest.mark.parametrize(
    "family, settings",
    [
        ("chatml", {}),
        ("llama3", {"cgd_layout": "multi_turn"}),
        ("plain", {}),
        ("plain", {"eos_token": "<s>"}),  # TRL appends the eos it was given to plain completions
        ("chatml", {"cgd_truncation": "none"}),  # TRL's own truncation then cuts, and drops what it empties
        ("chatml", {"completion_only_loss": None, "cgd_truncation": "drop"}),
    ],
)
def test_inspected_labels_are_the_trainers(tmp_path, tokenizers, family, settings):
    records = _records()
    args = make_config(tmp_path, max_length=MAX_LENGTH, **settings)
    trainer = CGDTrainer(
        model=build_model(tokenizers[family], family),
        args=args,
        train_dataset=Dataset.from_list(records),
        processing_class=copy.deepcopy(tokenizers[family]),
    )
    trained = [(row["input_ids"], row["labels"]) for row in trainer.train_dataset]

    shown, statuses = [], {"kept": 0, "shortened": 0, "dropped": 0}
    for record in records:  # one record at a time, as `cgd inspect` prepares them
        rows, counts = prepare_records(Dataset.from_list([record]), copy.deepcopy(tokenizers[family]), args)
        shown += [(row["input_ids"], row["labels"]) for row in rows]
        for status, count in counts.items():
            statuses[status] += count
    assert shown == trained
    assert statuses == trainer.cgd_stats["train"]
    if settings.get("cgd_truncation") != "none":
        assert statuses["dropped"] >= 2 and len(trained) == len(records) - statuses["dropped"]
    if not settings:
        assert statuses["shortened"] >= 2


def test_render_marks_the_trained_tokens(tmp_path, tokenizers):
    tokenizer = tokenizers["chatml"]
    record = make_records(1)[0]
    args = make_config(tmp_path, max_length=MAX_LENGTH)
    (row,), _ = prepare_records(Dataset.from_list([record]), copy.deepcopy(tokenizer), args)
    text = inspect.render(tokenizer, row["input_ids"], row["labels"], color=False)
    assert text.count(inspect.TRAINED_OPEN) == 1 and text.count(inspect.TRAINED_CLOSE) == 1
    marked = text.split(inspect.TRAINED_OPEN, 1)[1].split(inspect.TRAINED_CLOSE, 1)[0]
    trained_ids = [token for token, label in zip(row["input_ids"], row["labels"]) if label != -100]
    assert marked == tokenizer.decode(trained_ids)
    assert marked.startswith(record["refined_response"][:20]) and record["refined_response"] in marked
    assert record["critique"] in text.split(inspect.TRAINED_OPEN)[0]  # the context is shown, unmarked
    coloured = inspect.render(tokenizer, row["input_ids"], row["labels"], color=True)
    assert coloured.replace(inspect.COLOR_OPEN, "").replace(inspect.COLOR_CLOSE, "") == text.replace(
        inspect.TRAINED_OPEN, ""
    ).replace(inspect.TRAINED_CLOSE, "")


def _recipe(tmp_path, tiny_dirs, records):
    data = tmp_path / "cgd.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in records))
    recipe = tmp_path / "recipe.yaml"
    # A GPU-style recipe: cgd inspect reads it on a CPU all the same.
    recipe.write_text(
        f"model_name_or_path: {tiny_dirs['chatml']}\ndataset_name: {data}\noutput_dir: {tmp_path / 'run'}\n"
        f"bf16: true\nmax_length: {MAX_LENGTH}\npacking: true\ndataset_num_proc: 4\nreport_to: none\n"
    )
    return str(recipe)


def test_cgd_inspect_command(tmp_path, tiny_dirs, capsys):
    records = _records()
    recipe = _recipe(tmp_path, tiny_dirs, records)
    levels = [logging.getLogger(name).level for name in ("cgd_trainer.trainer", "cgd_trainer.collator")]
    assert cli(["inspect", "--config", recipe, "--index", "3", "--count", "3", "--color", "never"]) == 0
    # Its quiet preparation leaves the caller's logging as it was.
    assert [logging.getLogger(name).level for name in ("cgd_trainer.trainer", "cgd_trainer.collator")] == levels
    out = capsys.readouterr().out
    assert "record 3: shortened to fit" in out and "of max_length=320" in out
    assert "record 4: kept" in out
    assert "record 5: dropped, not trained (its refined answer alone does not fit max_length=320)" in out
    header, shown = out.split("\n", 1)
    assert "between [[ and ]]" in header and shown.count(inspect.TRAINED_OPEN) == 2  # the two trained records
    assert records[4]["refined_response"] in out.split("record 4:")[1]
    assert not (tmp_path / "run").exists()  # inspecting writes nothing into the run's folder

    # The same rows as the function, counted the same way.
    rows = inspect.run(["--config", recipe, "--index", "4"], stream=io.StringIO())
    assert len(rows) == 1 and sum(label != -100 for label in rows[0]["labels"]) > 0

    assert cli(["inspect", "--config", recipe, "--index", "99"]) == 2
    assert "--index 99: the train split has 14 records (0 to 13)" in capsys.readouterr().err
    assert cli(["inspect", "--config", recipe, "--idnex", "3"]) == 2
    assert "Did you mean `--index`?" in capsys.readouterr().err
