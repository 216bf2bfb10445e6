"""Commit-signature verification of relay `#commit` frames: real signed commits, a real MST,
a fake PLC directory over HTTP, and the firehose source over a local relay."""

from __future__ import annotations

from dataclasses import replace

import anyio
import httpx
import libipld
import pytest

from firehose_mod.ingest.events import Decoded, TrackEvent
from firehose_mod.ingest.filters import Collections
from firehose_mod.ingest.firehose import (
    FirehoseSource,
    decode_firehose_frame,
    decode_firehose_frame_with_proof,
)
from firehose_mod.ingest.reconnect import Backoff
from firehose_mod.ingest.resolve import ResolveError
from firehose_mod.ingest.verify import (
    CommitVerifier,
    ProofError,
    check_commit,
    mst_lookup,
    signing_key_from_document,
    unsigned_commit,
)
from firehose_mod.labels.signing import SigningKey
from tests.fakes.car import block
from tests.fakes.jetstream import track_record
from tests.fakes.pds import FakeNetwork, closed_port
from tests.fakes.relay import (
    FakeRelay,
    commit_frame,
    identity_frame,
    mst_node,
    signed_commit,
)

DID = "did:plc:" + "a" * 24
TRACK = "fm.plyr.track"
TRACKS = Collections.parse(["fm.plyr.*"])
KEY = SigningKey.generate()


def track(n: int = 1) -> dict:
    return track_record(f"Track {n}", artist="Artist")


def proof_of(frame: bytes):
    decoded, proof = decode_firehose_frame_with_proof(frame, TRACKS)
    assert proof is not None, decoded
    return proof


def create(seq: int, signer=KEY, **kw) -> bytes:
    return commit_frame(seq, DID, f"rev{seq}", [("create", TRACK, f"3k{seq:04d}", track(seq))], signer=signer, **kw)


