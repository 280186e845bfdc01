"""The durable event log: append-only JSON Lines, one row per event, flushed and fsynced before any response.

``EventLog.append`` stamps each row with the next sequence number (``seq``) and a timestamp (``ts``) at once,
then a single writer writes every row queued so far in one ``write`` + ``fsync`` (group commit) and resolves
the appends it covered, in ``seq`` order. A service answers 2xx only after its rows are durable.

Read it with pandas: ``pandas.read_json(path, lines=True)`` or ``read_event_log(state_dir)``; the columns are
described in docs/serve.md ("Event log schema"). A crash can leave a torn last line (a row whose write never
completed, hence never acknowledged): ``scan_log`` truncates it away before the log is appended to again.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

LOG_FILE = "events.jsonl"
KINDS = ("decision", "reward", "expire", "version", "quarantine")


# orjson: about 20x faster than the json module on a decision row, which every rank request writes; it also
# takes numpy arrays and scalars as they are. It writes NaN and infinity as null: every float the service logs
# or answers is finite by construction (requests are validated, scores are checked in ``LinearCandidatePolicy.decide``).
JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def dumps(data: Any) -> bytes:
    """Compact JSON (the service's one encoder: log rows and responses)."""
    return orjson.dumps(data, option=JSON_OPTIONS)


def encode(row: dict[str, Any]) -> bytes:
    return orjson.dumps(row, option=JSON_OPTIONS | orjson.OPT_APPEND_NEWLINE)


def repair_log(path: Path) -> int:
    """Cut a torn last line (a write a crash interrupted: never acknowledged) off the log; return bytes cut."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "r+b") as handle:
        position = size
        chunk = 4096
        while position > 0:
            start = max(0, position - chunk)
            handle.seek(start)
            block = handle.read(position - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            position = start
        else:
            end = 0
        if end < size:
            handle.truncate(end)
            handle.flush()
            os.fsync(handle.fileno())
        return size - end


def scan_log(path: Path, repair: bool = True) -> Iterator[dict[str, Any]]:
    """Every row of the log in order (streamed); a torn last line is cut off the file first (``repair``)."""
    if not path.exists():
        return
    if repair:
        repair_log(path)
    with open(path, "rb") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.endswith(b"\n"):
                return  # a torn tail left in place (repair=False)
            if len(line) <= 1:
                continue
            try:
                yield orjson.loads(line)
            except orjson.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_number} is not a JSON row ({error}); the log is corrupt") from None


def read_event_log(state_dir: str | Path, kind: str | None = None):
    """The event log of a state dir as a pandas DataFrame (optionally one kind of row)."""
    import pandas as pd

    path = Path(state_dir) / LOG_FILE
    frame = pd.read_json(path, lines=True, dtype=False) if path.stat().st_size else pd.DataFrame()
    if kind is not None and len(frame):
        frame = frame[frame["kind"] == kind].dropna(axis=1, how="all").reset_index(drop=True)
    return frame


class LogWriteError(RuntimeError):
    """The log could not be written: the service stops acknowledging anything."""


class EventLog:
    """Append-only JSONL file with sequence numbers and group commit (see the module docstring).

    One writer thread takes every row queued so far, writes and fsyncs them, and hands the whole commit back to
    the event loop in one ``call_soon_threadsafe``: per commit the loop does one callback (``on_durable`` in
    order, then the futures), not a task wake-up plus an executor round trip.
    """

    def __init__(self, path: Path, next_seq: int = 1, fsync: bool = True):
        self.path = Path(path)
        self.fsync = fsync
        self.next_seq = next_seq
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)  # users' contexts and ids
        os.fchmod(self._fd, 0o600)
        self._queue: list[tuple[bytes, asyncio.Future, Callable[[], None] | None]] = []
        self._queued = threading.Condition()
        self._writer: threading.Thread | None = None
        self._closing = False
        self.failure: BaseException | None = None
        self._last: asyncio.Future | None = None
        self.rows_written = 0
        self.commits = 0

    @property
    def last_seq(self) -> int:
        return self.next_seq - 1

    def stamp(self, rows: list[dict[str, Any]]) -> None:
        now = time.time()
        for row in rows:
            row["seq"] = self.next_seq
            self.next_seq += 1
            row.setdefault("ts", now)

    def write_now(self, rows: list[dict[str, Any]]) -> None:
        """Stamp, write and fsync synchronously (startup, before the event loop serves anything)."""
        self.stamp(rows)
        self._write(b"".join(encode(row) for row in rows))

    def submit(self, rows: list[dict[str, Any]], on_durable: Callable[[], None] | None = None) -> asyncio.Future:
        """Stamp the rows now; return a future done once they are on disk (``on_durable`` runs first, in order)."""
        if self.failure is not None:
            raise LogWriteError(f"the event log {self.path} failed: {self.failure}")
        self.stamp(rows)
        future = asyncio.get_running_loop().create_future()
        data = b"".join(encode(row) for row in rows)
        with self._queued:
            if self._closing:
                raise LogWriteError(f"the event log {self.path} is closed")
            self._queue.append((data, future, on_durable))
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="eventlog", daemon=True)
                self._writer.start()
            self._queued.notify()
        self._last = future
        return future

    async def append(self, rows: list[dict[str, Any]], on_durable: Callable[[], None] | None = None) -> None:
        await self.submit(rows, on_durable)

    def _write_loop(self) -> None:
        """The writer thread: group commits until ``close``; each commit resolved on its futures' loop."""
        while True:
            with self._queued:
                while not self._queue and not self._closing:
                    self._queued.wait()
                if not self._queue:
                    return
                batch, self._queue = self._queue, []
            error = self.failure
            if error is None:
                try:
                    self._write(b"".join(item[0] for item in batch))
                except BaseException as exc:  # noqa: BLE001 - every waiter must hear about it
                    self.failure = error = exc
            loops: dict[asyncio.AbstractEventLoop, list] = {}
            for item in batch:
                loops.setdefault(item[1].get_loop(), []).append(item)
            for loop, items in loops.items():
                try:
                    loop.call_soon_threadsafe(self._resolve, items, error)
                except RuntimeError:  # that loop is closed: nobody waits there any more
                    pass

    def _resolve(self, batch: list[tuple[bytes, asyncio.Future, Callable[[], None] | None]],
                 error: BaseException | None) -> None:
        """On the event loop: run the commit's ``on_durable`` callbacks in order, then complete its futures."""
        if error is not None:
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(LogWriteError(f"the event log {self.path} failed: {error}"))
            return
        for _, _, on_durable in batch:
            if on_durable is not None:
                try:
                    on_durable()
                except Exception:  # noqa: BLE001 - a bookkeeping bug must not stop the log
                    import logging

                    logging.getLogger(__name__).exception("on_durable callback failed")
        for _, future, _ in batch:
            if not future.done():
                future.set_result(None)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        if self.fsync:
            os.fsync(self._fd)
        self.commits += 1
        self.rows_written += data.count(b"\n")

    async def drain(self) -> None:
        """Wait until everything submitted so far is durable."""
        if self._last is not None and not self._last.done():
            await asyncio.wait([self._last])

    def close(self) -> None:
        """Write what is queued, stop the writer thread, close the file."""
        with self._queued:
            self._closing = True
            self._queued.notify()
        if self._writer is not None:
            self._writer.join()
        try:
            os.close(self._fd)
        except OSError:
            pass
