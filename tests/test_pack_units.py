"""A pack's answer taken apart (`render.packs`), its usage shared out (`render.shares`), and a pool that
stops while rows of a pack wait to go again: no network, the pool in virtual time."""

from __future__ import annotations

import json
import random
from typing import Any

from fakeclock import run_virtual

from batch.records import Answer, Completion, Request
from batch.render.packer import Packer
from batch.render.packs import RESENT, Pack, resumed
from batch.render.shares import shares
from batch.report.summary import RunStats
from batch.send.pacing import Pacer
from batch.send.pool import Pool
from batch.send.retry import RetryPolicy


def row(i: int, prompt: str | None = None) -> Request:
    body = json.dumps({"model": "m", "messages": [{"role": "system", "content": "S"},
                                                  {"role": "user", "content": prompt or f"prompt {i}"}]})
    return Request(fingerprint=f"fp{i}", body=body.encode(), est_tokens=10, row=i)


def packs_of(n: int, size: int, tries: int = 1) -> list[Request]:
    packer = Packer(size, server=None, shape=None, budget=100, limit=lambda: 10**9, tries=tries)
    out = [r for i in range(n) for r in packer.add(row(i))]
    return out + list(packer.flush())


def completion(items: list[dict[str, Any]], *, prompt: int = 100, output: int = 40,
               finish: str = "stop") -> Completion:
    return Completion(text=json.dumps({"answers": items}), finish_reason=finish, model="m",
                      request_id="req_1", input_tokens=prompt, output_tokens=output,
                      total_tokens=prompt + output)


def test_shares_add_up_exactly_and_split_evenly() -> None:
    rng = random.Random(5)
    for _ in range(500):
        weights = [rng.random() * rng.choice((0, 1, 10)) for _ in range(rng.randint(1, 30))]
        total = rng.randint(0, 10**6)
        got = shares(total, weights)
        assert sum(g or 0 for g in got) == total and all((g or 0) >= 0 for g in got)
    assert shares(10, [1.0, 1.0, 1.0]) == [4, 3, 3]
    assert shares(None, [1.0, 2.0]) == [None, None]


def test_each_row_takes_its_own_item_and_only_that() -> None:
    pack = packs_of(4, 4)[0]
    assert isinstance(pack.pack, Pack)
    items = [{"id": "2", "answer": "two"}, {"id": "1", "answer": "one"},  # any order
             {"id": "3", "answer": "x"}, {"id": "3", "answer": "three"},  # repeated: neither copy
             {"id": "9", "answer": "four?"}]  # renamed: row 4's item is missing
    good, again = pack.pack.outcome(completion(items), attempts=1, latency_s=0.5)
    assert {a.fingerprint: a.text for a in good} == {"fp0": "one", "fp1": "two"}
    assert sorted(m.fingerprint for m in again) == ["fp2", "fp3"]
    # The server's 100 prompt and 40 completion tokens, all shared out: the rows sent again keep theirs.
    assert sum(a.input_tokens or 0 for a in good) + sum(m.spent.input_tokens or 0 for m in again) == 100
    assert sum(a.output_tokens or 0 for a in good) + sum(m.spent.output_tokens or 0 for m in again) == 40
    assert all(a.rows_in_request == 4 and a.attempts == 1 for a in good)


def test_a_cut_pack_goes_again_in_halves_and_a_row_alone_is_retried_until_its_attempts_end() -> None:
    pack = packs_of(4, 4, tries=3)[0]
    assert pack.pack is not None
    good, again = pack.pack.answers(completion([], finish="length"), attempts=1, latency_s=None)
    assert good == [] and [len(r.fingerprints) for r in again] == [2, 2]
    lone = packs_of(1, 1, tries=3)[0]
    assert lone.pack is not None
    lost = completion([])  # the model answered, but without the row's item
    good, again = lone.pack.answers(lost, attempts=1, latency_s=None)
    assert good == [] and len(again) == 1  # asked again: 1 of 3 attempts spent
    assert again[0].pack is not None
    good, again = again[0].pack.answers(lost, attempts=2, latency_s=None)
    assert again == [] and good[0].error and good[0].permanent and good[0].attempts == 3
    assert good[0].input_tokens == 200  # both requests' prompt tokens stay with the row


def test_a_pool_stopped_while_rows_wait_to_go_again_keeps_what_they_cost() -> None:
    """A pack of 4 answered for 2 rows; the pool stops before the other 2 go again: they are stored as
    `RESENT` with their share of the tokens, and the next run sends them on in a pack of half the size
    (`resumed`), their earlier tokens added to their answers."""
    got: list[Answer] = []
    pool: Pool | None = None

    async def send(body: bytes) -> Completion:
        return completion([{"id": "1", "answer": "one"}, {"id": "2", "answer": "two"}])

    def on_answer(a: Answer) -> None:
        got.append(a)
        assert pool is not None
        pool.stop("interrupted")  # as the first answers arrive: the rows sent again never leave

    async def main() -> None:
        nonlocal pool
        pool = Pool(send, Pacer(10**9, 10**12), RetryPolicy(max_attempts=3), concurrency=2,
                    on_answer=on_answer, stats=RunStats())
        await pool.run(packs_of(4, 4))
    run_virtual(main())
    resent = {a.fingerprint: a for a in got if a.error == RESENT}
    assert sorted(resent) == ["fp2", "fp3"] and not any(a.permanent for a in resent.values())
    assert sum(a.input_tokens or 0 for a in got) == 100 and sum(a.output_tokens or 0 for a in got) == 40
    size, spent, attempts = resumed(resent["fp2"])
    assert (size, attempts) == (2, 1) and spent.input_tokens == resent["fp2"].input_tokens
    assert resumed(next(a for a in got if a.ok)) == (None, resumed(None)[1], 0)
