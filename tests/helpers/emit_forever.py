"""A writer process for the crash test: emits labels one by one and prints each acknowledged seq.

A line `acked SEQ URI` is printed only after `LabelLog.emit` returned, i.e. after the commit.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from firehose_mod.config import load_settings
from firehose_mod.daemon import open_label_log
from firehose_mod.logs import configure_logging


async def main(data_dir: str) -> None:
    settings = load_settings(env={}, data_dir=Path(data_dir))
    configure_logging("warning")  # logs go to stderr; stdout carries only acknowledgements
    async with open_label_log(settings) as log:
        i = 0
        while True:
            uri = f"at://did:plc:crash/fm.plyr.track/{i:08d}"
            stored = await log.emit(uri, "porn")
            sys.stdout.write(f"acked {stored.seq} {uri}\n")
            sys.stdout.flush()
            i += 1


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
