"""`firehose-mod declare`: the app.bsky.labeler.service record and the DID document.

The record is checked against atproto's lexicons (copied in tests/lexicons/, see ATPROTO.md) by a
lexicon walker and by the atproto SDK's generated models; the command runs as a real process
against a PLC directory and PDS stand-in over real HTTP (tests/fakes/labeler_pds.py).
"""

from __future__ import annotations

import json

import pytest

from firehose_mod.config import ConfigError, load_settings
from firehose_mod.labels import declaration as dc
from firehose_mod.labels.signing import SigningKey
from firehose_mod.scan.policy import load_policy
from firehose_mod.server.app import did_document

from tests.fakes.labeler_pds import PDS_SIGNING_KEY, FakeLabelerPDS, record_cid
from tests.helpers.lexicon_json import LEXICONS, Lexicons
from tests.procs import env_for, run_cli

DID = "did:plc:labelerabcdefghijklmnopq"
PUBLIC_URL = "https://labeler.example"
PASSWORD = "abcd-efgh-ijkl-mnop"
CREATED = "2026-01-02T03:04:05.678Z"


def lexicon(name: str) -> dict:
    return json.loads((LEXICONS / f"{name}.json").read_text())


def default_record(created: str = CREATED) -> dict:
    return dc.build_record(dc.load_declaration(None), created)


# -- the record against the lexicon ------------------------------------------------------------

def test_the_built_record_follows_the_lexicon_by_the_walker_and_the_sdk():
    from atproto_client import models
    from atproto_client.models.utils import get_or_create

    record = default_record()
    assert Lexicons().validate_record(dc.COLLECTION, record) == []
    assert dc.record_problems(record) == [] and dc.sdk_problems(record) == []
    model = get_or_create(record, models.AppBskyLabelerService.Record, strict=True, strict_string_format=True)
    # The installed SDK knows the newer fields: they are parsed, not carried as unknown extras.
    assert model.subject_collections == ["fm.plyr.track"] and model.subject_types == ["record", "account"]
    assert "com.atproto.moderation.defs#reasonAppeal" in model.reason_types
    defs = {d.identifier: d for d in model.policies.label_value_definitions}
    assert defs["copyright-violation"].severity == "alert" and defs["copyright-violation"].locales[0].lang == "en"
    # Every value the default policy can write is declared; Bluesky's global values are listed, not redefined.
    policy_values = {r.value for r in load_policy(None).rules if r.value}
    assert policy_values <= set(record["policies"]["labelValues"])
    assert {"porn", "sexual", "nudity", "graphic-media"} <= set(record["policies"]["labelValues"])
    assert set(defs) == {"copyright-violation", "offensive-text"}


def test_our_known_values_are_the_lexicon_s():
    label_defs = lexicon("com.atproto.label.defs")["defs"]
    moderation = lexicon("com.atproto.moderation.defs")["defs"]
    value_def = label_defs["labelValueDefinition"]["properties"]
    assert dc.SEVERITIES == tuple(value_def["severity"]["knownValues"])
    assert dc.BLURS == tuple(value_def["blurs"]["knownValues"])
    assert dc.DEFAULT_SETTINGS == tuple(value_def["defaultSetting"]["knownValues"])
    assert dc.GLOBAL_VALUES == tuple(label_defs["labelValue"]["knownValues"])
    assert dc.REASON_TYPES == tuple(moderation["reasonType"]["knownValues"])
    assert dc.SUBJECT_TYPES == tuple(moderation["subjectType"]["knownValues"])
    service = lexicon("app.bsky.labeler.service")["defs"]["main"]
    assert service["key"] == f"literal:{dc.RKEY}" and set(service["record"]["required"]) == {"policies", "createdAt"}
    assert {"reasonTypes", "subjectTypes", "subjectCollections"} <= set(service["record"]["properties"])


