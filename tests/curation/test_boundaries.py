"""Curation imports neither Beam nor torch; the curate pipeline needs torch only when an encoder is given."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from alliance.cli.main import app


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(','.join(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(out.strip().split(","))


def test_curation_package_pulls_in_neither_beam_nor_torch():
    loaded = _modules_after("import curation.quality, curation.neardup, curation.embed, curation.semdedup, "
                            "curation.balance, curation.report, curation.select, curation.evalset")
    assert "torch" not in loaded and "apache_beam" not in loaded


def test_curate_pipeline_module_does_not_need_torch():
    loaded = _modules_after("import pipelines.curate")
    assert "apache_beam" in loaded and "torch" not in loaded


def test_cli_lists_the_curate_command_and_refuses_a_missing_clip_table(tmp_path, monkeypatch):
    monkeypatch.setenv("ALLIANCE_HOME", str(tmp_path / ".alliance"))
    runner = CliRunner()
    assert "--encoder" in runner.invoke(app, ["pipeline", "curate", "--help"]).output
    result = runner.invoke(app, ["pipeline", "curate", "--clips", "no-such-run"])
    assert result.exit_code != 0
    assert "tables/clips/no-such-run" in str(result.exception) + result.output
