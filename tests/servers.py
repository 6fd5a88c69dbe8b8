"""Real servers on loopback for the HTTP backend tests: `transformers serve`, and a scriptable OpenAI-style server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen | None = None, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@contextmanager
def transformers_serve(model_dir: str, log_path: Path):
    """
    Starts `transformers serve <model_dir>` on a free loopback port, on CPU, and yields its `/v1` base URL.

    The server is the real one users run; its log goes to `log_path`.
    """
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "transformers"),
        "serve",
        model_dir,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_until_up(f"http://127.0.0.1:{port}/health", process)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def count_tokens(text: str) -> int:
    """The scripted server's tokenizer: one token per whitespace-separated word."""
    return len(text.split())


class ScriptedServer:
    """
    A minimal OpenAI-compatible server on loopback (`/v1/chat/completions`, `/v1/completions`, `/v1/models`) that
    answers by script, for fault injection, and behaves like vLLM where it matters.

    Each request's last user message (or prompt) is looked up in `faults`: a list of what to do on successive attempts
    (`400`, `401`, `429`, `500`, `"timeout"`, `"garbage"`, `"empty"`); once the list is used up (or for unlisted
    messages) it answers `200` with `reply(messages)`, cut before the first of the request's `stop` strings as vLLM
    does. Every request is recorded (`requests`, `bodies`, `auth_headers`) for tests to count and read.

    With `context`, prompts are measured in words (`count_tokens`) and a request whose prompt plus `max_tokens`
    exceeds the context gets vLLM's 400 and its error body; `/v1/models` reports the context as vLLM's
    `max_model_len` unless `report_context=False`.

    Args:
        reply: Builds the answer text from the messages (default: echoes a digest of the last message).
        delay: Seconds to wait before answering a successful request (to keep requests in flight).
        timeout_sleep: Seconds a `"timeout"` answer stalls (longer than the client's timeout), or until the server
            is closed.
        retry_after: The `Retry-After` header of `429` answers.
        context: The served model's context length in words, or `None` (no limit).
        report_context: Whether `/v1/models` reports `max_model_len`.
        model: The served model's name in `/v1/models`.
    """

    def __init__(
        self,
        reply=None,
        delay: float = 0.0,
        timeout_sleep: float = 3.0,
        faults: dict | None = None,
        retry_after: str = "0",
        context: int | None = None,
        report_context: bool = True,
        model: str = "teacher",
    ):
        self.reply = reply or (lambda messages: f"Answer to: {messages[-1]['content'][:60]}\nConclusion: right")
        self.delay = delay
        self.timeout_sleep = timeout_sleep
        self.retry_after = retry_after
        self.faults = {key: list(value) for key, value in (faults or {}).items()}
        self.context = context
        self.report_context = report_context
        self.model = model
        self.requests: list[str] = []
        self.bodies: list[dict] = []
        self.auth_headers: list[str] = []
        self.lock = threading.Lock()
        self.closed = threading.Event()
        self.active = 0  # requests being handled
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                if self.path != "/v1/models":
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                    return
                entry = {"id": server.model, "object": "model", "created": 0, "owned_by": "scripted"}
                if server.context is not None and server.report_context:
                    entry["max_model_len"] = server.context
                self._send(200, {"object": "list", "data": [entry]})

            def do_POST(self):
                with server.lock:
                    server.active += 1
                try:
                    self._post()
                finally:
                    with server.lock:
                        server.active -= 1

            def _post(self):
                if self.path not in ("/v1/chat/completions", "/v1/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                    return
                try:
                    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                except (ValueError, OSError):  # the client died while sending (kill -9 test)
                    return
                chat = self.path == "/v1/chat/completions"
                messages = body["messages"] if chat else [{"role": "user", "content": body["prompt"]}]
                key = messages[-1]["content"]
                with server.lock:
                    server.requests.append(key)
                    server.bodies.append(body)
                    server.auth_headers.append(self.headers.get("Authorization", ""))
                    plan = server.faults.get(key)
                    action = plan.pop(0) if plan else 200
                if action == "timeout":
                    server.closed.wait(server.timeout_sleep)
                    action = 200
                if action in (400, 401, 429, 500):
                    self._send(action, {"error": {"message": f"scripted {action}", "type": "scripted"}})
                    return
                if action == "garbage":
                    self._send(200, None, raw=b"this is not json")
                    return
                if action == "empty":
                    empty = {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": []}
                    self._send(200, empty)
                    return
                prompt_tokens = sum(count_tokens(m["content"]) for m in messages)
                if server.context is not None and self._over_context(prompt_tokens, body.get("max_tokens")):
                    return
                time.sleep(server.delay)
                text = server.reply(messages)
                for stop in body.get("stop") or []:
                    text = text.split(stop)[0]
                choice = (
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                    if chat
                    else {"index": 0, "finish_reason": "stop", "text": text}
                )
                self._send(
                    200,
                    {
                        "id": "x",
                        "object": "chat.completion" if chat else "text_completion",
                        "created": 0,
                        "model": body.get("model", "m"),
                        "choices": [choice],
                        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 5, "total_tokens": 15},
                    },
                )

            def _over_context(self, prompt_tokens: int, max_tokens: int | None) -> bool:
                # vLLM's words and error body for a request that does not fit the context.
                context = server.context
                if prompt_tokens >= context:
                    message = (
                        f"This model's maximum context length is {context} tokens. However, your request has "
                        f"{prompt_tokens} input tokens. Please reduce the length of the input messages."
                    )
                elif max_tokens is not None and prompt_tokens + max_tokens > context:
                    message = (
                        f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This model's maximum "
                        f"context length is {context} tokens and your request has {prompt_tokens} input tokens "
                        f"({max_tokens} > {context} - {prompt_tokens})."
                    )
                else:
                    return False
                self._send(400, {"error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}})
                return True

            def _send(self, status, payload, raw: bytes | None = None):
                data = raw if raw is not None else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    if status == 429:
                        self.send_header("Retry-After", server.retry_after)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # bound here, so no other process can take it
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def counts(self) -> Counter:
        with self.lock:
            return Counter(self.requests)

    def settled_count(self, quiet: float = 0.5, timeout: float = 60) -> int:
        """
        How many requests arrived, once none is being handled and none has arrived for `quiet` seconds: after a
        client is killed, what it had sent may still be in the socket buffers, to be read and counted later.
        """
        deadline, last, since = time.monotonic() + timeout, -1, time.monotonic()
        while time.monotonic() < deadline:
            with self.lock:
                count, busy = len(self.requests), self.active
            if count != last or busy:
                last, since = count, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return count
            time.sleep(0.05)
        raise AssertionError(f"the server was still receiving requests after {timeout} s")

    def __enter__(self) -> ScriptedServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.closed.set()
        self.httpd.shutdown()
        self.httpd.server_close()
