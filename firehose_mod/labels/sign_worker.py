"""Signing a batch of labels on two cores: a helper process and the calling thread (issue 19).

A label costs ~20-30 us of libsecp256k1 to sign, a third to a half of what the label log's batched
write costs in all. Threads cannot share that work (the writer thread holds the GIL between calls,
and each sign call waits up to the 5 ms switch interval to get it back), so `ParallelSigner` hands
chunks of a batch to one helper process (`python -m firehose_mod.labels.sign_worker`, started on
the first large batch) while the caller does the rest of its work, then signs chunks itself from
the back of the batch until the two meet:

- the helper is given at most `AHEAD` chunks it has not answered, so neither side ever blocks on
  a full pipe and a busy machine's slow helper leaves the rest to the caller (nothing is signed
  twice, and the caller never waits for more than the chunks in flight);
- signatures are RFC 6979 (deterministic): the helper's are byte for byte the ones the caller
  would have made, which the tests check;
- the private key goes to the helper over its stdin pipe, never on its command line or in its
  environment; the helper exits when that pipe closes (our `close()`, or this process's death);
- if the helper dies or misbehaves the caller signs what is missing itself, logs it once, and
  tries a new helper no sooner than a minute later. Keys other than secp256k1 sign in the caller.

Frames on both pipes: a 4-byte little-endian length, then the body. Caller to helper: the 32-byte
secret once, then pickled `(batch, chunk, [signing bytes, ...])`; helper to caller: `<II` batch,
chunk, then 64 bytes of r||s per label (one `write` of at most ~2 kB: atomic on a pipe).
"""

from __future__ import annotations

import os
import pickle
import select
import struct
import subprocess
import sys
import time
from collections.abc import Callable

_LEN = struct.Struct("<I")
_HEAD = struct.Struct("<II")
SIG = 64
# The helper imports this very copy of firehose_mod (a worktree on PYTHONPATH, an installed one, ...).
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); "
         "from firehose_mod.labels.sign_worker import worker_main; sys.exit(worker_main())")


