"""`ppchat serve` on the command line: refusals before anything loads, TLS, the web UI's archive."""

from __future__ import annotations

import asyncio
import io
import shutil
import ssl
import subprocess
import tarfile

import pytest

pytest.importorskip("aiohttp")

from ppchat.cli import main
from ppchat.commands.serve import _loopback, _ssl_context
from ppchat.errors import PPChatError
from ppchat.net import webui


@pytest.mark.parametrize("argv,expected", [
    (["serve", "--port", "70000"], "--port 70000 is not a port number"),
    (["serve", "--idle-timeout", "0"], "--idle-timeout must be positive"),
    (["serve", "--max-backlog", "0"], "--max-backlog must be at least 1"),
    (["serve", "--max-conversations", "0"], "--max-conversations must be at least 1"),
    (["serve", "--static", "."], "has no index.html"),
])
def test_bad_options_are_refused_before_the_model_loads(argv, expected, capsys):
    assert main(argv) == 2
    assert expected in capsys.readouterr().err


def test_only_loopback_addresses_count_as_private():
    assert _loopback("127.0.0.1") and _loopback("localhost") and _loopback("::1")
    assert not _loopback("0.0.0.0") and not _loopback("no-such-host.invalid")


def test_unusable_certificates_are_named(tmp_path):
    (tmp_path / "cert.pem").write_text("not a certificate")
    with pytest.raises(PPChatError, match="cannot use --ssl"):
        _ssl_context((tmp_path / "cert.pem", tmp_path / "key.pem"))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_wss_with_a_certificate(tmp_path):
    import aiohttp

    from ppchat.conversation import Conversation, TalkOptions
    from ppchat.models.loader import load_model
    from ppchat.net.server import ChatServer, ServeOptions, ServerThread

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    model = load_model("demo", cache_root=tmp_path / "cache", depformer_steps=8, show_progress=False)
    with Conversation(TalkOptions(model="demo", record=False, monitor=False), model=model) as conv:
        with ServerThread(ChatServer(conv, ServeOptions(port=0)), ssl_context=_ssl_context((cert, key))) as thread:
            async def handshake():
                trust = ssl.create_default_context(cafile=str(cert))
                async with aiohttp.ClientSession() as session:
                    async with session.ws_connect(f"wss://127.0.0.1:{thread.port}/api/chat", ssl=trust) as ws:
                        return (await ws.receive()).data

            assert asyncio.run(handshake()) == b"\x00"


def _tgz(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def test_the_web_ui_comes_from_the_hub_cache_and_unpacks_once(tmp_path, monkeypatch):
    snapshot = tmp_path / "hub" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    _tgz(snapshot / "dist.tgz", {"dist/index.html": b"<html>ui</html>", "dist/assets/a.js": b"1"})
    monkeypatch.setattr(webui.hub, "download_web_ui", lambda offline: snapshot / "dist.tgz")
    folder = webui.find_web_ui(tmp_path / "cache")
    assert folder == tmp_path / "cache" / "webui" / "abc123" / "dist"
    assert (folder / "index.html").read_bytes() == b"<html>ui</html>"
    assert webui.find_web_ui(tmp_path / "cache") == folder
    monkeypatch.setattr(webui.hub, "download_web_ui", lambda offline: None)
    assert webui.find_web_ui(tmp_path / "cache") is None


def test_a_web_ui_archive_that_escapes_is_not_served(tmp_path, monkeypatch):
    snapshot = tmp_path / "snapshots" / "bad"
    snapshot.mkdir(parents=True)
    _tgz(snapshot / "dist.tgz", {"dist/index.html": b"x", "../../evil.html": b"x"})
    monkeypatch.setattr(webui.hub, "download_web_ui", lambda offline: snapshot / "dist.tgz")
    assert webui.find_web_ui(tmp_path / "cache") is None
    assert not (tmp_path / "evil.html").exists() and not list((tmp_path / "cache").rglob("evil.html"))
