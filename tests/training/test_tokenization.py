"""One tokenization per record: rows equal to TRL's own tokenization of the rendered examples, in every layout and
template family, shortened or not, and no unshortened record's text tokenized twice."""

import json
import logging

import pytest
from datasets import Dataset, load_dataset
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast
from trl import SFTTrainer

from cgd_trainer import CGDTrainer, CritiqueCollator
from cgd_trainer.tokenization import ExampleEncoder, _SpaceMarks
from cgd_trainer.trl_boundary import common_prefix_length
from helpers import _corpus, build_model, make_config, make_records

MAX_LENGTH = 320

# Mistral's way: [INST] turns, no separator after a turn, the eos token closes the answer.
INST_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}[INST] {{ message['content'] }} "
    "[/INST]{% elif message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}{% else %}"
    "{{ message['content'] }}\n\n{% endif %}{% endfor %}"
)
# A template whose prompt alone ends differently from the same prompt followed by an answer (as some reasoning models'
# templates do): the prompt's tokens cannot be read from the whole example's and are tokenized on their own.
THINKING_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n\n</think>\n\n{% endif %}"
)


def sentencepiece_like(style: str) -> PreTrainedTokenizerFast:
    """
    A tokenizer shaped like a converted SentencePiece one (trained with words split at spaces, as SentencePiece does,
    except `legacy`):
    - `metaspace` splits words with a `▁` prepended to the first one (Mistral, Llama 2 in non-legacy mode, as their
      tokenizer.json files have it);
    - `legacy` prepends `▁` in the normalizer, to every text between special tokens, and has no pre-tokenizer (Llama
      2's legacy conversion; trained that way too, so some of its tokens hold a `▁` after a letter);
    - `unsplit` reads each text in one piece, its spaces written `▁` and a `▁` prepended to the first one: how
      transformers 5 builds Llama, Mistral and similar tokenizers (`Metaspace(split=False)`);
    - `gemma` reads each text in one piece with its spaces replaced by `▁` in the normalizer and nothing prepended,
      as Gemma's tokenizer.json has it.
    """
    backend = Tokenizer(models.BPE())
    specials = ["<s>", "</s>", "[INST]", "[/INST]"]
    if style == "legacy":
        backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    else:
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    if style in ("unsplit", "gemma"):
        specials.append("<unk>")  # what is not in the vocabulary must not vanish: offsets would shift after it
    backend.train_from_iterator(_corpus(), trainer=trainers.BpeTrainer(vocab_size=700, special_tokens=specials))
    if style in ("unsplit", "gemma"):
        backend.model.unk_token = "<unk>"
    if style == "unsplit":
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    elif style == "gemma":
        backend.pre_tokenizer = None
        backend.normalizer = normalizers.Replace(" ", "▁")
        backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse()])
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="</s>")
    tokenizer.chat_template = INST_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def all_tokenizers(tokenizers):
    thinking = PreTrainedTokenizerFast(tokenizer_object=tokenizers["chatml"].backend_tokenizer)
    thinking.eos_token, thinking.pad_token = "<|im_end|>", "<|endoftext|>"
    thinking.chat_template = THINKING_TEMPLATE
    return {
        **tokenizers,
        **{style: sentencepiece_like(style) for style in ("metaspace", "legacy", "unsplit", "gemma")},
        "thinking": thinking,
    }


@pytest.fixture(scope="module")
def long_records():
    # Every 4th record is too long for MAX_LENGTH and is shortened; two refined answers alone are too long.
    return make_records(16, seed=1, long_every=4) + make_records(2, seed=4, filler=120)


CASES = [
    (family, layout)
    for family in ("chatml", "llama3", "metaspace", "legacy", "thinking", "unsplit")
    for layout in ("single_turn", "multi_turn", "plain")
] + [("plain", "plain"), ("gemma", "single_turn"), ("gemma", "plain")]


