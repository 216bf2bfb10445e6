"""`firehose-mod operator ...` and `firehose-mod review ...` as real processes on a real database."""

from __future__ import annotations

import json

import pytest

from tests.procs import env_for, run_cli

pytestmark = pytest.mark.slow
SUBJECT = "at://did:plc:ewvi7nxzyoun6zhxrhs64oiz/fm.plyr.track/3kabc"


def test_a_moderator_works_an_item_an_agent_proposed(tmp_path):
    env = env_for(tmp_path / "var")
    run_cli("key", "create", env=env)
    admin = json.loads(run_cli("operator", "add", "alice", "--role", "admin", "--json", env=env).stdout)
    assert admin["token"].startswith("fhm_") and admin["created_by"].startswith("local:")
    refused = run_cli("operator", "add", "mallory", "--role", "admin", env=env, check=False)
    assert refused.returncode == 2 and "--as NAME" in refused.stderr  # operators exist now
    run_cli("operator", "add", "mo", "--role", "moderator", "--as", "alice", env=env)
    run_cli("operator", "add", "bot", "--role", "agent", "--as", "alice", env=env)

    opened = json.loads(run_cli("review", "open", SUBJECT, "copyright-violation", "--reason", "reported by mail",
                                "--as", "mo", "--json", env=env).stdout)
    item = opened["items"][0]["id"]
    assert opened["items"][0]["to"] == "open"
    listed = [json.loads(line) for line in run_cli("review", "list", "--json", "--as", "bot", env=env).stdout.splitlines()]
    assert [(i["id"], i["status"], i["source"]) for i in listed] == [(item, "open", "hand")]

    no = run_cli("review", "confirm", str(item), "--as", "bot", env=env, check=False)
    assert no.returncode == 2 and "agent 'bot' (agent) may not confirm" in no.stderr
    run_cli("review", "propose", str(item), "--decision", "confirm", "--reason", "a full copy", "--as", "bot", env=env)

    dry = json.loads(run_cli("review", "accept", str(item), "--dry-run", "--json", "--as", "mo", env=env).stdout)
    assert dry["dry_run"] and dry["items"][0]["emit"] == ["copyright-violation"] and dry["items"][0]["event"] is None
    done = run_cli("review", "accept", str(item), "--as", "mo", env=env).stdout
    assert f"#{item} confirm: proposed -> confirmed, wrote +copyright-violation" in done
    again = run_cli("review", "confirm", str(item), "--as", "mo", env=env, check=False)
    assert again.returncode == 1 and "already decided this way" in again.stdout

    shown = json.loads(run_cli("review", "show", str(item), "--json", "--as", "mo", env=env).stdout)
    assert [e["action"] for e in shown["events"]] == ["open", "propose", "confirm"]
    assert shown["events"][2]["payload"]["accepted_proposal"] == shown["events"][1]["id"]
    assert shown["in_force"] == ["copyright-violation"]
    explained = run_cli("explain", SUBJECT, env=env).stdout
    assert "modEventLabel confirm by operator mo (local): proposed -> confirmed, +copyright-violation" in explained

    link = run_cli("review", "batch", str(item), "--as", "mo", env=env).stdout.strip()
    assert link.startswith("http://127.0.0.1:8080/admin/review?batch=")
    run_cli("operator", "revoke", "bot", "--as", "alice", env=env)
    gone = run_cli("review", "list", "--as", "bot", env=env, check=False)
    assert gone.returncode == 2 and "revoked" in gone.stderr
    listing = run_cli("operator", "list", "--as", "alice", env=env).stdout
    assert "bot" in listing and "REVOKED" in listing
