"""Signing a batch of labels on two cores: a helper process and the calling thread (issue 19).

A label costs ~20-30 us of libsecp256k1 to sign, a third to a half of what the label log's batched
write costs in all. Threads cannot share that work (the writer thread holds the GIL between calls,
and each sign call waits up to the 5 ms switch interval to get it back), so `ParallelSigner` hands
chunks of a batch to one helper process (`python -m firehose_mod.labels.sign_worker`, started on
the first large batch) while the caller does the rest of its work, then signs chunks itself from
the back of the batch until the two meet:

- the helper is sent only the chunks both pipes hold unanswered (each asked to be 1 MB: a batch of
  a few thousand labels goes at once), so neither side ever blocks on a full pipe, and the caller
  can do other work while the helper signs (`begin` ... `finish`);
- the caller signs from the back, lowering a floor on a shared board (a memfd both map) before each
  chunk; the helper skips chunks at or above it. Where the caller reaches the chunk the helper is
  signing it waits for it (at most about a chunk's time), so nothing is signed twice unless the
  helper is stalled; a slow helper (a busy machine) only leaves more of the batch to the caller;
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

import fcntl
import mmap
import os
import pickle
import select
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable

from firehose_mod.labels.signing import k1_chunk_signer

_LEN = struct.Struct("<I")
_HEAD = struct.Struct("<II")
# The board both processes map (a memfd): the caller's (batch, floor) at 0, the helper's (batch,
# chunk it is signing) at 8. Chunks at or above the floor are the caller's (it signs from the back).
_BOARD = struct.Struct("<II")
_CALLER, _HELPER = 0, 8
SIG = 64
# The helper imports this very copy of firehose_mod (a worktree on PYTHONPATH, an installed one, ...).
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); "
         "from firehose_mod.labels.sign_worker import worker_main; sys.exit(worker_main(int(sys.argv[2])))")


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


def worker_main(board_fd: int = -1) -> int:
    """The helper: read the key, then sign each chunk it is sent, in order, until stdin closes.
    A chunk the caller has taken meanwhile (at or above its floor on the board), or of a batch the
    caller is done with, is answered with no signatures."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; EOF ends us

    rfd, wfd = sys.stdin.fileno(), sys.stdout.fileno()
    secret = _read_frame(rfd)
    sign = k1_chunk_signer(secret) if secret else None
    if sign is None:
        return 2
    board = mmap.mmap(board_fd, mmap.PAGESIZE) if board_fd >= 0 else None
    while (body := _read_frame(rfd)) is not None:
        batch, chunk, payloads = pickle.loads(body)
        out = _HEAD.pack(batch, chunk)
        if board is None:
            out += sign(payloads)
        else:
            current, floor = _BOARD.unpack_from(board, _CALLER)
            if current == batch and chunk < floor:
                _BOARD.pack_into(board, _HELPER, batch, chunk)
                out += sign(payloads)
        _write_all(wfd, _LEN.pack(len(out)) + out)
    return 0


# -- the caller's side -------------------------------------------------------------------------
class Signing:
    """A batch being signed: `ParallelSigner.begin` made it, `finish` or `abandon` ends it."""

    __slots__ = ("batch", "payloads", "sigs", "by_helper", "sent", "back")

    def __init__(self, batch: int, payloads: list[bytes], chunks: int) -> None:
        self.batch, self.payloads = batch, payloads
        self.sigs: list[bytes | None] = [None] * chunks
        self.by_helper = [False] * chunks
        self.sent, self.back = 0, chunks - 1  # chunks sent from the front; the next of ours from the back


