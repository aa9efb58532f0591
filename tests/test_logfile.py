"""The log file: where it is, what the user is told, and that a bug leaves its traceback there."""

from __future__ import annotations

import logging

import pytest

from ppchat import __version__, logfile, paths
from ppchat.cli import main
from ppchat.commands import talk


@pytest.fixture
def state_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    yield tmp_path / "state"
    monkeypatch.undo()
    logfile.setup(paths.log_file())  # later tests log to the session's state dir again


def test_help_names_the_log_file(state_home, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps long lines
    assert f"Log file: {state_home / 'ppchat' / 'ppchat.log'}" in out


def test_an_internal_error_is_one_line_for_the_user_and_a_traceback_in_the_log(state_home, monkeypatch, capsys):
    def broken(args):
        raise KeyError("boom")

    monkeypatch.setattr(talk, "cmd_prompts", broken)
    assert main(["prompts"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    log_path = state_home / "ppchat" / "ppchat.log"
    assert err == [f"ppchat: internal error: KeyError: 'boom' (details in {log_path})"]
    text = log_path.read_text()
    assert f"ppchat {__version__}: ppchat prompts" in text  # which command ran
    assert "Traceback (most recent call last)" in text and "in broken" in text and "KeyError: 'boom'" in text


def test_a_user_error_stays_one_plain_line(state_home, capsys):
    assert main(["respond", "-i", str(state_home / "missing.wav"), "-o", str(state_home / "nowhere" / "o.wav")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ppchat: error: cannot write") and "details in" not in err[0]
    assert "user error: cannot write" in (state_home / "ppchat" / "ppchat.log").read_text()


def test_an_unwritable_state_dir_is_a_warning_not_a_failure(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_STATE_HOME", str(blocker))
    try:
        assert logfile.setup() is None
        assert logfile.see_log() == ""
        err = capsys.readouterr().err
        assert f"no log file: cannot write {blocker / 'ppchat' / 'ppchat.log'}" in err and "set XDG_STATE_HOME" in err
    finally:
        monkeypatch.undo()
        logfile.setup(paths.log_file())


def test_the_log_rotates(tmp_path, monkeypatch):
    monkeypatch.setattr(logfile, "MAX_BYTES", 2000)
    path = tmp_path / "rot" / "ppchat.log"
    try:
        assert logfile.setup(path) == path
        log = logging.getLogger("ppchat.test")
        for i in range(100):
            log.info("line %03d %s", i, "x" * 40)
        backups = sorted(path.parent.glob("ppchat.log.*"))
        assert [p.name for p in backups] == [f"ppchat.log.{i}" for i in range(1, logfile.BACKUPS + 1)]
        assert path.stat().st_size <= 2000 and "line 099" in path.read_text()
    finally:
        logfile.setup(paths.log_file())


def test_warnings_reach_the_terminal_without_their_traceback(tmp_path, capsys):
    path = tmp_path / "w" / "ppchat.log"
    try:
        logfile.setup(path)
        log = logging.getLogger("ppchat.test")
        log.warning("voice audio %s has %d channels", "v.wav", 2)
        try:
            raise ValueError("inner")
        except ValueError:
            log.exception("caught and reported elsewhere")
        assert capsys.readouterr().err == "ppchat: warning: voice audio v.wav has 2 channels\n"
        text = path.read_text()
        assert "voice audio v.wav has 2 channels" in text and "ValueError: inner" in text
    finally:
        logfile.setup(paths.log_file())