@pytest.mark.parametrize(("family", "layout"), CASES)
@pytest.mark.parametrize("max_length", [MAX_LENGTH, 4096])
def test_rows_equal_trls_tokenization_of_the_fitted_examples(
    tmp_path, all_tokenizers, long_records, family, layout, max_length
):
    # What CGDTrainer trains on is what SFTTrainer makes of the same fitted prompt-completion examples.
    tokenizer = all_tokenizers[family]
    model_family = "llama3" if family == "llama3" else "chatml"
    collator = CritiqueCollator(tokenizer, layout=layout)
    if max_length == MAX_LENGTH:
        # Just long enough for the ordinary records, whatever the vocabulary: the long ones are shortened.
        ordinary = [record for i, record in enumerate(long_records[:16]) if i % 4 != 3]
        max_length = max(len(collator.token_ids(collator.format(r, layout), tokenizer)[1]) for r in ordinary)
    args = dict(max_length=max_length, cgd_layout=layout)
    cgd = CGDTrainer(
        model=build_model(tokenizer, model_family),
        args=make_config(tmp_path, **args),
        train_dataset=Dataset.from_list(long_records),
        processing_class=tokenizer,
    )
    collator.max_length = max_length
    fitted = [example for example, _ in collator.fit_batch(long_records, layout, tokenize=False) if example]
    sft = SFTTrainer(
        model=build_model(tokenizer, model_family),
        args=make_config(tmp_path, max_length=max_length),
        train_dataset=Dataset.from_list(fitted),
        processing_class=tokenizer,
    )
    stats = cgd.cgd_stats["train"]
    assert stats["shortened"] == (4 if max_length < 4096 else 0) and sum(stats.values()) == 18
    assert cgd.train_dataset["input_ids"] == sft.train_dataset["input_ids"]
    assert cgd.train_dataset["labels"] == sft.train_dataset["labels"]


def _count_tokenized(monkeypatch, tokenizer) -> list[str]:
    # Every text the tokenizer is asked to encode, whichever way it is called.
    texts = []
    cls = type(tokenizer)
    original = cls.__call__

    def counting(self, text=None, *args, **kwargs):
        texts.extend([text] if isinstance(text, str) else list(text or []))
        return original(self, text, *args, **kwargs)

    monkeypatch.setattr(cls, "__call__", counting)
    return texts


@pytest.mark.parametrize(
    ("family", "layout", "spliced"),
    [("chatml", "single_turn", True), ("llama3", "multi_turn", False), ("plain", "plain", True)],
)
def test_an_unshortened_record_is_tokenized_once(
    tmp_path, tokenizers, long_records, monkeypatch, family, layout, spliced
):
    tokenizer = tokenizers[family]
    texts = _count_tokenized(monkeypatch, tokenizer)
    trainer = CGDTrainer(
        model=build_model(tokenizer, "llama3" if family == "llama3" else "chatml"),
        args=make_config(tmp_path, max_length=MAX_LENGTH, cgd_layout=layout),
        train_dataset=Dataset.from_list(long_records),
        processing_class=tokenizer,
    )
    assert trainer.cgd_stats["train"] == {"kept": 12, "shortened": 4, "dropped": 2}
    # Each question is unique ("Question 3: ..."), so the texts holding it are the tokenizations of its record.
    times = [sum(record["prompt"] in text for text in texts) for record in long_records]
    shortened = [3, 7, 11, 15]  # 16 and 17 are dropped: their question too was cut away, then the record
    assert [times[i] for i in range(18) if i not in shortened] == [1] * 14
    assert all(times[i] >= 1 for i in shortened)
    # All the records went to the tokenizer together, in one call.
    assert sum(isinstance(text, str) and long_records[0]["prompt"] in text for text in texts) == 1
    # A shortened record is tokenized again only around its cuts, where that can be relied on (Llama 3's template
    # strips the turns it renders, so its multi-turn records are tokenized whole again).
    collator = CritiqueCollator(tokenizer, layout=layout)
    encoder = ExampleEncoder(tokenizer, layout)
    whole = sum(len(encoder.texts(collator.format(record, layout), {})[0]) for record in long_records)
    again = sum(len(text) for text in texts) / whole - 1
    assert (again < 0.1) if spliced else (again > 0.3), f"tokenized {again:.0%} more than the records' texts"


