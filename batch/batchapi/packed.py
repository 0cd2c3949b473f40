"""Packs through the Batch API (`[task] rows-per-request`): one JSONL line a pack, taken apart at merge.

    row requests ─► render.packer ─► pack lines ─► file ─► batch ─► result line ─► each row's answer
                      ▲                  └─► store.packlines (before the file leaves)         │
                      └──────── rows without a good item: a smaller pack, next round ◄────────┘

A pack's line has the pack's custom id; which rows it carries is written beside the ledger before the
file is uploaded, so a later run that merges the result takes it apart the same way. A row whose item
came back missing, repeated or invalid (or whose pack failed) is stored as a transient failure marked
`RESENT` that keeps its share of the tokens (counted in the run's figures then, and not again), and is
submitted again: in the next round of this run (a new batch), else by the next run, in a pack of half
the size it was in, its earlier tokens added to its answer when it comes (its usage columns then add
up to what it cost). A row alone fails as an online one does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace

from batch.job.schema import Shape
from batch.records import Answer, Completion, Request
from batch.render.packer import Packer
from batch.render.packs import RESENT, Base, Member, Pack, resent, resumed
from batch.render.shares import Spent
from batch.report.summary import RunStats
from batch.store.answers import Store
from batch.store.packlines import PackLine, PackLines

_LOOKUP = 500  # rows whose stored answers are looked up at once, for their pack size and tokens so far


class PackedBatch:
    """One Batch API run's packs: made from the rows to submit, recorded, and taken apart at merge."""

    def __init__(self, store: Store, packer: Packer, shape: Shape | None, stats: RunStats) -> None:
        self._store, self._packer, self._shape, self._stats = store, packer, shape, stats
        self._lines = PackLines(store)
        self._writing: dict[str, PackLine] = {}  # pack lines of the file being written, by custom id
        self.resend: set[str] = set()  # rows to submit again this run (their failure is this run's)

    def requests(self, rows: Iterable[Request]) -> Iterator[Request]:
        """The rows' requests in packs; a row sent again goes in a pack half the size of its last."""
        chunk: list[Request] = []
        for r in rows:
            chunk.append(r)
            if len(chunk) >= _LOOKUP:
                yield from self._packed(chunk)
                chunk = []
        yield from self._packed(chunk)
        yield from self._packer.flush()

    def _packed(self, chunk: list[Request]) -> Iterator[Request]:
        stored = self._store.get_many([r.fingerprint for r in chunk]) if chunk else {}
        for r in chunk:
            size, spent, attempts = resumed(stored[r.fingerprint][0] if r.fingerprint in stored else None)
            yield from self._packer.add(r, size=size, spent=spent, attempts=attempts)
            self.resend.discard(r.fingerprint)

    def written(self, r: Request) -> None:
        """A request went into the file being written: if a pack, its rows are kept for `recorded`."""
        if isinstance(r.pack, Pack):
            base = r.pack.base
            self._writing[r.fingerprint] = PackLine(base.shared_tokens, base.text_job, tuple(
                (m.fingerprint, m.id, m.tokens) for m in r.pack.members))

    def recorded(self, upload: int, custom_ids: Iterable[str]) -> None:
        """A file was recorded in the ledger: its pack lines are written beside it."""
        self._lines.record(upload, {c: line for c in custom_ids if (line := self._writing.pop(c, None))})
        self._writing.clear()

    def lines(self, upload: int) -> dict[str, PackLine]:
        return self._lines.of(upload)

    def split(self, line: PackLine, a: Answer) -> list[Answer]:
        """A pack line's result as its rows' answers: those answered whole, the others `RESENT`."""
        stored = self._store.get_many([fp for fp, _, _ in line.rows])
        members = tuple(_member(fp, item, tokens, stored[fp][0] if fp in stored else None)
                        for fp, item, tokens in line.rows)
        pack = Pack(Base(b"", b"", line.shared, 0, line.text_job, self._shape, self._packer.tries), members)
        if a.ok:
            good, again = pack.outcome(_completion(a), attempts=1, latency_s=None)
        elif len(members) > 1:  # a failed line is not billed: its rows go again, smaller
            good, again = [], [replace(m, attempts=m.attempts + 1) for m in members]
        else:
            good, again = pack.failures(a.error or "", permanent=a.permanent, attempts=1,
                                        request_id=a.request_id), []
        self._stats.record_pack(len(members), len(again))
        self.resend.update(m.fingerprint for m in again)
        again_ = [resent(m, len(members)) for m in again]
        # The run's figures count what this result cost, once: not what earlier packs cost its rows.
        carried = {m.fingerprint: m.spent for m in members}
        for answer in good + again_:
            self._stats.record_answer(_less(answer, carried[answer.fingerprint]), batch=True,
                                      counted=answer.error != RESENT)
        return good + again_


def _member(fp: str, item: str, tokens: int, last: Answer | None) -> Member:
    _, spent, attempts = resumed(last)
    return Member(fp, row=int(item) - 1 if item.isdigit() else 0, id=item, item="", tokens=tokens,
                  spent=spent, attempts=attempts)


def _less(a: Answer, earlier: Spent) -> Answer:
    """The answer's usage less what earlier packs cost its row (already counted when they came)."""
    return (Spent.of(a) - earlier).charged(a)


def _completion(a: Answer) -> Completion:
    """A result line's answer as the completion it was made from (what `Pack.outcome` reads)."""
    return Completion(text=a.text, finish_reason=a.finish_reason, model=a.model, request_id=a.request_id,
                      input_tokens=a.input_tokens, output_tokens=a.output_tokens, total_tokens=a.total_tokens,
                      reasoning_tokens=a.reasoning_tokens, cached_tokens=a.cached_tokens,
                      queue_time=a.queue_time, total_time=a.total_time, reasoning=a.reasoning)
