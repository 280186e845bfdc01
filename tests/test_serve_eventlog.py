"""The event log on its own: group commit order, a failing disk, close. Real files (``/dev/full`` for ENOSPC)."""

import asyncio
import os
from pathlib import Path

import pytest

from recbandits.serve.eventlog import EventLog, LogWriteError, read_event_log, scan_log


def test_concurrent_appends_are_durable_in_seq_order(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    durable_order = []

    async def main():
        futures = [log.submit([{"kind": "decision", "event_id": f"e{index}"}],
                              on_durable=lambda index=index: durable_order.append(index))
                   for index in range(300)]
        await asyncio.gather(*futures)
        # Two rows in one append are stamped together and written in one commit.
        await log.append([{"kind": "reward", "event_id": "e0"}, {"kind": "reward", "event_id": "e1"}])

    asyncio.run(main())
    log.close()
    assert durable_order == list(range(300))
    assert log.rows_written == 302 and log.last_seq == 302
    assert 1 <= log.commits <= 301
    rows = list(scan_log(tmp_path / "events.jsonl"))
    assert [row["seq"] for row in rows] == list(range(1, 303))
    assert [row["event_id"] for row in rows[:300]] == [f"e{index}" for index in range(300)]
    frame = read_event_log(tmp_path, kind="reward")
    assert frame["event_id"].tolist() == ["e0", "e1"] and frame["seq"].tolist() == [301, 302]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to make every write fail")
def test_a_failing_write_fails_every_waiter_and_every_later_append():
    log = EventLog(Path("/dev/full"))
    durable = []

    async def main():
        with pytest.raises(LogWriteError) as failed:
            await log.append([{"kind": "decision", "event_id": "e0"}], on_durable=lambda: durable.append(1))
        assert "/dev/full" in str(failed.value) and "No space left" in str(failed.value)
        # Once the log has failed, an append is refused at once: the service answers 5xx, never a false 2xx.
        with pytest.raises(LogWriteError, match="failed"):
            log.submit([{"kind": "decision", "event_id": "late"}])

    asyncio.run(main())
    log.close()
    assert durable == []  # nothing was acknowledged as durable
    assert log.rows_written == 0


def test_close_writes_what_is_queued_and_refuses_more(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")

    async def main():
        pending = [log.submit([{"kind": "decision", "event_id": f"e{index}"}]) for index in range(50)]
        log.close()
        await asyncio.gather(*pending)  # the writer resolved them before it stopped
        with pytest.raises(LogWriteError, match="closed"):
            log.submit([{"kind": "decision", "event_id": "after"}])

    asyncio.run(main())
    assert [row["seq"] for row in scan_log(tmp_path / "events.jsonl")] == list(range(1, 51))