def test_the_prompt_is_tokenized_alone_only_where_needed(all_tokenizers, long_records, monkeypatch):
    # The shortcut reads the prompt's tokens from the whole example's; where it cannot be relied on (a normalizer
    # that marks the start of every text, a template that renders the prompt alone differently) the prompt is
    # tokenized on its own, as TRL does.
    calls = []
    original = ExampleEncoder.prompt_ids
    monkeypatch.setattr(ExampleEncoder, "prompt_ids", lambda self, e: calls.append(1) or original(self, e))
    records = long_records[:16]
    for family, layout, alone in [
        ("chatml", "single_turn", 0),
        ("chatml", "plain", 0),
        ("metaspace", "plain", 0),
        ("metaspace", "multi_turn", 0),
        ("unsplit", "plain", 0),
        ("unsplit", "single_turn", 0),
        ("gemma", "plain", 0),
        ("legacy", "single_turn", 0),
        ("legacy", "plain", len(records)),
        ("thinking", "single_turn", len(records)),
    ]:
        calls.clear()
        CritiqueCollator(all_tokenizers[family]).fit_batch(records, layout)
        assert len(calls) == alone, (family, layout)


def test_streaming_records_are_tokenized_in_batches(tmp_path, tokenizers, long_records, caplog):
    from datasets import IterableDataset

    stream = IterableDataset.from_generator(lambda: iter(long_records))
    with caplog.at_level(logging.WARNING, logger="cgd_trainer"):
        trainer = CGDTrainer(
            model=build_model(tokenizers["chatml"], "chatml"),
            args=make_config(tmp_path, max_length=MAX_LENGTH, max_steps=2),
            train_dataset=stream,
            processing_class=tokenizers["chatml"],
        )
        rows = list(trainer.train_dataset)
    in_memory = CGDTrainer(
        model=build_model(tokenizers["chatml"], "chatml"),
        args=make_config(tmp_path, max_length=MAX_LENGTH),
        train_dataset=Dataset.from_list(long_records),
        processing_class=tokenizers["chatml"],
    )
    assert [row["input_ids"] for row in rows] == in_memory.train_dataset["input_ids"]
    # Streaming counts grow each time the stream is read (TRL and this test read it): at least one pass's worth.
    assert trainer.cgd_stats["train"]["shortened"] >= 4 and trainer.cgd_stats["train"]["dropped"] >= 2


def _very_long_records(n: int) -> list[dict]:
    # Every other record's initial answer is several times max_length: far too long, it is skimmed (`_skim`). Every
    # fourth record's critique is too, so that the whole answer is cut away and the critique is cut as well.
    records = make_records(n, seed=6)
    for i, record in enumerate(records):
        if i % 2:
            steps = " ".join(f"Step {k}: I add the digits of {k} and {k + 7} again." for k in range(40 + 4 * i))
            record["initial_response"] = f"{record['initial_response']}\n{steps}\nSo the answer stays."
        if i % 4 == 3:
            remarks = " ".join(f"Remark {k}: the carry into column {k % 3} was lost." for k in range(60 + 3 * i))
            record["critique"] = f"{remarks}\n{record['critique']}"
    return records


def _fitting_the_ordinary_records(tokenizer, layout: str, records: list[dict]) -> CritiqueCollator:
    # max_length fits the ordinary (even) records whole, so that every long one is shortened.
    collator = CritiqueCollator(tokenizer, layout=layout)
    collator.max_length = max(len(collator.token_ids(collator.format(r, layout), tokenizer)[1]) for r in records[::2])
    return collator


@pytest.mark.parametrize(("family", "layout"), CASES)
def test_skimmed_records_are_cut_as_whole_ones(all_tokenizers, monkeypatch, family, layout):
    # A record far longer than max_length is encoded with the middle of its initial answer left out; the cuts planned
    # from that shorter text, and so the rows, are exactly those of the whole record's encoding.
    from cgd_trainer import collator as collator_module

    tokenizer = all_tokenizers[family]
    records = _very_long_records(48)
    collator = _fitting_the_ordinary_records(tokenizer, layout, records)
    texts = _count_tokenized(monkeypatch, tokenizer)
    skims = []
    original = CritiqueCollator._skim
    monkeypatch.setattr(CritiqueCollator, "_skim", lambda *args: skims.append(original(*args)) or skims[-1])
    skimmed = collator.fit_batch(records, layout), collator.fit_batch(records, layout, tokenize=False)
    read = sum(map(len, texts))
    monkeypatch.setattr(collator_module, "_CALIBRATION", 10**9)  # no skim: every record encoded whole
    texts.clear()
    whole = collator.fit_batch(records, layout), collator.fit_batch(records, layout, tokenize=False)
    assert skimmed == whole
    assert [status for _, status in whole[0]].count("shortened") >= 20
    if family == "legacy":  # no words to find a seam between: nothing is skimmed
        assert read == sum(map(len, texts)) and not skims
    else:  # the skims left out at least a quarter of the text to tokenize, critiques' middles too
        assert read < 0.75 * sum(map(len, texts)), f"{read} characters tokenized against {sum(map(len, texts))}"
        assert sum(skim is not None and "critique" in skim[1] for skim in skims) >= 10