@pytest.mark.parametrize(("change", "walker", "ours"), [
    (lambda r: r["policies"]["labelValueDefinitions"][0]["locales"][0].update(name="é" * 65),
     "> maxGraphemes 64", "maxGraphemes 64"),
    (lambda r: r["policies"]["labelValueDefinitions"][0].update(severity="loud"), "not a known value", "severity"),
    (lambda r: r["policies"]["labelValueDefinitions"][0].pop("blurs"), "blurs: required", "blurs: required"),
    (lambda r: r.update(subjectTypes=["post"]), "not a known value", "subjectTypes: unknown value"),
    (lambda r: r.update(createdAt="yesterday"), "not a valid datetime", "createdAt"),
    (lambda r: r["policies"].pop("labelValues"), "labelValues: required", "labelValues"),
])
def test_a_broken_record_is_caught_by_the_walker_and_by_our_check(change, walker, ours):
    record = default_record()
    change(record)
    assert any(walker in p for p in Lexicons().validate_record(dc.COLLECTION, record))
    assert any(ours in p for p in dc.record_problems(record))


@pytest.mark.parametrize(("toml", "message"), [
    (('[[labels]]\nidentifier = "nsfw2"\nseverity = "alert"\nblurs = "media"\n'
      'locales = [{lang = "en", name = "x", description = "y"}]\n'), "identifier 'nsfw2' must be 1-100 lowercase"),
    (('[[labels]]\nidentifier = "loud"\nseverity = "red"\nblurs = "media"\n'
      'locales = [{lang = "en", name = "x", description = "y"}]\n'), "severity 'red': use one of inform, alert, none"),
    (('[[labels]]\nidentifier = "long"\nseverity = "alert"\nblurs = "media"\n'
      f'locales = [{{lang = "en", name = "{"n" * 65}", description = "y"}}]\n'), "maxGraphemes 64"),
    ('global_values = ["porn"]\nreason_types = ["com.atproto.moderation.defs#reasonApeal"]\n',
     "did you mean 'com.atproto.moderation.defs#reasonAppeal'?"),
    ('global_values = ["gore"]\n', "'gore' is not one of Bluesky's global values"),
    ('global_values = ["porn", "porn"]\n', "'porn' is declared twice"),
    ('global_values = ["porn"]\nsubject_collections = ["fm plyr track"]\n', "is not an NSID"),
    ('reason_types = []\n', "declares no label values"),
])
def test_a_bad_declaration_file_names_the_entry_and_the_fix(toml, message):
    with pytest.raises(dc.DeclarationError) as info:
        dc.parse_declaration(toml, "decl.toml")
    assert message in str(info.value) and str(info.value).startswith("decl.toml")


def test_reason_types_absent_is_not_the_same_as_empty():
    absent = dc.build_record(dc.parse_declaration('global_values = ["porn"]\n'), CREATED)
    empty = dc.build_record(dc.parse_declaration('global_values = ["porn"]\nreason_types = []\n'), CREATED)
    assert "reasonTypes" not in absent and empty["reasonTypes"] == []  # absent: every reason; []: none


def test_the_diff_ignores_the_nested_types_a_typed_client_adds_and_shows_real_changes():
    declared = default_record()
    typed = json.loads(json.dumps(declared))
    typed["policies"]["$type"] = "app.bsky.labeler.defs#labelerPolicies"
    for d in typed["policies"]["labelValueDefinitions"]:
        d["$type"] = "com.atproto.label.defs#labelValueDefinition"
        for loc in d["locales"]:
            loc["$type"] = "com.atproto.label.defs#labelValueDefinitionStrings"
    assert dc.diff_records(typed, declared) == [] and dc.same_record(typed, declared)
    older = json.loads(json.dumps(declared))
    older["policies"]["labelValueDefinitions"][0]["severity"] = "inform"
    diff = dc.diff_records(older, declared)
    assert diff[:2] == ["--- published", "+++ declared"]
    assert '-        "severity": "inform"' in diff and '+        "severity": "alert"' in diff
    assert dc.diff_records(None, declared)[0] == "--- published (none)"


def test_build_keeps_the_fields_we_do_not_manage():
    published = {**default_record(), "labels": {"$type": "com.atproto.label.defs#selfLabels",
                                                "values": [{"val": "!no-unauthenticated"}]}}
    rebuilt = dc.build_record(dc.load_declaration(None), CREATED, keep=published)
    assert rebuilt["labels"] == published["labels"] and dc.diff_records(published, rebuilt) == []
    assert Lexicons().validate_record(dc.COLLECTION, rebuilt) == []


# -- the DID document (pure) -------------------------------------------------------------------