class Plc(FakeNetwork):
    """The fake PLC directory of tests.fakes.pds, serving a chosen `#atproto` key per DID."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: dict[str, SigningKey] = {}

    def register(self, did: str, key: SigningKey) -> None:
        self.keys[did] = key
        if did not in self.accounts:
            self.add_repo(did, None, in_relay=False)

    def document(self, did: str) -> dict | None:
        doc = super().document(did)
        if doc is not None and did in self.keys:
            doc["verificationMethod"][0]["publicKeyMultibase"] = self.keys[did].multibase
        return doc

    @property
    def fetches(self) -> int:
        return self.count("/plc/")


@pytest.fixture
def plc():
    net = Plc()
    net.register(DID, KEY)
    with net:
        yield net


@pytest.fixture
async def client():
    async with httpx.AsyncClient(timeout=2.0) as c:
        yield c


# --------------------------------------------------------------------------- pure checks


@pytest.mark.parametrize("curve", ["secp256k1", "p256"])
def test_a_signed_commit_verifies_and_a_tampered_one_does_not(curve):
    key = SigningKey.generate(curve)
    assert check_commit(proof_of(create(1, key)), key.did_key) is None
    assert "does not verify" in check_commit(proof_of(create(1, SigningKey.generate(curve))), key.did_key)
    assert "does not verify" in check_commit(proof_of(create(1, key, tamper="commit")), key.did_key)
    why = check_commit(proof_of(create(1, key, tamper="record")), key.did_key)
    assert "fm.plyr.track/3k0001" in why and "does not match the signed tree" in why
    assert "commit is for 'did:plc:zzz" in check_commit(proof_of(create(1, key, tamper="did")), key.did_key)


def test_signed_bytes_are_the_commit_without_sig():
    data_cid, _ = mst_node({})
    commit = signed_commit(DID, "rev1", data_cid, KEY)
    _, raw = block(commit)
    parsed, signed, sig = unsigned_commit(raw)
    assert sig == commit["sig"] and parsed["rev"] == "rev1"
    assert signed == libipld.encode_dag_cbor({k: v for k, v in commit.items() if k != "sig"})


def test_updates_and_deletes_are_checked_against_the_signed_tree():
    other = {f"{TRACK}/3kaaa": block(track(9))[0], "app.bsky.feed.post/3kb": block({"text": "x"})[0]}
    frame = commit_frame(5, DID, "rev5", [("update", TRACK, "3kbbb", track(5)), ("delete", TRACK, "3kccc", None)],
                         signer=KEY, leaves=other)
    proof = proof_of(frame)
    assert [p for p, _ in proof.ops] == [f"{TRACK}/3kbbb", f"{TRACK}/3kccc"]
    assert check_commit(proof, KEY.did_key) is None
    # a delete whose path is still in the signed tree, or an update to another CID, is a lie
    assert "deleted, yet still in the signed tree" in check_commit(
        replace(proof, ops=((f"{TRACK}/3kaaa", None),)), KEY.did_key)
    assert "does not match the signed tree" in check_commit(
        replace(proof, ops=((f"{TRACK}/3kaaa", block(track(10))[0]),)), KEY.did_key)
    data_cid, node = mst_node({f"{TRACK}/3kaaa": other[f"{TRACK}/3kaaa"]})
    assert mst_lookup({data_cid: node}, data_cid, f"{TRACK}/3kaaa".encode()) == other[f"{TRACK}/3kaaa"]
    assert mst_lookup({data_cid: node}, data_cid, f"{TRACK}/3kzzz".encode()) is None


def test_missing_or_forged_mst_nodes_fail():
    leaf = block(track(1))[0]
    child_cid, child = mst_node({f"{TRACK}/3kb": leaf})
    root_cid, root = block({"l": None, "e": [{"p": 0, "k": f"{TRACK}/3ka".encode(), "v": leaf, "t": child_cid}]})
    assert mst_lookup({root_cid: root, child_cid: child}, root_cid, f"{TRACK}/3kb".encode()) == leaf
    with pytest.raises(ProofError, match="not in the commit's CAR"):
        mst_lookup({root_cid: root}, root_cid, f"{TRACK}/3kb".encode())
    with pytest.raises(ProofError, match="does not hash"):
        mst_lookup({root_cid: root, child_cid: mst_node({f"{TRACK}/3kb": block(track(2))[0]})[1]},
                   root_cid, f"{TRACK}/3kb".encode())
    # a key left of the first entry is absent without reading further
    assert mst_lookup({root_cid: root}, root_cid, f"{TRACK}/3k0".encode()) is None


def test_a_commit_without_its_commit_block_fails():
    proof = proof_of(create(1))
    blocks = {k: v for k, v in proof.blocks.items() if k != proof.commit_cid}
    assert "not in the frame's CAR" in check_commit(replace(proof, blocks=blocks), KEY.did_key)
    assert "no commit CID" in check_commit(replace(proof, commit_cid=None), KEY.did_key)


def test_proofs_only_for_frames_with_track_events():
    post = commit_frame(1, DID, "rev1", [("create", "app.bsky.feed.post", "3kp", {"text": "x"})], signer=KEY)
    for frame in (post, identity_frame(2, DID, "me.test"), b"\xff garbage"):
        decoded, proof = decode_firehose_frame_with_proof(frame, TRACKS)
        assert proof is None and decoded == decode_firehose_frame(frame, TRACKS)
    decoded, proof = decode_firehose_frame_with_proof(create(3), TRACKS)
    assert decoded == decode_firehose_frame(create(3), TRACKS) and len(decoded.events) == 1
    assert proof.repo == DID and [p for p, _ in proof.ops] == [f"{TRACK}/3k0003"]


def test_signing_key_from_document():
    doc = {"id": DID, "verificationMethod": [
        {"id": f"{DID}#atproto_label", "type": "Multikey", "publicKeyMultibase": SigningKey.generate().multibase},
        {"id": "#atproto", "type": "Multikey", "publicKeyMultibase": KEY.multibase},
    ]}
    assert signing_key_from_document(DID, doc) == KEY.did_key
    for bad in ({"id": DID}, {"id": "did:plc:" + "b" * 24, "verificationMethod": doc["verificationMethod"]},
                {"id": DID, "verificationMethod": [{"id": "#atproto", "publicKeyMultibase": "zNotAKey"}]}):
        with pytest.raises(ResolveError) as exc:
            signing_key_from_document(DID, bad)
        assert not exc.value.transient


# --------------------------------------------------------------------------- the verifier over a fake PLC


@pytest.mark.anyio
async def test_valid_commits_pass_and_the_key_is_cached(plc, client):
    verifier = CommitVerifier(client, plc.plc_url)
    assert await verifier.check(proof_of(create(1))) is None
    assert await verifier.check(proof_of(create(2))) is None
    assert plc.fetches == 1 and verifier.stats["key_cache_hits"] == 1 and verifier.stats["valid"] == 2


@pytest.mark.anyio
async def test_a_wrong_key_is_refetched_once_then_rejected(plc, client):
    verifier = CommitVerifier(client, plc.plc_url)
    assert await verifier.check(proof_of(create(1))) is None  # caches KEY
    why = await verifier.check(proof_of(create(2, SigningKey.generate())))
    assert "does not verify" in why
    assert plc.fetches == 2 and verifier.stats["refetches"] == 1 and verifier.stats["rotations"] == 0
    # a key fetched for this very check is not fetched again
    fresh = CommitVerifier(client, plc.plc_url)
    assert "does not verify" in await fresh.check(proof_of(create(3, SigningKey.generate())))
    assert plc.fetches == 3 and fresh.stats["refetches"] == 0


@pytest.mark.anyio
async def test_a_rotated_key_is_picked_up_on_refetch(plc, client):
    verifier = CommitVerifier(client, plc.plc_url)
    assert await verifier.check(proof_of(create(1))) is None
    new_key = SigningKey.generate("p256")
    plc.register(DID, new_key)
    assert await verifier.check(proof_of(create(2, new_key))) is None
    assert verifier.stats["rotations"] == 1 and plc.fetches == 2
    assert await verifier.check(proof_of(create(3, new_key))) is None  # the new key is cached
    assert plc.fetches == 2


@pytest.mark.anyio
async def test_tampered_frames_cost_no_lookup(plc, client):
    verifier = CommitVerifier(client, plc.plc_url)
    assert "signed tree" in await verifier.check(proof_of(create(1, tamper="record")))
    assert "commit is for" in await verifier.check(proof_of(create(2, tamper="did")))
    assert plc.fetches == 0


@pytest.mark.anyio
async def test_unknown_did_is_invalid_and_plc_down_raises_transient(plc, client):
    other = "did:plc:" + "c" * 24
    frame = commit_frame(1, other, "rev1", [("create", TRACK, "3k1", track())], signer=KEY)
    assert "no signing key" in await CommitVerifier(client, plc.plc_url).check(proof_of(frame))
    down = CommitVerifier(client, f"http://127.0.0.1:{closed_port()}/plc")
    with pytest.raises(ResolveError) as exc:
        await down.check(proof_of(create(1)))
    assert exc.value.transient


@pytest.mark.anyio
async def test_did_web_keys(client):
    did = "did:web:example.test"
    net = Plc()
    net.register(did, KEY)
    with net:
        verifier = CommitVerifier(client, net.plc_url, web_base=net.web_base)
        frame = commit_frame(1, did, "rev1", [("create", TRACK, "3k1", track())], signer=KEY)
        assert await verifier.check(proof_of(frame)) is None
        assert net.count("/web/example.test/.well-known/did.json") == 1


# --------------------------------------------------------------------------- the source


async def run_source(source: FirehoseSource, relay: FakeRelay, last: int, start: int = 0) -> list[Decoded]:
    received: list[Decoded] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            async def sink(decoded: Decoded) -> None:
                received.append(decoded)
                if decoded.cursor == last:
                    tg.cancel_scope.cancel()
            tg.start_soon(source.run, sink, start)
    return received


def make_source(url: str, verifier: CommitVerifier | None) -> FirehoseSource:
    return FirehoseSource([url], TRACKS, read_timeout=2.0, open_timeout=2.0, backoff=Backoff(base=0.01, cap=0.05),
                          verifier=verifier)


@pytest.mark.anyio
async def test_source_turns_bad_commits_into_dead_letters_and_moves_on(plc, client):
    post = commit_frame(5, DID, "rev5", [("create", "app.bsky.feed.post", "3kp", {"text": "x"})])
    frames = [create(1), create(2, tamper="record"), create(3, tamper="commit"),
              create(4, SigningKey.generate()), post, create(6)]
    verifier = CommitVerifier(client, plc.plc_url)
    async with FakeRelay(frames) as relay:
        source = make_source(relay.url, verifier)
        got = await run_source(source, relay, 6)
    assert [d.cursor for d in got] == [1, 2, 3, 4, 5, 6]
    assert [e.rkey for d in got for e in d.events] == ["3k0001", "3k0006"]
    dead = [d for x in got for d in x.dead]
    assert [(d.reason, d.cursor, d.uri) for d in dead] == [
        ("bad_signature", n, f"at://{DID}/{TRACK}/3k{n:04d}") for n in (2, 3, 4)]
    assert "signed tree" in dead[0].detail and "does not verify" in dead[1].detail
    assert source.cursor == 6
    assert source.stats.verified == 2 and source.stats.bad_signature == 3 and source.stats.unverified == 0
    assert source.stats.events == 2 and source.stats.dead == 3
    # one key fetch, one refetch per signature failure on a cached key; the tampered record needs none
    assert plc.fetches == 3


@pytest.mark.anyio
async def test_source_without_a_verifier_passes_everything(client):
    async with FakeRelay([create(1, tamper="commit"), create(2)]) as relay:
        source = make_source(relay.url, None)
        got = await run_source(source, relay, 2)
    assert [e.rkey for d in got for e in d.events] == ["3k0001", "3k0002"]
    assert source.stats.verified == 0 and source.stats.unverified == 0


@pytest.mark.anyio
async def test_source_passes_events_through_unverified_when_plc_is_down(client):
    verifier = CommitVerifier(client, f"http://127.0.0.1:{closed_port()}/plc")
    async with FakeRelay([create(1), create(2)]) as relay:
        source = make_source(relay.url, verifier)
        got = await run_source(source, relay, 2)
    events = [e for d in got for e in d.events]
    assert [e.rkey for e in events] == ["3k0001", "3k0002"] and all(isinstance(e, TrackEvent) for e in events)
    assert source.stats.unverified == 2 and source.stats.dead == 0 and source.cursor == 2


@pytest.mark.anyio
async def test_source_follows_a_key_rotation(plc, client):
    new_key = SigningKey.generate()
    verifier = CommitVerifier(client, plc.plc_url)
    async with FakeRelay([create(1)]) as relay:
        source = make_source(relay.url, verifier)
        await run_source(source, relay, 1)
        plc.register(DID, new_key)
        relay.frames.append(create(2, new_key))
        got = await run_source(source, relay, 2, start=source.cursor)
    assert [e.rkey for d in got for e in d.events] == ["3k0002"]
    assert source.stats.verified == 2 and verifier.stats["rotations"] == 1
