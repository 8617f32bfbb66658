"""Dynamic batching: requests that arrive together share one forward pass.

One lane per kind of work (answer / draw), each an asyncio queue with one worker:
- the worker takes the first waiting job, waits `wait_ms` for company, then takes what is
  waiting up to `max_batch` rows; jobs that can share a `Pipeline` call (same key: same
  sampling, guidance, length; a seeded job only with itself, so that a seed reproduces) run
  as one batched `Pipeline.answer` / `Pipeline.draw` call in a thread, so the event loop keeps
  serving while the model computes;
- one lock over both lanes: one model, one computation at a time (two would only fight over
  the CPU cores);
- the queue is bounded in rows: past `queue_size`, `submit` raises `Overloaded` (the server
  answers 503 with Retry-After) instead of letting memory grow;
- a batch that fails (one bad row, say a prompt too long in tokens) is retried row by row so
  only the bad request fails; a streamed job that has already sent tokens is not retried (its
  client has seen them) but fails with the batch's error;
- streaming: `Pipeline.answer(on_token=...)` reports each row's tokens as they are decoded;
  they go to the job's `on_token` (called from the worker thread).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from ..pipeline import Pipeline


class Overloaded(Exception):
    """The queue is full (or the server is shutting down): try again later."""


@dataclass
class Job:
    kind: str                         # "answer" | "draw"
    key: tuple                        # jobs with equal keys may share one Pipeline call
    rows: list                        # answer: (image, question); draw: (prompt, image | None)
    args: dict                        # the Pipeline call's keyword arguments
    future: asyncio.Future
    on_token: Callable[[int, int], None] | None = None   # (row, token id), from the worker thread
    enqueued: float = field(default_factory=time.perf_counter)
    streamed: bool = False            # on_token has been called: a retry would repeat tokens


class Batcher:
    KINDS = ("answer", "draw")

    def __init__(self, pipe: Pipeline, max_batch: int, wait_ms: float, queue_size: int):
        self.pipe, self.max_batch, self.wait = pipe, max_batch, wait_ms / 1000
        self.queue_size = queue_size
        self.queues: dict[str, asyncio.Queue] = {}
        self.carry: dict[str, deque] = {k: deque() for k in self.KINDS}
        self.pending = dict.fromkeys(self.KINDS, 0)          # rows waiting, per lane
        self.stats = {"calls": 0, "rows": 0, "max_rows": 0, "jobs": 0, "rejected": 0,
                      "by_kind": {k: {"calls": 0, "rows": 0} for k in self.KINDS}}
        self._unique = itertools.count()
        self._workers: list[asyncio.Task] = []
        self._lock: asyncio.Lock | None = None
        self._busy = 0
        self.closed = False

    # ---- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        self._lock = asyncio.Lock()
        self.queues = {k: asyncio.Queue() for k in self.KINDS}
        self._workers = [asyncio.create_task(self._worker(k)) for k in self.KINDS]

    async def close(self, drain_s: float = 30.0) -> None:
        """Stop taking work, finish what was accepted (up to drain_s), then stop the workers."""
        self.closed = True
        end = time.perf_counter() + drain_s
        while (any(self.pending.values()) or self._busy) and time.perf_counter() < end:
            await asyncio.sleep(0.02)
        for w in self._workers:
            w.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for k in self.KINDS:
            for job in list(self.carry[k]) + _drain(self.queues.get(k)):
                if not job.future.done():
                    job.future.set_exception(Overloaded("the server is shutting down"))

    # ---- submitting -----------------------------------------------------------------------------
    def submit(self, kind: str, rows: list, args: dict, key: tuple = (), seeded: bool = False,
               on_token=None) -> asyncio.Future:
        if self.closed:
            raise Overloaded("the server is shutting down")
        if self.pending[kind] + len(rows) > self.queue_size:
            self.stats["rejected"] += 1
            raise Overloaded(f"the {kind} queue is full ({self.pending[kind]} rows waiting, "
                             f"limit {self.queue_size})")
        if seeded:                  # a seed reproduces only if the call holds this job alone
            key = (*key, "seed", next(self._unique))
        fut = asyncio.get_running_loop().create_future()
        job = Job(kind, key, rows, args, fut, on_token)
        self.pending[kind] += len(rows)
        self.stats["jobs"] += 1
        self.queues[kind].put_nowait(job)
        return fut

    # ---- the worker ---------------------------------------------------------------------------
    async def _worker(self, kind: str) -> None:
        q = self.queues[kind]
        while True:
            first = self.carry[kind].popleft() if self.carry[kind] else await q.get()
            if self.wait > 0:
                await asyncio.sleep(self.wait)
            batch, rows = [first], len(first.rows)
            while rows < self.max_batch and (self.carry[kind] or not q.empty()):
                job = self.carry[kind].popleft() if self.carry[kind] else q.get_nowait()
                if rows + len(job.rows) > self.max_batch:
                    self.carry[kind].appendleft(job)          # first in the next batch
                    break
                batch.append(job)
                rows += len(job.rows)
            groups: dict[tuple, list[Job]] = {}
            for job in batch:
                groups.setdefault(job.key, []).append(job)
            for group in groups.values():
                live = [j for j in group if not j.future.done()]   # timed out: skip
                try:
                    if live:
                        await self._run(kind, live)
                finally:
                    self.pending[kind] -= sum(len(j.rows) for j in group)

    async def _run(self, kind: str, jobs: list[Job]) -> None:
        self._busy += 1
        try:
            async with self._lock:
                try:
                    outs = await asyncio.to_thread(self._call, kind, jobs)
                except Exception as e:                     # noqa: BLE001 - sent to the clients
                    if len(jobs) == 1:
                        _settle(jobs[0], exc=e)
                        return
                    for j in jobs:                         # find the bad row(s); others succeed
                        if j.streamed:                     # its client has seen tokens
                            _settle(j, exc=e)
                            continue
                        try:
                            _settle(j, (await asyncio.to_thread(self._call, kind, [j]))[0])
                        except Exception as e1:            # noqa: BLE001
                            _settle(j, exc=e1)
                    return
            for j, out in zip(jobs, outs):
                _settle(j, out)
        finally:
            self._busy -= 1

    def _call(self, kind: str, jobs: list[Job]) -> list[list]:
        """One Pipeline call for all rows of `jobs` (worker thread). Returns outputs per job."""
        rows = [r for j in jobs for r in j.rows]
        owner = [(j, i) for j in jobs for i in range(len(j.rows))]
        args = jobs[0].args
        if kind == "answer":
            tap = _router(owner) if any(j.on_token for j in jobs) else None
            flat = self.pipe.answer([r[0] for r in rows], [r[1] for r in rows], **args,
                                    on_token=tap)
        else:
            images = [r[1] for r in rows]
            flat = self.pipe.draw([r[0] for r in rows], None if images[0] is None else images,
                                  **args)
        self._count(kind, len(rows))
        out, k = [], 0
        for j in jobs:
            out.append(flat[k:k + len(j.rows)])
            k += len(j.rows)
        return out

    def _count(self, kind: str, n: int) -> None:
        s = self.stats
        s["calls"] += 1
        s["rows"] += n
        s["max_rows"] = max(s["max_rows"], n)
        s["by_kind"][kind]["calls"] += 1
        s["by_kind"][kind]["rows"] += n


def _router(owner: list[tuple[Job, int]]):
    """Pipeline.answer's on_token(row, token) -> the owning job's on_token(its row, token)."""
    def report(row: int, tok: int) -> None:
        job, i = owner[row]
        if job.on_token is not None:
            job.streamed = True
            job.on_token(i, tok)
    return report


def _settle(job: Job, result=None, exc: BaseException | None = None) -> None:
    if job.future.done():                                  # timed out or cancelled meanwhile
        return
    if exc is not None:
        job.future.set_exception(exc)
    else:
        job.future.set_result(result)


def _drain(q: asyncio.Queue | None) -> list[Job]:
    out = []
    while q is not None and not q.empty():
        out.append(q.get_nowait())
    return out