def test_the_did_web_document_our_server_serves_passes_the_check():
    key = SigningKey.generate()
    did = "did:web:labeler.example"
    assert dc.check_did_document(did_document(did, key.multibase, PUBLIC_URL + "/"), did, key.did_key,
                                 PUBLIC_URL) == []


def test_did_web_problems_come_with_the_document_to_serve():
    key, other = SigningKey.generate(), SigningKey.generate()
    did = "did:web:labeler.example"
    doc = did_document(did, other.multibase, "https://elsewhere.example")
    doc["verificationMethod"].append({"id": f"{did}#atproto", "type": "Multikey", "controller": did,
                                      "publicKeyMultibase": PDS_SIGNING_KEY.removeprefix("did:key:")})
    problems = dc.check_did_document(doc, did, key.did_key, PUBLIC_URL)
    assert [p.code for p in problems] == ["label-key-mismatch", "labeler-endpoint-mismatch"]
    fix = dc.document_fix(doc, did, key.did_key, PUBLIC_URL)
    assert fix.startswith("serve this at https://labeler.example/.well-known/did.json")
    served = json.loads(fix.split("\n", 1)[1])
    assert dc.check_did_document(served, did, key.did_key, PUBLIC_URL) == []
    assert f"{did}#atproto" in [vm["id"] for vm in served["verificationMethod"]]  # the account's key is kept


def test_a_key_in_another_encoding_of_the_same_point_is_the_same_key():
    import libipld
    from cryptography.hazmat.primitives import serialization

    key = SigningKey.generate()
    raw = key.private.public_key().public_bytes(serialization.Encoding.X962,
                                                 serialization.PublicFormat.UncompressedPoint)
    uncompressed = libipld.encode_multibase("z", b"\xe7\x01" + raw)
    doc = did_document(DID, uncompressed, PUBLIC_URL)
    assert dc.check_did_document(doc, DID, key.did_key, PUBLIC_URL) == []


# -- the command, against a PLC directory and PDS over real HTTP --------------------------------

@pytest.fixture
def world(tmp_path):
    key, _ = SigningKey.load_or_create(tmp_path / "var" / "signing.key")
    with FakeLabelerPDS(DID, password=PASSWORD, label_key=key.did_key) as pds:
        pds.labeler_endpoint = PUBLIC_URL
        env = env_for(tmp_path / "var", FIREHOSE_MOD_DID=DID, FIREHOSE_MOD_PLC_URL=pds.plc_url,
                      FIREHOSE_MOD_PUBLIC_URL=PUBLIC_URL, FIREHOSE_MOD_MEDIA_ALLOW_NETWORKS="127.0.0.1/32",
                      FIREHOSE_MOD_LOG_FORMAT="json")
        yield pds, env, key


def declare(env: dict, *args: str, **extra: str):
    return run_cli("declare", *args, env={**env, **extra}, check=False)


@pytest.mark.slow
def test_a_diff_is_shown_then_apply_writes_exactly_the_built_record_then_it_is_in_sync(world):
    pds, env, _key = world
    older = default_record()
    older["policies"]["labelValueDefinitions"][0]["locales"][0]["description"] = "An older description."
    older["reasonTypes"] = ["com.atproto.moderation.defs#reasonOther"]
    old_cid = pds.publish(older)

    shown = declare(env)
    assert shown.returncode == 1, shown.stderr
    assert f"published cid {old_cid}" in shown.stdout and "--- published" in shown.stdout
    assert '-        "com.atproto.moderation.defs#reasonOther"' not in shown.stdout  # kept: still declared
    assert '+    "com.atproto.moderation.defs#reasonAppeal",' in shown.stdout
    assert "run `firehose-mod declare --apply`" in shown.stdout
    assert pds.count("createSession") == 0 and pds.writes == []  # reading needs no auth

    as_json = json.loads(declare(env, "--json").stdout)
    assert as_json["diff"] and not as_json["in_sync"] and as_json["published_cid"] == old_cid
    assert as_json["record"]["createdAt"] == older["createdAt"]  # the declaration's first date is kept

    applied = declare(env, "--apply", FIREHOSE_MOD_LABELER_APP_PASSWORD=PASSWORD)
    assert applied.returncode == 0, applied.stderr
    assert len(pds.writes) == 1
    write = pds.writes[0]
    assert write["record"] == as_json["record"]  # byte for byte what was shown: no SDK-added $type
    assert (write["repo"], write["collection"], write["rkey"], write["swapRecord"]) == (
        DID, "app.bsky.labeler.service", "self", old_cid)
    new_cid = pds.records[("app.bsky.labeler.service", "self")][1]
    assert new_cid == record_cid(as_json["record"]) and f"cid {new_cid}" in applied.stdout
    assert Lexicons().validate_record(dc.COLLECTION, write["record"]) == []

    again = declare(env, "--apply", FIREHOSE_MOD_LABELER_APP_PASSWORD=PASSWORD)
    assert again.returncode == 0 and "in sync" in again.stdout
    assert pds.count("createSession") == 1 and len(pds.writes) == 1  # nothing to write: no login
    for run in (shown, applied, again):
        assert PASSWORD not in run.stdout + run.stderr


