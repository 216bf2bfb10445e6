"""What one process runs when several share the database (`firehose-mod run --role`).

- `all` (the default): everything, in one process: the embedded, one-command setup.
- `ingest`: the source (Jetstream or the relay) into the scan queue, and the jobs that must run
  once per deployment (LLM triage, moderator notifications, transparency posts). Exactly one
  ingest process holds the source lock; others wait as hot standbys and take over from the
  saved cursor when it dies (store/source_lock.py).
- `scan`: scan workers; any number, sharing the queue through leases (store/scan_queue.py).
- `serve`: the front door only (subscribeLabels, queryLabels, the admin page, reports).

Every role serves the front door on its own port, so each process answers /xrpc/_health,
/metrics and /admin/status; `serve` processes are the ones to put behind the load balancer.
`-NAME` after the role (`scan-2`) names the instance: the scan leases are held in that name,
so a restarted instance takes back its own jobs at once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Role:
    kind: str  # all, ingest, scan or serve
    name: str  # the instance name (the whole --role value)

    @property
    def ingests(self) -> bool:
        return self.kind in ("all", "ingest")

    @property
    def scans(self) -> bool:
        return self.kind in ("all", "scan")

    @property
    def worker(self) -> str | None:
        """The scan leases' holder name; None for `all`, the only scan process, which takes
        back every running job at start."""
        return None if self.kind == "all" else self.name


def parse_role(text: str) -> Role:
    """`scan-2` -> Role("scan", "scan-2"); the config check has vetted the syntax."""
    return Role(text.split("-", 1)[0], text)
