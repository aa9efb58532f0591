"""Hub download error mapping (no network: hf_hub_download is replaced) and safe voices.tgz extraction."""

import importlib
import io
import tarfile
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import errors as hf_errors

from ppchat.errors import CheckpointError
from ppchat.models import hub, manifest


def _response(status: int):
    """An HTTP response object of whatever client this huggingface_hub version uses."""
    response_cls = hf_errors.Response
    client = importlib.import_module(response_cls.__module__.split(".")[0])
    if client.__name__ == "requests":
        response = response_cls()
        response.status_code = status
        return response
    return response_cls(status, request=client.Request("GET", "https://huggingface.co/api/models/x"))


class FakeHub:
    """Stands in for hf_hub_download: a cache of file names plus an error for online calls."""

    def __init__(self, snapshot: Path, cached=(), online_error: Exception | None = None):
        self.snapshot, self.cached, self.online_error = snapshot, set(cached), online_error
        self.calls = []

    def __call__(self, repo_id, filename, *, revision=None, token=None, cache_dir=None, local_files_only=False):
        self.calls.append((filename, local_files_only, token))
        if local_files_only and filename not in self.cached:
            raise hf_errors.LocalEntryNotFoundError("not cached")
        if not local_files_only and self.online_error is not None:
            raise self.online_error
        return str(self.snapshot / filename)


@pytest.fixture
def fake(monkeypatch, tmp_path):
    # A token and a reachable hub, as the online errors below need (the pre-checks are tested apart).
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.setattr(hub, "_reachability_problem", lambda: None)
    # .ci/run exports HF_HUB_OFFLINE=1 as a guard; these tests stand in for a hub that can be reached.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def install(**kwargs):
        fake_hub = FakeHub(tmp_path / "snapshots" / "abc123", **kwargs)
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hub)
        return fake_hub

    return install


def test_complete_cache_is_used_without_going_online(fake):
    f = fake(cached=manifest.HUB_FILES, online_error=AssertionError("network used"))
    assert hub.download_model() == f.snapshot
    assert all(local for _, local, _ in f.calls)
    assert [name for name, _, _ in f.calls] == list(manifest.HUB_FILES)