# -- the helper process ------------------------------------------------------------------------
def _read_exact(fd: int, n: int) -> bytes | None:
    parts, got = [], 0
    while got < n:
        b = os.read(fd, n - got)
        if not b:
            return None
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def _read_frame(fd: int) -> bytes | None:
    head = _read_exact(fd, 4)
    if head is None:
        return None
    return _read_exact(fd, _LEN.unpack(head)[0])


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def worker_main() -> int:
    """The helper: read the key, then sign each chunk it is sent, in order, until stdin closes."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; EOF ends us
    from firehose_mod.labels.signing import k1_signer

    rfd, wfd = sys.stdin.fileno(), sys.stdout.fileno()
    secret = _read_frame(rfd)
    sign = k1_signer(secret) if secret else None
    if sign is None:
        return 2
    while (body := _read_frame(rfd)) is not None:
        batch, chunk, payloads = pickle.loads(body)
        out = _HEAD.pack(batch, chunk) + b"".join([sign(p) for p in payloads])
        _write_all(wfd, _LEN.pack(len(out)) + out)
    return 0


# -- the caller's side -------------------------------------------------------------------------
class ParallelSigner:
    """`sign_many(payloads, meanwhile)`: the r||s of each payload, signed by a helper process and
    by the calling thread at once; `meanwhile()` runs in the caller while the helper starts."""

    CHUNK = 32  # labels a frame: ~1 ms of signing, a 2 kB answer
    AHEAD = 8  # chunks the helper holds unanswered: ~40 kB of payloads, well inside a pipe's 64 kB
    MIN_LABELS = 96  # below this a batch is signed in the caller (a single emit never waits on a pipe)
    RETRY_AFTER = 60.0  # seconds before a new helper after one died
    PATIENCE = 30.0  # seconds without an answer before the helper counts as stuck (killed, replaced)

    def __init__(self, curve: str, secret: bytes | None, sign: Callable[[bytes], bytes],
                 *, on_error: Callable[[str], None] | None = None) -> None:
        self._curve = curve
        self._secret = secret
        self._sign = sign
        self._on_error = on_error
        self._proc: subprocess.Popen | None = None
        self._buf = bytearray()
        self._batch = 0
        self._outstanding = 0  # chunks sent to the helper and not yet answered (any batch)
        self._failed_at: float | None = None
        self._poll: select.poll | None = None
        self.stats = {"helper": 0, "caller": 0}  # labels signed by each side (for the benchmark)

    # lifecycle
    def _start(self) -> bool:
        if self._proc is not None:
            return True
        if self._curve != "secp256k1" or self._secret is None:
            return False
        if self._failed_at is not None and time.monotonic() - self._failed_at < self.RETRY_AFTER:
            return False
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, _ROOT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                bufsize=0, close_fds=True,
            )
            _write_all(proc.stdin.fileno(), _LEN.pack(len(self._secret)) + self._secret)
        except OSError as exc:
            self._failed(f"cannot start the signing helper: {exc}")
            return False
        self._proc, self._buf, self._outstanding, self._poll = proc, bytearray(), 0, None
        return True

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()  # the helper's EOF: it exits
        except OSError:
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()

    def _failed(self, why: str) -> None:
        self._failed_at = time.monotonic()
        proc, self._proc = self._proc, None
        if proc is not None:
            for f in (proc.stdin, proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass
            proc.kill()
            proc.wait()
        if self._on_error is not None:
            self._on_error(why)

    # the pipes
    def _send(self, batch: int, chunk: int, payloads: list[bytes]) -> bool:
        body = pickle.dumps((batch, chunk, payloads), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            _write_all(self._proc.stdin.fileno(), _LEN.pack(len(body)) + body)
        except OSError as exc:
            self._failed(f"the signing helper stopped reading: {exc}")
            return False
        self._outstanding += 1
        return True

    def _receive(self, block: bool) -> list[tuple[int, int, bytes]] | None:
        """Answers read so far (waiting for at least one when `block`); None if the helper is gone."""
        fd = self._proc.stdout.fileno()
        if self._poll is None:  # poll, not select: a daemon with 1,000 subscribers has fds past 1024
            self._poll = select.poll()
            self._poll.register(fd, select.POLLIN)
        deadline = time.monotonic() + self.PATIENCE
        while True:
            ready = self._poll.poll(1000 if block else 0)
            if ready:
                data = os.read(fd, 1 << 16)
                if not data:
                    self._failed("the signing helper exited")
                    return None
                self._buf += data
                out = []
                while len(self._buf) >= 4:
                    n = _LEN.unpack_from(self._buf)[0]
                    if len(self._buf) < 4 + n:
                        break
                    body = bytes(self._buf[4 : 4 + n])
                    del self._buf[: 4 + n]
                    batch, chunk = _HEAD.unpack_from(body)
                    out.append((batch, chunk, body[_HEAD.size :]))
                    self._outstanding -= 1
                if out or not block:
                    return out
            elif not block:
                return []
            elif self._proc.poll() is not None:
                self._failed(f"the signing helper exited with {self._proc.returncode}")
                return None
            elif time.monotonic() > deadline:
                self._failed(f"the signing helper did not answer in {self.PATIENCE:.0f} s")
                return None

    # signing
    def sign_many(self, payloads: list[bytes], meanwhile: Callable[[], object] | None = None) -> list[bytes]:
        """The 64-byte signature of each payload, in order. `meanwhile()` runs in the calling thread
        once the helper has its first chunks (work that does not need the signatures)."""
        n = len(payloads)
        if n < self.MIN_LABELS or not self._start() or not self._drain_stale():
            if meanwhile is not None:
                meanwhile()
            self.stats["caller"] += n
            return [self._sign(p) for p in payloads]
        self._batch = batch = (self._batch + 1) & 0xFFFFFFFF
        size, sign = self.CHUNK, self._sign
        chunks = (n + size - 1) // size
        sigs: list[bytes | None] = [None] * chunks
        # The helper takes chunks from the front (at most AHEAD unanswered), we take them from the back.
        sent, back, got = 0, chunks - 1, 0
        first = min(self.AHEAD, max(1, chunks // 2))
        while sent < first and self._send(batch, sent, payloads[sent * size : (sent + 1) * size]):
            sent += 1
        if meanwhile is not None:
            meanwhile()
        while self._proc is not None and got < sent:
            answers = self._receive(block=back < sent)
            if answers is None:
                break
            for b, c, body in answers:
                expected = SIG * (min(n, (c + 1) * size) - c * size)
                if b == batch and c < sent and sigs[c] is None and len(body) == expected:
                    sigs[c] = body
                    got += 1
                    if sent <= back and self._send(batch, sent, payloads[sent * size : (sent + 1) * size]):
                        sent += 1
            if back >= sent:
                sigs[back] = b"".join([sign(p) for p in payloads[back * size : (back + 1) * size]])
                back -= 1
        out: list[bytes] = []
        helper = 0
        for c, body in enumerate(sigs):
            if body is None:  # ours from the back, or the helper is gone: sign what is missing here
                body = b"".join([sign(p) for p in payloads[c * size : (c + 1) * size]])
            elif c < sent:
                helper += len(body) // SIG
            out.extend([body[i : i + SIG] for i in range(0, len(body), SIG)])
        self.stats["helper"] += helper
        self.stats["caller"] += n - helper
        return out

    def _drain_stale(self) -> bool:
        """Wait out the answers of a batch that raised half-way, so the pipes start empty."""
        while self._outstanding > 0:
            if self._receive(block=True) is None:
                return False
        return True


if __name__ == "__main__":
    sys.exit(worker_main())