@pytest.mark.slow
def test_the_first_publication_swaps_against_null_and_reads_the_password_from_a_file(world, tmp_path):
    pds, env, _key = world
    secret = tmp_path / "app-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o644)
    loose = declare(env, "--apply", FIREHOSE_MOD_LABELER_APP_PASSWORD_FILE=str(secret))
    assert loose.returncode == 2 and f"chmod 600 {secret}" in loose.stderr and pds.writes == []
    secret.chmod(0o600)
    done = declare(env, "--apply", "--json", FIREHOSE_MOD_LABELER_APP_PASSWORD_FILE=str(secret),
                   FIREHOSE_MOD_LABELER_HANDLE="labeler.test")
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["published_cid"] is None and body["diff"][0] == "--- published (none)"
    assert pds.writes[0]["swapRecord"] is None  # only if no record exists meanwhile
    assert body["written"]["cid"] == pds.records[("app.bsky.labeler.service", "self")][1]
    assert pds.calls[[c["path"] for c in pds.calls].index("/xrpc/com.atproto.server.createSession")]["json"][
        "identifier"] == "labeler.test"


@pytest.mark.slow
def test_a_wrong_or_missing_app_password_is_exit_2_and_writes_nothing(world):
    pds, env, _key = world
    wrong = declare(env, "--apply", FIREHOSE_MOD_LABELER_APP_PASSWORD="wrong-pass-word")
    assert wrong.returncode == 2
    lines = [line for line in wrong.stderr.splitlines() if line.startswith("firehose-mod:")]
    assert len(lines) == 1 and "refused the app password for did:plc:labelerabcdefghijklmnopq" in lines[0]
    assert "HTTP 401 AuthenticationRequired: Invalid identifier or password" in lines[0]
    assert "FIREHOSE_MOD_LABELER_APP_PASSWORD" in lines[0] and "nothing was written" in lines[0]
    assert "wrong-pass-word" not in wrong.stdout + wrong.stderr
    missing = declare(env, "--apply")
    assert missing.returncode == 2 and "needs its app password" in missing.stderr
    assert pds.writes == [] and pds.count("putRecord") == 0


@pytest.mark.slow
def test_a_record_written_meanwhile_is_never_overwritten(world):
    pds, env, _key = world
    pds.on_session = lambda: pds.publish({**default_record(), "reasonTypes": []})
    raced = declare(env, "--apply", FIREHOSE_MOD_LABELER_APP_PASSWORD=PASSWORD)
    assert raced.returncode == 2 and "InvalidSwap" in raced.stderr and "run `firehose-mod declare` again" in raced.stderr
    assert pds.writes == [] and pds.records[("app.bsky.labeler.service", "self")][0]["reasonTypes"] == []