def _reference_row(collator: CritiqueCollator, example: dict, tokenizer) -> dict:
    # The row TRL makes of a fitted example: the whole text tokenized, the completion from where the prompt alone's
    # tokens and the whole's diverge.
    prompt_ids, ids = collator.token_ids(example, tokenizer)
    start = common_prefix_length(prompt_ids, ids)
    return {"input_ids": ids, "labels": [-100] * start + ids[start:]}


@pytest.mark.parametrize(("family", "layout"), CASES)
def test_records_cut_into_the_critique_equal_the_tokenization_of_their_fitted_text(
    all_tokenizers, monkeypatch, family, layout
):
    # Records whose initial answer is cut away whole and whose critique is cut too: the critique's cut lies a few words
    # from the prompt's end in plain text, where the completion's start is found from the spliced tokens.
    tokenizer = all_tokenizers[family]
    records = _very_long_records(24)
    collator = _fitting_the_ordinary_records(tokenizer, layout, records)
    splices = []
    original = ExampleEncoder.respliced
    monkeypatch.setattr(ExampleEncoder, "respliced", lambda *args: splices.append(original(*args)) or splices[-1])
    rows = collator.fit_batch(records, layout)
    assert [status for _, status in rows].count("shortened") == 12
    for (row, _), (example, _) in zip(rows, collator.fit_batch(records, layout, tokenize=False), strict=True):
        assert row == _reference_row(collator, example, tokenizer)
    if (family, layout) in {
        ("chatml", "single_turn"),
        ("metaspace", "plain"),
        ("chatml", "plain"),
        ("unsplit", "plain"),
    }:
        assert all(splice is not None for splice in splices)  # no cut record was tokenized whole again


def test_a_skim_that_cannot_be_planned_from_falls_back_to_the_whole_record(all_tokenizers, monkeypatch):
    tokenizer, layout = all_tokenizers["chatml"], "single_turn"
    records = _very_long_records(40)
    collator = _fitting_the_ordinary_records(tokenizer, layout, records)
    expected = collator.fit_batch(records, layout)
    # No cut can be shown to end where the skim's tokens are the whole record's: each is encoded whole after all.
    monkeypatch.setattr(ExampleEncoder, "ends_before", lambda self, encoded, end, limit: False)
    texts = _count_tokenized(monkeypatch, tokenizer)
    assert collator.fit_batch(records, layout) == expected
    tried = [
        any(r["prompt"] in text and r["initial_response"] not in text for text in texts)
        and any(r["initial_response"] in text for text in texts)
        for r in records[17::2]
    ]
    assert sum(tried) >= 10, tried  # each skim was tried, then its whole record encoded


def test_a_cut_near_the_seam_is_not_planned_from_the_skim(all_tokenizers, monkeypatch):
    # A skim holding barely more than max_length tokens puts some cuts within two words of its seam, where its tokens
    # may differ from the whole record's: those records are encoded whole, and every row stays the same.
    from cgd_trainer import collator as collator_module

    tokenizer, layout = all_tokenizers["llama3"], "single_turn"
    records = _very_long_records(64)
    collator = _fitting_the_ordinary_records(tokenizer, layout, records)
    expected = collator.fit_batch(records, layout)
    refused = []
    original = ExampleEncoder.ends_before

    def spy(self, encoded, end, limit):
        kept = original(self, encoded, end, limit)
        refused.append(not kept and limit - end < 40)
        return kept

    monkeypatch.setattr(ExampleEncoder, "ends_before", spy)
    for room in (0.7, 0.72, 0.74, 0.76, 1.0):
        monkeypatch.setattr(collator_module, "_SKIM_ROOM", room)
        assert collator.fit_batch(records, layout) == expected, room
    assert any(refused)