class ParallelSigner:
    """`sign_many(payloads, meanwhile)`: the r||s of each payload, signed by a helper process and
    by the calling thread at once; `meanwhile()` runs in the caller while the helper starts.
    `begin(payloads)` ... `finish(signing)` is the same in two steps: the helper signs in between,
    while the caller does other work (nothing reads the pipes then, so `begin` sends only what the
    pipes hold: the helper never blocks on a full one)."""

    CHUNK = 32  # labels a frame: ~1 ms of signing, a 2 kB answer
    PIPE_BYTES = 1 << 20  # each pipe's size, asked of the kernel (F_SETPIPE_SZ; Linux's default is 64 kB)
    MIN_LABELS = 96  # below this a batch is signed in the caller (a single emit never waits on a pipe)
    RETRY_AFTER = 60.0  # seconds before a new helper after one died
    PATIENCE = 30.0  # seconds without an answer before the helper counts as stuck (killed, replaced)

    def __init__(self, curve: str, secret: bytes | None, sign: Callable[[bytes], bytes],
                 *, on_error: Callable[[str], None] | None = None) -> None:
        self._curve = curve
        self._secret = secret
        # A chunk at a time (buffers made once a chunk) where the key allows it, else one by one.
        chunk = k1_chunk_signer(secret) if curve == "secp256k1" and secret is not None else None
        self._sign_chunk = chunk or (lambda payloads: b"".join([sign(p) for p in payloads]))
        self._on_error = on_error
        self._proc: subprocess.Popen | None = None
        self._buf = bytearray()
        self._batch = 0
        self._outstanding = 0  # chunks sent to the helper and not yet answered (any batch)
        self._inflight: deque[int] = deque()  # the frame sizes of those chunks, oldest first
        self._inflight_bytes = 0  # their sum
        self._room = (1 << 16, 1 << 16)  # bytes each pipe holds (to the helper, from it)
        self._failed_at: float | None = None
        self._progress = 0.0  # when the helper last answered (or had nothing to answer)
        self._poll: select.poll | None = None
        self._board: mmap.mmap | None = None  # shared with the helper (see _BOARD)
        self.stats = {"helper": 0, "caller": 0}  # labels signed by each side (for the benchmark)

    # lifecycle
    def _start(self) -> bool:
        if self._proc is not None:
            return True
        if self._curve != "secp256k1" or self._secret is None:
            return False
        if self._failed_at is not None and time.monotonic() - self._failed_at < self.RETRY_AFTER:
            return False
        board_fd = -1
        try:
            board_fd = os.memfd_create("firehose-mod-signing")
            os.ftruncate(board_fd, mmap.PAGESIZE)
            board = mmap.mmap(board_fd, mmap.PAGESIZE)
            proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, _ROOT, str(board_fd)], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, bufsize=0, close_fds=True, pass_fds=(board_fd,),
            )
            _write_all(proc.stdin.fileno(), _LEN.pack(len(self._secret)) + self._secret)
        except (OSError, AttributeError) as exc:  # AttributeError: no os.memfd_create (not Linux)
            self._failed(f"cannot start the signing helper: {exc}")
            return False
        finally:
            if board_fd >= 0:
                os.close(board_fd)  # the mapping and the helper's copy keep it
        self._proc, self._buf, self._outstanding, self._poll = proc, bytearray(), 0, None
        self._inflight, self._inflight_bytes = deque(), 0
        self._board = board
        self._room = (_grow_pipe(proc.stdin.fileno(), self.PIPE_BYTES), _grow_pipe(proc.stdout.fileno(), self.PIPE_BYTES))
        return True

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if self._board is not None:
            self._board.close()
            self._board = None
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
    def _fits(self, payloads: list[bytes]) -> bool:
        """Whether one more chunk of `payloads` fits both pipes with what is in flight: the helper
        never blocks writing an answer, we never block writing a chunk."""
        to_helper = self._inflight_bytes + sum(map(len, payloads)) + 64 * len(payloads) + 64
        answers = (self._outstanding + 1) * (4 + _HEAD.size + SIG * self.CHUNK)
        return to_helper <= self._room[0] and answers <= self._room[1]

    def _send(self, batch: int, chunk: int, payloads: list[bytes]) -> bool:
        body = pickle.dumps((batch, chunk, payloads), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            _write_all(self._proc.stdin.fileno(), _LEN.pack(len(body)) + body)
        except OSError as exc:
            self._failed(f"the signing helper stopped reading: {exc}")
            return False
        if self._outstanding == 0:
            self._progress = time.monotonic()  # the helper's clock starts with its first unanswered chunk
        self._outstanding += 1
        self._inflight.append(4 + len(body))
        self._inflight_bytes += 4 + len(body)
        return True

    def _receive(self, wait_ms: int = 0) -> list[tuple[int, int, bytes]] | None:
        """The answers that have arrived (waiting up to `wait_ms` for some); None if the helper is
        gone or stuck."""
        fd = self._proc.stdout.fileno()
        if self._poll is None:  # poll, not select: a daemon with 1,000 subscribers has fds past 1024
            self._poll = select.poll()
            self._poll.register(fd, select.POLLIN)
        out: list[tuple[int, int, bytes]] = []
        while self._poll.poll(0 if out else wait_ms):
            data = os.read(fd, 1 << 16)
            if not data:
                self._failed("the signing helper exited")
                return None
            self._buf += data
            while len(self._buf) >= 4:
                n = _LEN.unpack_from(self._buf)[0]
                if len(self._buf) < 4 + n:
                    break
                body = bytes(self._buf[4 : 4 + n])
                del self._buf[: 4 + n]
                batch, chunk = _HEAD.unpack_from(body)
                out.append((batch, chunk, body[_HEAD.size :]))
                self._outstanding -= 1
                if self._inflight:
                    self._inflight_bytes -= self._inflight.popleft()  # answers come in the order the chunks went
        now = time.monotonic()
        if out or self._outstanding == 0:
            self._progress = now
        elif now - self._progress > self.PATIENCE:
            self._failed(f"the signing helper did not answer in {self.PATIENCE:.0f} s")
            return None
        return out

    # signing
    def sign_many(self, payloads: list[bytes], meanwhile: Callable[[], object] | None = None) -> list[bytes]:
        """The 64-byte signature of each payload, in order. `meanwhile()` runs in the calling thread
        once the helper has its first chunks (work that does not need the signatures)."""
        signing = self.begin(payloads)
        if meanwhile is not None:
            meanwhile()
        return self.finish(signing)

    def ready(self, n: int) -> bool:
        """Whether a batch of `n` would be signed with the helper (started now if it is not running)."""
        return n >= self.MIN_LABELS and self._start()

    def begin(self, payloads: list[bytes]) -> Signing | list[bytes]:
        """Start signing `payloads`: the helper is sent the chunks the pipes hold from the front.
        A small batch (or no helper) is signed here and now: its signatures are returned."""
        n = len(payloads)
        if n < self.MIN_LABELS or not self._start():
            self.stats["caller"] += n
            body = self._sign_chunk(payloads)
            return [body[i : i + SIG] for i in range(0, len(body), SIG)]
        self._batch = batch = (self._batch + 1) & 0xFFFFFFFF
        signing = Signing(batch, payloads, (n + self.CHUNK - 1) // self.CHUNK)
        # The board first: the helper signs a chunk of this batch only below the floor.
        _BOARD.pack_into(self._board, _CALLER, batch, len(signing.sigs))
        self._collect(signing)  # answers a previous batch left in the pipe: dropped, their room freed
        self._feed(signing)
        return signing

    def finish(self, signing: Signing | list[bytes], needed: list[int] | None = None) -> list[bytes]:
        """The signatures of a batch `begin` started, in order. With `needed` (the indices the caller
        will use), a chunk holding none of them is not signed here: its places hold 64 zero bytes.

        The helper takes chunks from the front, we take them from the back, lowering the floor on
        the board before each one: the helper skips a chunk at or above it. Where we reach the chunk
        the helper is signing, we wait for its answer up to twice what one of ours took (a chunk's
        time; a stopped or starved helper costs no more), then sign it here all the same."""
        if isinstance(signing, list):
            return signing
        size, sign, board, payloads = self.CHUNK, self._sign_chunk, self._board, signing.payloads
        batch, sigs = signing.batch, signing.sigs
        wanted = None if needed is None else {i // size for i in needed}
        own, waited = 0.002, False  # seconds our last chunk took; whether we waited for the helper once
        try:
            while signing.back >= 0:
                back = signing.back
                self._collect(signing)
                if sigs[back] is not None or (wanted is not None and back not in wanted):
                    signing.back -= 1
                    continue
                if (back < signing.sent and not waited and self._proc is not None
                        and _BOARD.unpack_from(board, _HELPER) == (batch, back)):
                    self._collect(signing, wait_ms=max(1, round(own * 2000)))
                    waited = True
                    continue
                _BOARD.pack_into(board, _CALLER, batch, back)
                self._feed(signing)
                t = time.perf_counter()
                sigs[back] = sign(payloads[back * size : (back + 1) * size])
                own = time.perf_counter() - t
                signing.back -= 1
        finally:
            self.abandon(signing)
        n = len(payloads)
        out: list[bytes] = []
        helper = caller = 0
        for c, body in enumerate(sigs):
            count = min(n, (c + 1) * size) - c * size
            if body is None:  # not needed
                out.extend([bytes(SIG)] * count)
                continue
            out.extend([body[i : i + SIG] for i in range(0, len(body), SIG)])
            if signing.by_helper[c]:
                helper += count
            else:
                caller += count
        self.stats["helper"] += helper
        self.stats["caller"] += caller
        return out

    def abandon(self, signing: Signing | list[bytes]) -> None:
        """Whatever of this batch the helper still holds is skipped (its answers dropped when they come)."""
        if not isinstance(signing, list) and self._board is not None:
            _BOARD.pack_into(self._board, _CALLER, signing.batch, 0)

    def _feed(self, signing: Signing) -> None:
        size, payloads = self.CHUNK, signing.payloads
        while self._proc is not None and signing.sent < signing.back:
            chunk = payloads[signing.sent * size : (signing.sent + 1) * size]
            if not self._fits(chunk) or not self._send(signing.batch, signing.sent, chunk):
                return
            signing.sent += 1

    def _collect(self, signing: Signing, wait_ms: int = 0) -> None:
        answers = self._receive(wait_ms) if self._proc is not None else None
        n, size = len(signing.payloads), self.CHUNK
        for b, c, body in answers or ():
            expected = SIG * (min(n, (c + 1) * size) - c * size)
            if b == signing.batch and c < signing.sent and signing.sigs[c] is None and len(body) == expected:
                signing.sigs[c], signing.by_helper[c] = body, True


def _grow_pipe(fd: int, size: int) -> int:
    """Ask for a pipe of `size` bytes; the size it has (the kernel may cap it: pipe-max-size)."""
    try:
        return fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
    except OSError:
        try:
            return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
        except OSError:
            return 1 << 16


if __name__ == "__main__":
    sys.exit(worker_main())
