#!/usr/bin/env python3
"""firehose-mod's label server with an in-process emitter, for the live fan-out benchmark.

Usage:
    FIREHOSE_MOD_DATA_DIR=... FIREHOSE_MOD_PORT=... python3 bench/run_ours.py

Starts the server exactly as `firehose-mod serve` does (`daemon.open_label_log(daemon=True)`:
no operator pause after each commit; + `daemon.run_server` in one anyio task group, settings
from FIREHOSE_MOD_* as usual) and
prints `ready <port>`. Then it reads commands on stdin, one per line:

    emit COUNT RATE [VAL]

and calls `LabelLog.emit(uri, VAL)` COUNT times, RATE per second, in this process (the way
the scan workers will write), with uri at://did:plc:fanoutbench/app.bsky.feed.post/<ns>
where <ns> is time.time_ns() just before the emit call. When done it prints

    emitted COUNT <mean emit ms> <max emit ms>

An out-of-process writer would measure the cross-process poll (`[stream] poll_interval`,
0.25 s) instead of the in-process path; that is why this runner exists.
"""

from __future__ import annotations

import signal
import sys
import time

import anyio

from firehose_mod.config import load_settings
from firehose_mod.daemon import open_label_log, run_server
from firehose_mod.logs import configure_logging


async def _emit(label_log, count: int, rate: float, val: str) -> None:
    t0 = time.perf_counter()
    total = worst = 0.0
    for k in range(count):
        delay = t0 + k / rate - time.perf_counter()
        if delay > 0:
            await anyio.sleep(delay)
        a = time.perf_counter()
        await label_log.emit(f"at://did:plc:fanoutbench/app.bsky.feed.post/{time.time_ns()}", val)
        d = (time.perf_counter() - a) * 1000
        total += d
        worst = max(worst, d)
    print(f"emitted {count} {total / max(1, count):.3f} {worst:.3f}", flush=True)


async def _commands(label_log) -> None:
    while True:
        line = await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        if not line:
            return
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "emit":
            await _emit(label_log, int(parts[1]), float(parts[2]), parts[3] if len(parts) > 3 else "spam")


async def main() -> None:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    async with open_label_log(settings, daemon=True) as label_log, anyio.create_task_group() as tg:
        server = await tg.start(run_server, settings, label_log)
        print(f"ready {server.port}", flush=True)

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(stop_on_signal)
        await _commands(label_log)
        # stdin closed: keep serving until a signal arrives
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main)
