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
    loaded = _modules_after("import curation.quality, curation.signature, curation.neardup, curation.index_store, "
                            "curation.embed, curation.semdedup, curation.balance, curation.report, curation.select, "
                            "curation.verdicts, curation.evalset")
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


def test_cli_curates_a_clip_table_and_records_the_run(tmp_path, monkeypatch):
    from alliance.catalog import Catalog
    from alliance.models import Run
    from alliance.store import LocalStore
    from curation.evalset import camera_frames, encode
    from tests.curation.conftest import clip_row, write_clip_table

    monkeypatch.setenv("ALLIANCE_HOME", str(tmp_path / ".alliance"))
    store = LocalStore(tmp_path / ".alliance" / "store")
    write_clip_table(store, "ing", [clip_row(store, "p", "d1", "a", encode(camera_frames(7, 30))),
                                    clip_row(store, "p", "d1", "b", encode([camera_frames(7, 1)[0]] * 30))])
    result = CliRunner().invoke(app, ["pipeline", "curate", "--clips", "ing", "--quality", "min_frame_diff=0.1",
                                      "--", "--direct_running_mode=in_memory", "--direct_num_workers=1"])
    assert result.exit_code == 0, result.output
    assert "2 clips in, 1 kept" in result.output and "frozen 1" in result.output
    catalog = Catalog(f"sqlite:///{tmp_path / '.alliance' / 'catalog.db'}")
    with catalog.session() as session:
        run = session.get(Run, "curate-ing")
        assert run.kind == "curate" and run.status == "succeeded" and run.summary["kept"] == 1
        assert run.config["quality"]["min_frame_diff"] == 0.1
    catalog.dispose()