def test_missing_files_are_downloaded_with_the_token(fake, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    f = fake(cached=[manifest.TOKENIZER_FILE])
    assert hub.download_model(token="hf_secret") == f.snapshot
    online = [(name, token) for name, local, token in f.calls if not local]
    assert online == [(name, "hf_secret") for name in manifest.HUB_FILES]


def test_offline_with_incomplete_cache(fake):
    fake(cached=[manifest.LM_FILE])
    with pytest.raises(CheckpointError, match="cannot reach huggingface.co.*not in the local cache"):
        hub.download_model(offline=True)


def test_gated_repo_without_token_explains_licence_and_token(fake, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)  # and no saved login
    f = fake(online_error=hf_errors.GatedRepoError("403 gated", response=_response(403)))
    with pytest.raises(CheckpointError) as info:
        hub.download_model()
    msg = str(info.value)
    assert "https://huggingface.co/nvidia/personaplex-7b-v1" in msg and "export HF_TOKEN" in msg
    assert "no HF_TOKEN is set" in msg
    assert all(local for _, local, _ in f.calls)  # found out before going online


def test_gated_repo_with_a_token_lacking_access(fake, monkeypatch):
    fake(online_error=hf_errors.GatedRepoError("403 gated", response=_response(403)))
    with pytest.raises(CheckpointError, match="HF_TOKEN has not been granted access.*accept the licence"):
        hub.download_model()


def test_unauthorised_repository(fake):
    fake(online_error=hf_errors.RepositoryNotFoundError("401", response=_response(401)))
    with pytest.raises(CheckpointError, match="not found or needs authentication.*HF_TOKEN"):
        hub.download_model()


def test_missing_file_in_repo(fake):
    error = getattr(hf_errors, "RemoteEntryNotFoundError", hf_errors.EntryNotFoundError)
    fake(online_error=error("404", response=_response(404)) if error is not hf_errors.EntryNotFoundError else error("404"))
    with pytest.raises(CheckpointError, match=rf"{manifest.LM_FILE} is not in nvidia/personaplex-7b-v1"):
        hub.download_model()


def test_server_error(fake):
    fake(online_error=hf_errors.HfHubHTTPError("500 boom", response=_response(500)))
    with pytest.raises(CheckpointError, match="HTTP 500.*retry"):
        hub.download_model()


def test_disk_full(fake):
    fake(online_error=OSError(28, "No space left on device"))
    with pytest.raises(CheckpointError, match="No space left.*free disk space"):
        hub.download_model()


# --- voices.tgz ------------------------------------------------------------------------------------


def _tgz(path: Path, members: dict, links: dict | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


def test_extracts_top_level_voices_folder_once(tmp_path):
    archive = _tgz(tmp_path / "voices.tgz", {"voices/NATF0.pt": b"a", "voices/VARM4.pt": b"b"})
    voices = hub.extract_voices(archive, tmp_path)
    assert voices == tmp_path / "voices"
    assert sorted(p.name for p in voices.iterdir()) == ["NATF0.pt", "VARM4.pt"]
    assert (voices / "NATF0.pt").read_bytes() == b"a"
    archive.unlink()  # a second call must not need the archive
    assert hub.extract_voices(archive, tmp_path) == voices
    assert [p.name for p in tmp_path.iterdir()] == ["voices"]  # no staging leftovers


def test_flat_archive(tmp_path):
    voices = hub.extract_voices(_tgz(tmp_path / "v.tgz", {"NATM1.pt": b"x"}), tmp_path / "out")
    assert [p.name for p in voices.iterdir()] == ["NATM1.pt"]


@pytest.mark.parametrize("name", ["../escape.pt", "voices/../../escape.pt", "/tmp/escape-abs.pt"])
def test_path_traversal_is_refused(tmp_path, name):
    dest = tmp_path / "dest"
    archive = _tgz(tmp_path / "evil.tgz", {"voices/ok.pt": b"ok", name: b"evil"})
    with pytest.raises(CheckpointError, match="unsafe path"):
        hub.extract_voices(archive, dest)
    assert not (tmp_path / "escape.pt").exists() and not Path("/tmp/escape-abs.pt").exists()
    assert not (dest / "voices").exists() and list(dest.iterdir()) == []


def test_links_are_refused(tmp_path):
    archive = _tgz(tmp_path / "link.tgz", {"voices/ok.pt": b"ok"}, links={"voices/passwd.pt": "/etc/passwd"})
    with pytest.raises(CheckpointError, match="link or special file"):
        hub.extract_voices(archive, tmp_path / "dest")
    assert not (tmp_path / "dest" / "voices").exists()


def test_corrupt_archive(tmp_path):
    archive = _tgz(tmp_path / "voices.tgz", {"voices/NATF0.pt": bytes(range(256)) * 64})
    archive.write_bytes(archive.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="voices.tgz is corrupt.*ppchat download"):
        hub.extract_voices(archive, tmp_path / "dest")


# --- before a download: token and reachability (issue 16.16) ----------------------------------


@pytest.fixture
def unreachable_hub(monkeypatch):
    """The hub endpoint is a local port nobody listens on: the connection is refused at once."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    return port


def no_online_download(monkeypatch):
    calls = []

    def hf_hub_download(repo_id, filename, *, local_files_only=False, **kwargs):
        calls.append(local_files_only)
        if not local_files_only:
            raise AssertionError("went online despite the pre-check")
        raise hf_errors.LocalEntryNotFoundError("not cached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    return calls


def test_no_token_and_no_network_is_one_message_with_both_fixes(monkeypatch, unreachable_hub):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    calls = no_online_download(monkeypatch)
    with pytest.raises(CheckpointError) as info:
        hub.download_model()
    msg = str(info.value)
    assert "no HF_TOKEN is set" in msg and "127.0.0.1 cannot be reached" in msg
    assert "export HF_TOKEN=hf_..." in msg and "https://huggingface.co/settings/tokens" in msg and "--model DIR" in msg
    assert "HF_HUB_OFFLINE" not in msg  # it was never set
    assert calls and all(calls)  # only cache look-ups (local_files_only=True), never a download


def test_with_a_token_only_the_network_is_named(monkeypatch, unreachable_hub):
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    no_online_download(monkeypatch)
    with pytest.raises(CheckpointError, match=r"cannot download .*: 127.0.0.1 cannot be reached") as info:
        hub.download_model()
    assert "HF_TOKEN" not in str(info.value)


def test_hf_hub_offline_is_named_only_when_set(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    no_online_download(monkeypatch)
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE is set; unset HF_HUB_OFFLINE"):
        hub.download_model()


def test_download_command_says_it_in_one_line(monkeypatch, unreachable_hub, capsys, tmp_path):
    from ppchat.cli import main

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    no_online_download(monkeypatch)
    assert main(["download"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ppchat: error: cannot download nvidia/personaplex-7b-v1")
