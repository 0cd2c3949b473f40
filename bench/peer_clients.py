"""The peers bench/peers.py runs batch against, each as a user of that tool would write it.

    python peer_clients.py {groq-sdk|aiohttp|curator} IN.csv OUT.parquet BASE_URL MODEL RPM CONCURRENCY

Runs in the peers' own virtualenv: imports nothing from batch. Every client reads the CSV, sends
"Summarise: <ticket>" for each row (at most 200 new tokens) and writes the rows with their answers to
Parquet.
"""

from __future__ import annotations

import asyncio
import csv
import json
import sys
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def read_rows(path: str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write(path: str, rows: list[dict[str, str]], answers: list[str | None]) -> None:
    table = pa.table({"id": [r["id"] for r in rows], "ticket": [r["ticket"] for r in rows],
                      "answer": answers})
    pq.write_table(table, path, compression="zstd")


async def groq_sdk(rows: list[dict[str, str]], url: str, model: str, concurrency: int) -> list[str | None]:
    from groq import AsyncGroq
    # The SDK appends /openai/v1 to a host; our base URLs already end in their API prefix.
    client = AsyncGroq(base_url=url.removesuffix("/openai/v1"), api_key="gsk_bench", max_retries=10)
    gate = asyncio.Semaphore(concurrency)

    async def one(row: dict[str, str]) -> str | None:
        async with gate:
            r = await client.chat.completions.create(
                model=model, max_completion_tokens=200,
                messages=[{"role": "user", "content": f"Summarise: {row['ticket']}"}])
            return r.choices[0].message.content

    try:
        return list(await asyncio.gather(*(one(r) for r in rows)))
    finally:
        await client.close()


async def bare_aiohttp(rows: list[dict[str, str]], url: str, model: str,
                       concurrency: int) -> list[str | None]:
    import aiohttp
    answers: list[str | None] = [None] * len(rows)
    todo = iter(range(len(rows)))
    headers = {"Authorization": "Bearer gsk_bench", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            for i in todo:
                body = json.dumps({"model": model, "max_completion_tokens": 200, "messages": [
                    {"role": "user", "content": f"Summarise: {rows[i]['ticket']}"}]})
                while True:
                    async with session.post(f"{url}/chat/completions", data=body, headers=headers) as resp:
                        data: Any = await resp.json(content_type=None)
                        if resp.status == 429:
                            await asyncio.sleep(float(resp.headers.get("retry-after", "1")))
                            continue
                        answers[i] = data["choices"][0]["message"]["content"]
                        break

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answers


def curator(rows: list[dict[str, str]], url: str, model: str, rpm: int, concurrency: int) -> list[str | None]:
    from bespokelabs import curator as cur

    class Summary(cur.LLM):  # type: ignore[misc, name-defined]
        def prompt(self, row: dict[str, Any]) -> str:
            return f"Summarise: {row['ticket']}"

        def parse(self, row: dict[str, Any], response: str) -> dict[str, Any]:
            return {"id": row["id"], "answer": response}

    llm = Summary(model_name=model, backend="openai", generation_params={"max_completion_tokens": 200},
                  backend_params={"base_url": url, "api_key": "gsk_bench", "max_requests_per_minute": rpm,
                                  "max_tokens_per_minute": 10**9, "max_retries": 10,
                                  "require_all_responses": False})
    out = llm(rows)
    dataset = getattr(out, "dataset", out)
    by_id = {r["id"]: r["answer"] for r in dataset}
    return [by_id.get(r["id"]) for r in rows]


def main() -> None:
    name, src, dst, url, model, rpm, concurrency = sys.argv[1:8]
    rows = read_rows(src)
    if name == "groq-sdk":
        answers = asyncio.run(groq_sdk(rows, url, model, int(concurrency)))
    elif name == "aiohttp":
        answers = asyncio.run(bare_aiohttp(rows, url, model, int(concurrency)))
    else:
        answers = curator(rows, url, model, int(rpm), int(concurrency))
    write(dst, rows, answers)


if __name__ == "__main__":
    main()