@pytest.mark.slow
@pytest.mark.parametrize(("knobs", "code"), [
    ({"label_key": None}, "label-key-missing"),
    ({"label_key": SigningKey.generate().did_key}, "label-key-mismatch"),
    ({"labeler_endpoint": "https://old-labeler.example"}, "labeler-endpoint-mismatch"),
    ({"labeler_endpoint": None}, "labeler-service-missing"),
])
def test_did_document_problems_are_reported_with_the_exact_plc_operation(world, knobs, code):
    pds, env, key = world
    pds.publish(default_record())  # the record is in sync: only the document is wrong
    for name, value in knobs.items():
        setattr(pds, name, value)
    run = declare(env, "--json")
    assert run.returncode == 1, run.stderr
    body = json.loads(run.stdout)
    assert body["in_sync"] and not body["did_document"]["ok"]
    assert [p["code"] for p in body["did_document"]["problems"]] == [code]
    fix = body["did_document"]["fix"]
    assert "goat account plc sign --token TOKEN-FROM-EMAIL plc-op.json" in fix
    op = json.loads(fix.split("cat > plc-op.json <<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0])
    assert op["verificationMethods"] == {"atproto": PDS_SIGNING_KEY, "atproto_label": key.did_key}
    assert op["services"] == {"atproto_pds": {"type": "AtprotoPersonalDataServer", "endpoint": pds.url},
                              "atproto_labeler": {"type": "AtprotoLabeler", "endpoint": PUBLIC_URL}}
    text = declare(env)
    assert text.returncode == 1 and "DID document: 1 problem(s):" in text.stdout and "fix: " in text.stdout


@pytest.mark.slow
def test_without_the_plc_data_the_fix_is_read_back_from_the_document(world):
    pds, env, key = world
    pds.publish(default_record())
    pds.serve_plc_data, pds.label_key = False, None
    body = json.loads(declare(env, "--json").stdout)
    op = json.loads(body["did_document"]["fix"].split("<<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0])
    assert op["verificationMethods"] == {"atproto": PDS_SIGNING_KEY, "atproto_label": key.did_key}
    assert op["services"]["atproto_pds"]["endpoint"] == pds.url


@pytest.mark.slow
def test_in_sync_and_a_right_document_exit_0_and_errors_exit_2(world, tmp_path):
    pds, env, _key = world
    pds.publish(default_record())
    ok = declare(env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "in sync" in ok.stdout and "#atproto_labeler points at our public URL" in ok.stdout
    unknown = declare(env, FIREHOSE_MOD_DID="did:plc:unknownabcdefghijklmnopq")
    assert unknown.returncode == 2 and "cannot read our DID document" in unknown.stderr
    guarded = declare({k: v for k, v in env.items() if k != "FIREHOSE_MOD_MEDIA_ALLOW_NETWORKS"})
    assert guarded.returncode == 2 and "loopback" in guarded.stderr  # the vetted client refuses 127.0.0.1
    bad = tmp_path / "decl.toml"
    bad.write_text('global_values = ["porn"]\n[[labels]]\nidentifier = "x"\n')
    broken = declare(env, FIREHOSE_MOD_LABELER_DECLARATION_FILE=str(bad))
    assert broken.returncode == 2 and f"{bad}: [[labels]] 1 (x): severity None" in broken.stderr


# -- configuration -----------------------------------------------------------------------------

def test_the_labeler_account_settings_are_validated_and_the_password_never_shown(tmp_path):
    s = load_settings(env={"FIREHOSE_MOD_LABELER_APP_PASSWORD": PASSWORD, "FIREHOSE_MOD_LABELER_HANDLE": "mod.plyr.fm"})
    assert s.labeler_app_password == PASSWORD and PASSWORD not in repr(s)
    with pytest.raises(ConfigError, match=r"\[labeler\] handle .*neither a handle"):
        load_settings(env={"FIREHOSE_MOD_LABELER_HANDLE": "not a handle"})
    (tmp_path / "pw").write_text("x")
    with pytest.raises(ConfigError, match="not both"):
        load_settings(env={"FIREHOSE_MOD_LABELER_APP_PASSWORD": "x",
                           "FIREHOSE_MOD_LABELER_APP_PASSWORD_FILE": str(tmp_path / "pw")})
    with pytest.raises(ConfigError, match=r"\[labeler\] declaration_file .* does not exist"):
        load_settings(env={"FIREHOSE_MOD_LABELER_DECLARATION_FILE": str(tmp_path / "none.toml")})


def test_a_copy_of_the_built_in_declaration_is_a_declaration_file_that_builds_the_same_record(tmp_path):
    path = tmp_path / "declaration.toml"
    path.write_text(dc.DEFAULT_DECLARATION)
    decl = dc.load_declaration(path)
    assert decl.source == str(path)
    assert dc.build_record(decl, CREATED) == default_record()
