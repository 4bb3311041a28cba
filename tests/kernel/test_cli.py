"""The `alliance` command: help lists the groups, errors are one line, --debug shows the traceback."""

import json
import os
import subprocess
import sys
from pathlib import Path

ALLIANCE = [sys.executable, "-m", "alliance.cli.main"]


def run(args, cwd, env=None, ok=True):
    result = subprocess.run([*ALLIANCE, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COLUMNS": "200", **(env or {})})
    if ok:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_help_lists_every_command_group(tmp_path):
    out = run(["--help"], tmp_path).stdout
    for group in ("config", "store", "catalog", "pipeline", "demo"):
        assert group in out


def test_config_prints_effective_configuration_with_secrets_masked(tmp_path):
    out = run(["config", "--json"], tmp_path, env={"ALLIANCE_S3_SECRET_ACCESS_KEY": "topsecret"}).stdout
    data = json.loads(out)
    assert data["store_url"] == (tmp_path / ".alliance" / "store").as_uri()
    assert data["s3"]["secret_access_key"] == "****"
    assert "topsecret" not in out


def test_catalog_upgrade_then_store_ls(tmp_path):
    first = run(["catalog", "upgrade"], tmp_path).stdout
    assert ": empty -> " in first
    head = first.rsplit("-> ", 1)[1].strip()
    assert f": {head} -> {head}" in run(["catalog", "upgrade"], tmp_path).stdout  # re-running changes nothing
    assert "partners" in run(["catalog", "status"], tmp_path).stdout
    (tmp_path / "f.txt").write_text("hello")
    run(["store", "put", "f.txt", "docs/f.txt"], tmp_path)
    assert run(["store", "ls"], tmp_path).stdout.split() == ["docs/f.txt"]
    assert run(["store", "cat", "docs/f.txt"], tmp_path).stdout == "hello"


def test_error_is_one_line_without_traceback(tmp_path):
    result = run(["store", "cat", "../escape"], tmp_path, ok=False)
    assert result.returncode == 1
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert lines == ["error: invalid key '../escape': '..' segments are not allowed"]


def test_debug_flag_shows_the_traceback(tmp_path):
    result = run(["--debug", "store", "cat", "../escape"], tmp_path, ok=False)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "InvalidKey" in result.stderr


def test_missing_object_names_the_key(tmp_path):
    result = run(["store", "cat", "no/such.bin"], tmp_path, ok=False)
    assert result.returncode == 1 and "no/such.bin: no such object" in result.stdout


def test_demo_make_data_says_what_it_wrote(tmp_path):
    out = run(["demo", "make-data", "--out", "samples"], tmp_path).stdout
    assert "12 recordings from 3 partners" in out and "planted: corrupt, frozen, near_duplicate" in out
    assert (tmp_path / "samples" / "glassco" / "homes-2026-11" / "delivery.toml").is_file()


def test_ingest_of_a_folder_whose_name_is_not_utf8_fails_on_one_printable_line(tmp_path):
    folder = tmp_path / os.fsdecode(b"d\xe9livery")
    folder.mkdir()
    (folder / "notes.txt").write_text("no video here")
    result = subprocess.run([*ALLIANCE, "pipeline", "ingest", "--source", os.fsencode(folder)], cwd=tmp_path,
                            capture_output=True, timeout=120, env={**os.environ, "COLUMNS": "400"})
    out = result.stdout.decode("utf-8")  # strict: every byte printed is UTF-8
    assert result.returncode == 1 and "Traceback" not in out + result.stderr.decode(errors="replace")
    assert "d\\xe9livery: no video files" in out


def test_ingest_summary_says_clips_written_and_whether_every_recording_is_accounted_for():
    from rich.console import Console

    from alliance.cli.pipeline import accounting_line, ingest_table
    from pipelines.ingest import IngestSummary

    summary = IngestSummary("r", 4, 1, 3, 3, {"symlink": 1, "truncated": 1}, "tables/clips/r",
                            "tables/rejections/r", 1.0, recordings_refused={"symlink": 1, "truncated": 1},
                            unaccounted=("/d/caf\\xe9 [1].mp4",))
    console = Console(width=200, record=True)
    console.print(ingest_table(summary))
    console.print(accounting_line(summary))
    text = console.export_text()
    assert "clips written" in text and "clips kept" not in text and "recordings refused: symlink" in text
    assert "not every recording is accounted for" in text and "/d/caf\\xe9 [1].mp4" in text
