"""Time to the first request: from starting `python -m batch run` on a 10-row job to the first chat
request arriving at the server (start-up, imports, checks, the model list, rendering included).

    python bench/first_request.py [--runs 5]

The server is aiohttp on loopback in this process, answering the model list and every chat request
at once; it notes when the first chat request arrives. Prints the median and the best of the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from aiohttp import web

MODEL = "openai/gpt-oss-20b"
ANSWER = {"id": "x", "object": "chat.completion", "model": MODEL,
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                       "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}


class Server:
    def __init__(self) -> None:
        self.first: float | None = None
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> str:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}/v1"

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model",
                                                              "context_window": 131072, "active": True}]})

    async def chat(self, request: web.Request) -> web.Response:
        await request.read()
        if self.first is None:
            self.first = time.monotonic()
        body: dict[str, Any] = ANSWER
        return web.json_response(body)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    server = Server()
    took = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            (d / "in.csv").write_text("id,line\n" + "".join(f"{i},row {i}\n" for i in range(10)))
            (d / "job.toml").write_text(f'[input]\npath = "in.csv"\n[task]\nmodel = "{MODEL}"\n'
                                        'prompt = "Say: ${line}"\nmax-new-tokens = 10\n'
                                        '[output]\npath = "out.parquet"\n')
            server.first = None
            started = time.monotonic()
            subprocess.run([sys.executable, "-m", "batch", "run", str(d / "job.toml"), "-q", "--base-url",
                            server.url], env={**os.environ, "GROQ_API_KEY": "gsk_bench"}, check=True,
                           capture_output=True)
            assert server.first is not None
            took.append(server.first - started)
    print(f"time to the first request over {args.runs} runs: median {statistics.median(took):.3f} s, "
          f"best {min(took):.3f} s")


if __name__ == "__main__":
    main()
