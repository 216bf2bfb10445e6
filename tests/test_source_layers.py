"""Layers point down: what config, the store and the ingest sources may import, and what crosses
the store's boundary. Also the identifier syntax every layer shares (firehose_mod/syntax.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from firehose_mod.config import ConfigError, load_settings
from firehose_mod.ingest.filters import Collections
from firehose_mod.store import EmitRequest
from firehose_mod.store.decisions import DecisionWriter
from firehose_mod.syntax import (
    IdentifierError, check_collection_pattern, is_atproto_did, is_did, is_handle, is_nsid, is_rkey, is_tid,
)

PACKAGE = Path(__file__).parent.parent / "firehose_mod"


def imported_modules(path: Path) -> set[str]:
    """Every firehose_mod module `path` imports, at the top or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("firehose_mod")}


@pytest.mark.parametrize(("files", "forbidden"), [
    (["config.py", "syntax.py", "events.py"], ("firehose_mod.ingest", "firehose_mod.scan", "firehose_mod.store")),
    ([p.name for p in (PACKAGE / "store").glob("*.py")], ("firehose_mod.ingest", "firehose_mod.scan")),
    (["ingest/replay.py", "ingest/build.py"], ("firehose_mod.daemon", "firehose_mod.cli")),
])
def test_lower_layers_import_nothing_from_higher_ones(files, forbidden):
    base = PACKAGE if "config.py" in files or files[0].startswith("ingest/") else PACKAGE / "store"
    for name in files:
        bad = sorted(m for m in imported_modules(base / name) if m.startswith(forbidden))
        assert not bad, f"{name} imports {bad}"


@pytest.mark.anyio
async def test_records_written_with_labels_go_through_a_decision_writer_not_the_connection(label_log):
    seen = []

    async def note(decisions, written):
        seen.append(type(decisions))

    await label_log.emit_many([EmitRequest("at://did:plc:a/fm.plyr.track/3k1", "porn")], also=note)
    assert seen == [DecisionWriter]


@pytest.mark.parametrize(("nsid", "valid"), [
    ("fm.plyr.track", True), ("com.atproto.repo.createRecord", True), ("a.b.c", True), ("com.example.fooV2", True),
    ("fm.plyr", False),  # two segments: no name
    ("com.example.3foo", False),  # the name starts with a digit
    ("com.example.foo-bar", False),  # no hyphen in the name
    ("com.-example.foo", False), ("1com.example.foo", False), ("com.example.foo.*", False), ("com..foo", False),
    ("com.example." + "a" * 64, False), (".".join(["abc"] * 80) + ".name", False),  # > 63 per segment, > 317
])
def test_nsids_follow_the_spec(nsid, valid):
    assert is_nsid(nsid) is valid


@pytest.mark.parametrize(("rkey", "valid"), [
    ("3jzfcijpj2z2a", True), ("self", True), ("a:b~c_d-e.f", True), ("x" * 512, True),
    (".", False), ("..", False), ("", False), ("a/b", False), ("a b", False), ("x" * 513, False), ("é", False),
])
def test_record_keys_follow_the_spec(rkey, valid):
    assert is_rkey(rkey) is valid


@pytest.mark.parametrize(("tid", "valid"), [
    ("3jzfcijpj2z2a", True), ("2222222222222", True), ("jzzzzzzzzzzzz", True),
    ("kzzzzzzzzzzzz", False),  # the top bit must be 0
    ("3jzfcijpj2z2", False), ("3jzfcijpj2z2aa", False), ("3JZFCIJPJ2Z2A", False), ("3jzfcijpj2z21", False),
])
def test_tids_follow_the_spec(tid, valid):
    assert is_tid(tid) is valid


def test_dids_generic_and_atproto():
    assert is_did("did:plc:z72i7hdynmk6r22z27h6tvur") and is_did("did:web:example.com") and is_did("did:key:zQ3s")
    assert not is_did("did:plc:abc:") and not is_did("did:PLC:abc") and not is_did("did:plc:") and not is_did(5)
    assert not is_did("did:web:" + "a" * 2048)
    assert is_atproto_did("did:plc:z72i7hdynmk6r22z27h6tvur") and is_atproto_did("did:web:localhost%3A8080")
    assert not is_atproto_did("did:key:zQ3s") and not is_atproto_did("did:plc:uploader")
    assert is_handle("alice.bsky.social") and not is_handle("alice") and not is_handle("-a.example")


@pytest.mark.parametrize("pattern", ["fm.plyr", "com.example.3foo", "fm.*", "fm.plyr.track.", "*"])
def test_collections_are_checked_by_the_spec_in_config_and_in_the_source_filter(pattern, tmp_path):
    with pytest.raises(IdentifierError):
        check_collection_pattern(pattern)
    with pytest.raises(ValueError):
        Collections.parse([pattern])
    with pytest.raises(ConfigError, match=r"\[ingest\] collections"):
        load_settings(env={}, data_dir=tmp_path, collections=(pattern,))
    assert Collections.parse(["fm.plyr.*", "fm.plyr.track"]).matches("fm.plyr.like")
