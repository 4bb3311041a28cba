"""The operator and partner commands: partners add|rotate|revoke|list|audit, contract schema, deliver --check."""

from __future__ import annotations

import json

import pytest

from alliance.cli.main import main
from tests.partners.conftest import make_folder


def run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    return code, capsys.readouterr().out


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ALLIANCE_HOME", str(tmp_path / ".alliance"))
    monkeypatch.delenv("ALLIANCE_CATALOG", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_partner_accounts_from_the_command_line(home, capsys):
    code, out = run(["partners", "add", "glassco", "--display-name", "GlassCo"], capsys)
    assert code == 0 and "alk_" in out
    token = next(word for word in out.split() if word.startswith("alk_"))
    code, out = run(["partners", "add", "glassco"], capsys)
    assert code == 1 and "already exists" in out and "rotate" in out
    code, out = run(["partners", "add", "Bad Name!"], capsys)
    assert code == 1 and "partner name" in out
    code, out = run(["partners", "rotate", "glassco"], capsys)
    assert code == 0 and "alk_" in out and token not in out
    code, out = run(["partners", "list"], capsys)
    assert code == 0 and "glassco" in out and "GlassCo" in out
    code, out = run(["partners", "revoke", "glassco"], capsys)
    assert code == 0 and "revoked 1 token" in out
    code, out = run(["partners", "audit", "glassco"], capsys)
    assert code == 0 and "partner.add" in out and "token.revoke" in out
    assert token not in (home / ".alliance" / "catalog.db").read_bytes().decode(errors="replace")


def test_contract_schema_and_local_check(home, media, capsys):
    code, out = run(["contract", "schema"], capsys)
    schema = json.loads(out)
    assert code == 0 and "recordings" in schema["properties"] and schema["title"].endswith("1.0")
    folder = make_folder(home / "folder", media, {"a.mp4": media.good, "a.imu.csv": media.imu,
                                                 "broken.mp4": b"\x00" * 100})
    code, out = run(["deliver", str(folder), "--check"], capsys)
    assert code == 3 and "broken.mp4" in out and "not_video" in out and "1 would be accepted" in out
    (folder / "broken.mp4").unlink()
    code, out = run(["deliver", str(folder), "--check"], capsys)
    assert code == 0 and "every file passes" in out
    (folder / "delivery.toml").unlink()
    code, out = run(["deliver", str(folder), "--check"], capsys)
    assert code == 1 and "delivery.toml" in out
