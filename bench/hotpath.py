"""Where the CPU of one request goes, in one process against bench/fastserver.py: bare aiohttp (the
floor), batch's HTTP client alone, and batch's pool (pacing, queue, stats) around that client.

    python bench/fastserver.py --port 8766 &
    python bench/hotpath.py floor client pool [--url http://127.0.0.1:8766/v1] [--requests 20000]

No store, rendering or output: the rest of a run's cost per row is what the full run (bench/peers.py)
adds to the "pool" figure here. Prints wall time and CPU microseconds per request for each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

BODY = json.dumps({"model": "openai/gpt-oss-20b", "max_completion_tokens": 200, "messages": [
    {"role": "user", "content": "Summarise: ticket 1 word word word word word word"}]}).encode()


async def floor(url: str, n: int, c: int) -> None:
    import aiohttp
    todo = iter(range(n))
    headers = {"Authorization": "Bearer gsk_bench", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c)) as session:
        async def worker() -> None:
            for _ in todo:
                async with session.post(f"{url}/chat/completions", data=BODY, headers=headers) as resp:
                    data: Any = await resp.json(content_type=None)
                    assert data["choices"][0]["message"]["content"]
        await asyncio.gather(*(worker() for _ in range(c)))


async def client(url: str, n: int, c: int) -> None:
    from batch.send.client import Client
    todo = iter(range(n))
    async with Client(url, "gsk_bench", timeout_s=30, connections=c) as cl:
        async def worker() -> None:
            for _ in todo:
                await cl.chat(BODY)
        await asyncio.gather(*(worker() for _ in range(c)))


async def pool(url: str, n: int, c: int) -> None:
    from batch.records import Request
    from batch.report.summary import RunStats
    from batch.send.client import Client
    from batch.send.pacing import Pacer
    from batch.send.pool import Pool
    from batch.send.retry import RetryPolicy
    stats = RunStats()
    async with Client(url, "gsk_bench", timeout_s=30, connections=c) as cl:
        p = Pool(cl.chat, Pacer(1e9, 1e9), RetryPolicy(max_attempts=5), concurrency=c,
                 on_answer=stats.record_answer, stats=stats)
        await p.run([Request(row=i, fingerprint=f"{i:064x}", body=BODY, est_tokens=220) for i in range(n)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("which", nargs="+", choices=["floor", "client", "pool"])
    ap.add_argument("--url", default="http://127.0.0.1:8766/v1")
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()
    runs = {"floor": floor, "client": client, "pool": pool}
    print("| variant | wall s | CPU µs/request |\n|---|---|---|")
    for which in args.which:
        t, c0 = time.perf_counter(), time.process_time()
        asyncio.run(runs[which](args.url, args.requests, args.concurrency))
        print(f"| {which} | {time.perf_counter() - t:.2f} | "
              f"{(time.process_time() - c0) / args.requests * 1e6:.0f} |", flush=True)


if __name__ == "__main__":
    main()
