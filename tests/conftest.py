import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core: one thread each (and in the processes they start), instead of every worker
    # spreading its matrix products over every core and the threads spinning against each other.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
from datasets import Dataset  # noqa: E402

from helpers import build_model, build_tokenizer, make_records  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch  # noqa: E402

    torch.set_num_threads(1)

FAMILIES = ("chatml", "llama3", "plain")


@pytest.fixture(scope="session")
def tokenizers():
    return {family: build_tokenizer(family) for family in FAMILIES}


@pytest.fixture(scope="session")
def records():
    return make_records(24)


@pytest.fixture
def dataset(records):
    return Dataset.from_list(records)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory, tokenizers):
    """Each family's tiny model and tokenizer saved to a folder, for tests that load by path."""
    dirs = {}
    for family, tokenizer in tokenizers.items():
        path = tmp_path_factory.mktemp(f"tiny-{family}")
        build_model(tokenizer, family).save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs[family] = str(path)
    return dirs


@pytest.fixture(scope="session")
def served_tiny(tiny_dirs, tmp_path_factory):
    """`transformers serve` running the tiny ChatML model on loopback: `(base_url, model_name)`, one per session."""
    from servers import transformers_serve

    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with transformers_serve(tiny_dirs["chatml"], log) as base_url:
        yield base_url, tiny_dirs["chatml"]