def test_a_window_does_not_start_at_white_space_whose_split_depends_on_what_follows():
    # GPT-2's pattern splits "\n\n" before a word into two words and before " [...]" into one (a token of its own
    # here, as in SmolLM2's vocabulary): a window starting at the blank line would not give the record's tokens. It
    # starts at the word before instead, and the splice holds.
    tokenizer = _marker_splitting_tokenizer()
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    encoder = ExampleEncoder(tokenizer, "plain")
    text = "A teacher reviewed your answer:\n\nStep one adds the tens and is wrong.\n\nBelow are the steps."
    example = {"prompt": text, "completion": " Done."}
    encoded = encoder.encode([example], [{}])[0]
    field = "Step one adds the tens and is wrong."
    start = text.index(field)
    cut = {"prompt": text.replace(field, " [...]"), "completion": " Done."}
    spliced = encoder.respliced(encoded, cut, [(start, start + len(field), " [...]")])
    assert spliced is not None
    expected = encoder.encode([cut], [{}])[0]
    assert spliced.ids == expected.ids
    assert encoder.completion_start(spliced) == common_prefix_length(encoder.prompt_ids(expected), expected.ids)


def test_ends_before_counts_words_back_from_the_limit(tokenizers):
    tokenizer = tokenizers["chatml"]
    encoder = ExampleEncoder(tokenizer, "plain")
    text = "alpha beta gamma delta epsilon zeta"
    encoded = encoder.encode([{"prompt": text, "completion": ""}], [{}])[0]
    limit = text.index(" zeta")
    assert encoder.ends_before(encoded, text.index(" gamma"), limit)  # beta: three words before epsilon
    assert not encoder.ends_before(encoded, text.index(" delta"), limit)  # gamma: two words before
    assert not encoder.ends_before(encoded, limit, limit)


