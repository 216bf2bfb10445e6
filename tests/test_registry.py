"""The scanner registry is the one table of scanner names; the engine is built in one place."""

from __future__ import annotations

from dataclasses import replace

import pytest

from firehose_mod.config import ConfigError
from firehose_mod.scan.registry import SCANNERS, enabled

from tests.procs import env_for, free_port, run_cli


def test_a_misspelled_scanner_is_refused_with_the_names_the_registry_knows(settings):
    with pytest.raises(ConfigError) as err:
        enabled(replace(settings, scanners=("text", "cover-arts")))
    assert "'cover-arts'" in str(err.value) and str(sorted(SCANNERS)) in str(err.value)


def test_audd_enabled_adds_the_audd_scanner_once(settings):
    assert enabled(replace(settings, scanners=("text",), audd_enabled=True)) == ["text", "audd"]
    assert enabled(replace(settings, scanners=("audd", "text"), audd_enabled=True)) == ["audd", "text"]


def test_run_with_an_unknown_scanner_is_one_line_and_exit_2(tmp_path):
    port = free_port()
    env = env_for(tmp_path / "var", port, FIREHOSE_MOD_SCANNERS="text,cover-arts", FIREHOSE_MOD_INGEST_SOURCE="none")
    proc = run_cli("run", env=env, check=False, timeout=60)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("firehose-mod:") and "cover-arts" in last and "cover-art" in last
