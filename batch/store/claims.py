"""Claims on requests in flight, for a store several calls fill at once (the Python API's cache), so
that a request is paid once however many calls want its answer at the same time.

    call A: claim(fps) ─► send ─► answer committed, its claim deleted in the same transaction
    call B: claim(fps) ─► claimed by A: wait (`poll`) ─► A's answer ─► the row is from the store
                                      └─ A gone (released, dead, lease over) ─► claim it, send it

A claim is a row of the `claims` table: the fingerprint, the claiming call (its store run: distinct for
every call, in one process or several), its process (`host:pid`) and when the claim lapses. One
transaction claims a group of requests (`claim`), checking the answers and the claims inside it, so two
calls never both take a request; claims go away with the commit that stores their answers, and a
call's remaining ones when its pass ends (`release`). A claimant that crashed leaves its claims: they
are taken over at once when its process is gone from this host, else when their lease lapses (renewed
by a live claimant every `LEASE_S / 3`). So a waiter waits at most about `LEASE_S` for a stuck claimant.

Whatever answer the claimant stores ends the wait, a failure too: the waiter takes it as a re-run
finding it stored would (a permanent failure stays; a transient one is retried by the next call).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Sequence

from batch.store.answers import Store, answered_sql

LEASE_S = 30.0  # how long a claim holds without its claimant renewing it


class Claims:
    """The claims of one call (`store.run_id`) on `store`; used from the call's event loop only."""

    def __init__(self, store: Store, *, lease_s: float = LEASE_S) -> None:
        self._store, self._db, self._run, self._lease = store, store.db, store.run_id, lease_s
        self._owner = f"{socket.gethostname()}:{os.getpid()}"  # for a waiter on this host to check
        store.journal.on_write = self._answered  # a commit of answers ends their claims

    def claim(self, fps: Sequence[str], *,
              retry_failed: bool) -> tuple[list[str], dict[str, int], list[str]]:
        """Of requests the store had no answer for: those this call now holds (to send), those another
        live call holds (fingerprint -> its run: wait for them), and those answered meanwhile."""
        if not fps:
            return [], {}, []
        todo = json.dumps(sorted(set(fps)))
        with self._store.writing():
            self._db.execute("BEGIN IMMEDIATE")  # the write lock first: answers and claims hold still
            answered = [r[0] for r in self._db.execute(
                "SELECT j.value FROM json_each(?) j JOIN answers a ON a.fingerprint = j.value "
                f"WHERE ({answered_sql(retry_failed)})", (todo, self._run))]
            taken = {r[0]: r[1] for r in self._db.execute(
                "SELECT c.fingerprint, c.run, c.owner, c.expires FROM json_each(?) j "
                "JOIN claims c ON c.fingerprint = j.value", (todo,)) if self._holds_elsewhere(r)}
            mine = sorted(set(fps) - set(answered) - taken.keys())
            if mine:
                self._db.execute("INSERT OR REPLACE INTO claims SELECT value, ?, ?, ? FROM json_each(?)",
                                 (self._run, self._owner, time.time() + self._lease, json.dumps(mine)))
            self._db.execute("COMMIT")
        return mine, {fp: run for fp, run in taken.items() if fp not in answered}, answered

    def poll(self, waiting: dict[str, int]) -> tuple[list[str], list[str], dict[str, int]]:
        """Of requests waited for (fingerprint -> the claimant's run): those the claimant answered,
        those nobody holds any more (to claim), and those another call took over (-> its run)."""
        done: list[str] = []
        free: list[str] = []
        moved: dict[str, int] = {}
        rows = self._db.execute(
            "SELECT j.value, a.run, c.fingerprint, c.run, c.owner, c.expires FROM json_each(?) j "
            "LEFT JOIN answers a ON a.fingerprint = j.value LEFT JOIN claims c ON c.fingerprint = j.value",
            (json.dumps(list(waiting)),))
        for fp, answered_by, *claim in rows:
            if answered_by == waiting[fp]:
                done.append(fp)
            elif claim[0] is None or not self._holds_elsewhere(tuple(claim)):
                free.append(fp)
            elif claim[1] != waiting[fp]:
                moved[fp] = claim[1]
        return done, free, moved

    def renew(self) -> None:
        """This call is alive: its claims hold for another lease."""
        with self._store.writing():
            self._db.execute("UPDATE claims SET expires = ? WHERE run = ?",
                             (time.time() + self._lease, self._run))

    def release(self) -> None:
        """The call's pass is over: what it claimed and did not answer is free for others (and claims
        long lapsed, of calls that crashed, are cleared)."""
        self._store.journal.on_write = None
        with self._store.writing():
            self._db.execute("DELETE FROM claims WHERE run = ? OR expires < ?",
                             (self._run, time.time() - self._lease))

    def _answered(self, db: sqlite3.Connection, fps: Sequence[str]) -> None:
        db.execute("DELETE FROM claims WHERE run = ? AND fingerprint IN (SELECT value FROM json_each(?))",
                   (self._run, json.dumps(list(fps))))

    def _holds_elsewhere(self, claim: tuple[object, ...]) -> bool:
        """A claim (fingerprint, run, owner, expires) another call holds and may still answer."""
        _, run, owner, expires = claim
        if run == self._run:
            return False
        assert isinstance(owner, str) and isinstance(expires, float | int)
        return expires > time.time() and alive(owner)


def alive(owner: str) -> bool:
    """Whether the process `host:pid` may still be running: on another host, assumed so (its lease
    decides); on this one, whether the pid exists (a reused pid is caught by the lease)."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True