def _marker_splitting_tokenizer(merges: list[tuple[str, str]] | None = None) -> PreTrainedTokenizerFast:
    # Byte-level BPE whose merges (in rank order) join `]` with the newlines after it before they join the marker
    # ` [...]` into one token, as Tekken's do: the marker is one token on its own, two before a blank line. A space
    # joins the letter or digit after it, as in real vocabularies, so that words are cut with their leading space.
    byte = pre_tokenizers.ByteLevel.alphabet()
    if merges is None:
        merges = [("Ċ", "Ċ"), ("]", "ĊĊ"), (".", "ĊĊ")]
        merges += [("Ġ", "["), (".", "."), ("..", "."), ("Ġ[", "..."), ("Ġ[...", "]")]
    merges = merges + [("Ġ", c) for c in sorted(byte) if c.isalnum() and c.isascii()]
    vocab = {token: i for i, token in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>", *sorted(byte)])}
    for left, right in merges:
        vocab[left + right] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"\s?\S+[\r\n]*|\s+"), behavior="isolated")
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [backend.pre_tokenizer, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = THINKING_TEMPLATE.split("{% if add_generation_prompt %}")[0] + (
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return tokenizer


@pytest.mark.parametrize("layout", ["single_turn", "plain"])
def test_a_marker_that_saves_tokens_still_cuts_its_field(layout):
    # Here ` [...]\n\n` is one token but the field's own `.\n\n` three, so the marker frees tokens of its own
    # (`inserted_tokens` is negative); the field must still lose at least a token instead of being kept whole.
    tokenizer = _marker_splitting_tokenizer(
        [("Ġ", "["), (".", "."), ("..", "."), ("Ġ[", "..."), ("Ġ[...", "]"), ("Ġ[...]", "Ċ"), ("Ġ[...]Ċ", "Ċ")]
    )
    record = make_records(1)[0]
    collator = CritiqueCollator(tokenizer, layout=layout)
    collator.max_length = len(collator.token_ids(collator.format(record, layout), tokenizer)[1]) - 1
    [(row, status)] = collator.fit_batch([record], layout)
    [(example, _)] = collator.fit_batch([record], layout, tokenize=False)
    prompt = example["prompt"] if layout == "plain" else example["prompt"][0]["content"]
    assert status == "shortened" and record["initial_response"] not in prompt and " [...]" in prompt
    assert row == _reference_row(collator, example, tokenizer) and len(row["input_ids"]) <= collator.max_length


def test_the_marker_is_counted_as_it_tokenizes_before_the_text_after_the_cut():
    tokenizer = _marker_splitting_tokenizer()
    encoder = ExampleEncoder(tokenizer, "plain")
    marker = " [...]"
    text = "My answer is four.\n\n### The critique\nIt is right.\n\nConclusion: right"
    encoded = encoder.encode([{"prompt": text, "completion": " Four."}], [{}])[0]
    assert encoder.token_count(marker) == 1
    for field in ("My answer is four.", "It is right."):
        start = text.index(field)
        end = start + len(field)
        _, _, count, kept_end = encoder.field_tokens(encoded, field)
        cost = encoder.inserted_tokens(encoded, end, marker)
        assert cost == 2  # " [..." and "]\n\n", where the field's "." took the newlines before
        for kept in range(count):
            cut = text[:start] + field[: kept_end(kept)] + marker + text[end:]
            shortened = encoder.encode([{"prompt": cut, "completion": " Four."}], [{}])[0]
            assert len(shortened.ids) == len(encoded.ids) - (count - kept) + cost


@pytest.mark.parametrize("layout", ["single_turn", "multi_turn"])
def test_a_cut_record_fits_at_the_first_try_and_its_prompt_is_not_rendered_again(long_records, monkeypatch, layout):
    # Counting the marker where it lands (`inserted_tokens`) plans the cut that fits at once: one splice per
    # shortened record. The prompt alone of a spliced record is not rendered, since its completion's start is known.
    tokenizer = _marker_splitting_tokenizer()
    records = long_records[:16]
    collator = CritiqueCollator(tokenizer, layout=layout)
    collator.max_length = max(
        len(collator.token_ids(collator.format(r, layout), tokenizer)[1]) for i, r in enumerate(records) if i % 4 != 3
    )
    splices, prompts = [], []
    original = ExampleEncoder.respliced
    monkeypatch.setattr(ExampleEncoder, "respliced", lambda self, *args: splices.append(1) or original(self, *args))
    render = ExampleEncoder.prompt_text
    monkeypatch.setattr(ExampleEncoder, "prompt_text", lambda self, *args: prompts.append(1) or render(self, *args))
    fitted = collator.fit_batch(records, layout)
    assert [status for _, status in fitted].count("shortened") == 4
    assert len(splices) == 4
    assert len(prompts) == len(records)  # once per record, for its encoding in the batch
    for (row, _), (example, _) in zip(fitted, collator.fit_batch(records, layout, tokenize=False), strict=True):
        assert row == _reference_row(collator, example, tokenizer)


def test_worker_processes_inherit_the_tokenizer_and_rows_stay_the_same(tmp_path, tokenizers, long_records):
    # With dataset_num_proc the forked workers find the tokenizer in the memory they inherit (`_Inherited`) instead of
    # each unpickling a copy; the rows, the counts and `datasets`' cache fingerprint are what one process gives.
    import pickle

    from cgd_trainer.trainer import _Inherited, prepare_records

    tokenizer = tokenizers["chatml"]
    with _Inherited({"processing_class": tokenizer}) as inherited:
        assert len(pickle.dumps(inherited)) < 200
    assert len(pickle.dumps(inherited)) > 10_000  # outside the block: a copy, as for spawned workers
    data = tmp_path / "records.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in long_records))
    dataset = load_dataset("json", data_files=str(data), split="train", cache_dir=str(tmp_path / "cache"))
    prepared = {}
    for num_proc in (None, 2, 2):
        args = make_config(tmp_path, max_length=MAX_LENGTH, dataset_num_proc=num_proc)
        rows, counts = prepare_records(dataset, tokenizer, args)
        prepared.setdefault(num_proc, []).append((rows["input_ids"], rows["labels"], counts, rows._fingerprint))
    assert prepared[None][0][:3] == prepared[2][0][:3] == prepared[2][1][:3]
    assert prepared[2][0][3] == prepared[2][1][3]  # the same preparation: the same fingerprint, read from the cache
    assert prepared[None][0][2] == {"kept": 12, "shortened": 4, "dropped": 2}


def test_a_tokenizer_reading_text_in_one_piece_has_words_where_no_token_spans_a_space_mark(all_tokenizers):
    # transformers 5 builds Llama and Mistral tokenizers with `Metaspace(split=False)` and Gemma's with `▁` written by
    # the normalizer: the encoding reports one word. Where no token holds `▁` after another character, the words
    # start where `▁` follows another character (`_SpaceMarks`), and the splices and skims count in those.
    for family in ("unsplit", "gemma"):
        assert _SpaceMarks.of(all_tokenizers[family]) is not None, family
        assert ExampleEncoder(all_tokenizers[family], "plain").splits_words
    for family in ("chatml", "metaspace", "legacy"):  # words split by the pre-tokenizer, or marks of every text
        assert _SpaceMarks.of(all_tokenizers[family]) is None, family
    encoder = ExampleEncoder(all_tokenizers["unsplit"], "plain")
    encoded = encoder.encode([{"prompt": "Two  spaces and\nnew [INST] line.", "completion": " ok"}], [{}])[0]
    words = encoded.encoding
    pieces = [
        "".join(encoder.tokenizer.convert_ids_to_tokens(encoded.ids[slice(*words.word_to_tokens(w))]))
        for w in range(words.token_to_word(len(encoded.ids) - 1) + 1)
    ]
    # A run of spaces starts one word (how it splits depends on what follows); a newline is not a space mark.
    assert pieces == ["<s>", "▁Two", "▁▁spaces", "▁and\nnew", "▁", "[INST]", "▁line.", "▁ok", "</s>"]
    # Trained on text read in one piece, a vocabulary has tokens across spaces: no marks, the encoding's words.
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    backend.train_from_iterator(_corpus(), trainer=trainers.BpeTrainer(vocab_size=700, special_tokens=["</s>"]))
    crossing = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>")
    assert any("▁" in token.lstrip("▁") for token in crossing.get_vocab())
    assert _SpaceMarks.of(crossing) is None
    # A unigram model picks between equally scored splits by sums of floats, which the text before a point changes;
    # a BPE model with neither an unknown token nor byte fallback drops what it does not know and shifts the offsets
    # of every later token. Neither gets marks.
    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    unigram.train_from_iterator(_corpus(), trainer=trainers.UnigramTrainer(vocab_size=300, unk_token="<unk>"))
    unigram.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    assert _SpaceMarks.of(PreTrainedTokenizerFast(tokenizer_object=unigram, eos_token="</s>")) is None
    dropping = all_tokenizers["unsplit"].backend_tokenizer
    dropping.model.unk_token = None
    try:
        assert _SpaceMarks.of(all_tokenizers["unsplit"]) is None
    finally:
        dropping.model.unk_token = "<unk>"


def test_the_cache_fingerprint_reads_the_tokenizer_from_its_backend(all_tokenizers):
    # transformers 5 keeps the vocabulary and merges a tokenizer was built from beside its backend; `datasets` would
    # pickle them in Python to hash the mapped function's arguments. The fingerprint is taken without them (the
    # backend holds the same), they are put back, and it still tells tokenizers apart.
    from cgd_trainer.trainer import _hash

    class Unpicklable:
        def __reduce__(self):
            raise AssertionError("the vocabulary a tokenizer was built from was pickled")

    tokenizer = all_tokenizers["unsplit"]
    tokenizer._vocab, tokenizer._merges = {"a": 0}, [Unpicklable()]
    try:
        fingerprint = _hash(["records", {"processing_class": tokenizer}], tokenizer)
        assert tokenizer._vocab == {"a": 0} and isinstance(tokenizer._merges[0], Unpicklable)
        assert fingerprint == _hash(["records", {"processing_class": tokenizer}], tokenizer)
        other = all_tokenizers["metaspace"]
        assert fingerprint != _hash(["records", {"processing_class": other}], other)
    finally:
        del tokenizer._vocab, tokenizer._merges


def test_an_unknown_token_the_model_gave_is_not_a_place_to_split():
    # Added tokens split the text before the model runs, so nothing across them changes their neighbours' tokens; an
    # unknown token that the model itself gave for text it has no piece for is no such place (a unigram model's choice
    # between equal splits after it depends on the text before it).
    tokenizer = sentencepiece_like("unsplit")
    encoder = ExampleEncoder(tokenizer, "plain")
    text = "[INST] Is it 4€? \n\n### Improved answer\n"
    encoded = encoder.encode([{"prompt": text, "completion": "Yes."}], [{}])[0]
    unknown = encoded.ids.index(tokenizer.convert_tokens_to_ids("<unk>"))
    assert encoded.text[slice(*encoded.encoding.token_to_chars(unknown))] == "€"
    cut = encoder._cut_before(encoded, unknown + 1, unknown + 1)  # looking back from the token after it
    assert cut is None or cut[0] != unknown + 1
    assert encoder._split_off(encoded, unknown) is None
    inst = encoded.ids.index(tokenizer.convert_tokens_to_ids("[INST]"))
    assert encoder._split_off(encoded, inst) == (0, len("[INST]"))
