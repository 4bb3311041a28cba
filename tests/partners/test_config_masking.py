"""`alliance config` never prints a password: URL userinfo and secret query parameters are masked."""

from __future__ import annotations

import json

from alliance.cli.main import main


def test_config_masks_passwords_in_every_url(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ALLIANCE_HOME", str(tmp_path / ".alliance"))
    monkeypatch.setenv("ALLIANCE_CATALOG", "postgresql+psycopg://alliance:hunter2@db:5432/cat?password=hunter3")
    monkeypatch.setenv("ALLIANCE_S3_ENDPOINT", "http://admin:hunter4@s3.local:8333")
    monkeypatch.setenv("ALLIANCE_S3_SECRET_ACCESS_KEY", "hunter5")
    for argv in (["config"], ["config", "--json"]):
        try:
            main(argv)
        except SystemExit as e:
            assert not e.code
        out = capsys.readouterr().out
        assert "hunter" not in out and "db:5432" in out and "s3.local:8333" in out
    data = json.loads(out)
    assert data["s3"]["endpoint_url"].startswith("http://admin:") and "@s3.local" in data["s3"]["endpoint_url"]
