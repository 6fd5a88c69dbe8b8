"""Generation throughput of the pipeline's `openai` backend vs a plain `openai` client loop at the same concurrency.

Two loopback servers: `transformers serve` with the tiny built-in model on CPU (a real server, where the model is the
bottleneck), and a scripted OpenAI-style server that answers after a fixed delay (where client overhead shows). Three
clients send the same requests to each: a plain `AsyncOpenAI` loop with a semaphore (the baseline), our
`OpenAIBackend`, and the whole `cgd generate` critique stage (backend + request keys + a flushed line per reply).
Run: `python benchmarks/pipeline_client.py` (about two minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from cgd_trainer.backends import OpenAIBackend, Request, Sampling  # noqa: E402
from cgd_trainer.demo.problems import generate_records  # noqa: E402
from cgd_trainer.demo.tiny import prepare_builtin_model  # noqa: E402
from cgd_trainer.pipeline import GenerateConfig, Pipeline  # noqa: E402
from servers import ScriptedServer, transformers_serve  # noqa: E402


def plain_loop(base_url: str, model: str, messages: list[list[dict]], max_tokens: int, concurrency: int) -> int:
    """The baseline: what one writes by hand with the `openai` client. Returns the number of successful replies."""
    import openai

    async def main() -> int:
        client = openai.AsyncOpenAI(api_key="none", base_url=base_url)
        semaphore = asyncio.Semaphore(concurrency)

        async def one(conversation):
            async with semaphore:
                response = await client.chat.completions.create(
                    model=model, messages=conversation, max_tokens=max_tokens, temperature=0.0
                )
                return response.choices[0].message.content

        texts = await asyncio.gather(*(one(m) for m in messages))
        await client.close()
        return sum(isinstance(t, str) for t in texts)

    return asyncio.run(main())


def backend_loop(base_url: str, model: str, messages: list[list[dict]], max_tokens: int, concurrency: int) -> int:
    backend = OpenAIBackend(model, base_url=base_url, concurrency=concurrency, api_key_env="CGD_BENCH_NO_KEY")
    requests = [Request(str(i), messages=m, sampling=Sampling(max_tokens=max_tokens)) for i, m in enumerate(messages)]
    return sum(reply.ok for reply in backend.generate(requests))


def pipeline_stage(base_url: str, model: str, data: Path, n: int, max_tokens: int, concurrency: int) -> int:
    with tempfile.TemporaryDirectory() as out:
        config = GenerateConfig(
            dataset_name=str(data),
            id_field="id",
            initial_response_field="initial_response",
            stages=["critique"],
            output_dir=out,
            teacher_backend="openai",
            teacher_model=model,
            teacher_base_url=base_url,
            teacher_api_key_env="CGD_BENCH_NO_KEY",
            concurrency=concurrency,
            max_new_tokens=max_tokens,
            max_records=n,
        )
        pipeline = Pipeline(config)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            summary = pipeline.run()
        return summary["stages"]["critique"].get("generated", 0)


def _scripted_server(delay: float, urls) -> None:
    with ScriptedServer(delay=delay) as server:
        urls.put(server.base_url)
        threading.Event().wait()


def measure(runs: dict, repeats: int) -> dict[str, float]:
    """
    Median requests/s of each client over `repeats` rounds, after one warm-up run each. Clients take turns within a
    round, in a rotating order, so that a slow phase of a busy 2-core machine does not land on one client only.
    """
    for run in runs.values():
        run()
    rates: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for round_index in range(repeats):
        for name in names[round_index % len(names) :] + names[: round_index % len(names)]:
            start = time.perf_counter()
            done = runs[name]()
            rates[name].append(done / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max_tokens", type=int, default=16)
    parser.add_argument("--delay", type=float, default=0.02, help="Scripted server: seconds per reply.")
    parser.add_argument("--repeats", type=int, default=4)
    options = parser.parse_args()

    logging.disable(logging.WARNING)
    records = generate_records(options.requests, seed=7)
    workdir = Path(tempfile.mkdtemp(prefix="cgd-bench-"))
    data = workdir / "records.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), "utf-8")
    # The same user turns the critique stage sends, so all three clients do the same work.
    config = GenerateConfig(teacher_backend="openai")
    pipeline = Pipeline(config)
    messages = [
        pipeline.build_request(
            "critique", {"id": r["id"]}, {"question": r["prompt"], "initial_response": r["initial_response"]}
        ).messages
        for r in records
    ]
    n, c, t = options.requests, options.concurrency, options.max_tokens
    model_dir = prepare_builtin_model("builtin:tiny-chatml", str(workdir))

    def clients(url: str, model: str) -> dict:
        return {
            "plain": lambda: plain_loop(url, model, messages, t, c),
            "backend": lambda: backend_loop(url, model, messages, t, c),
            "stage": lambda: pipeline_stage(url, model, data, n, t, c),
        }

    rows = []
    with transformers_serve(model_dir, workdir / "serve.log") as url:
        rows.append(("transformers serve (tiny model, CPU)", measure(clients(url, model_dir), options.repeats)))
    # The scripted server runs in its own process, so that it does not compete with the clients for the GIL.
    context = multiprocessing.get_context("fork")
    urls = context.Queue()
    server = context.Process(target=_scripted_server, args=(options.delay, urls), daemon=True)
    server.start()
    try:
        name = f"scripted server ({options.delay * 1000:.0f} ms per reply)"
        rows.append((name, measure(clients(urls.get(timeout=60), "m"), options.repeats)))
    finally:
        server.terminate()

    print(f"{n} chat requests, concurrency {c}, max_tokens {t}; median of {options.repeats} runs (requests/s)\n")
    print("| server | plain openai loop | OpenAIBackend | ratio | cgd generate stage | ratio |")
    print("|---|---|---|---|---|---|")
    for name, rates in rows:
        plain, backend, stage = rates["plain"], rates["backend"], rates["stage"]
        print(f"| {name} | {plain:.1f} | {backend:.1f} | {backend / plain:.2f} | {stage:.1f} | {stage / plain:.2f} |")


if __name__ == "__main__":
    main()
