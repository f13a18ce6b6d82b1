"""`distill data download`: fetch from a 127.0.0.1 server, verify, unpack atomically, refuse to clobber."""
import contextlib
import functools
import hashlib
import http.server
import json
import socket
import threading
import zipfile

import pytest

from distill import cli
from distill.data import download
from distill.errors import UserError

SVAMP_TRAIN = '{"input": "Tom has 3 apples and gets 2 more. How many?", "label": "( 3.0 + 2.0 )"}\n'


def _make_zip(path, members=None):
    """A miniature datasets.zip in the release's layout (top folder `datasets/`, a __MACOSX twin)."""
    members = members or {
        "datasets/svamp/svamp_train.json": SVAMP_TRAIN,
        "datasets/svamp/svamp_test.json": SVAMP_TRAIN,
        "datasets/svamp/llm/train_CoT_0.json": json.dumps(["Tom has 3 + 2 = 5. So the answer is 5."]),
        "datasets/cqa/cqa_train.json": "{}\n",
        "__MACOSX/datasets/svamp/._svamp_train.json": "junk",
    }
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def _serve(folder):
    """A static HTTP server over folder on 127.0.0.1, port chosen by the OS."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_download_verifies_and_unpacks_every_dataset(tmp_path, capsys):
    served = tmp_path / "www"
    served.mkdir()
    _, digest = _make_zip(served / "datasets.zip")
    data_dir = tmp_path / "data"
    with _serve(served) as base:
        code = cli.main(["data", "download", "--data-dir", str(data_dir), "--url", f"{base}/datasets.zip",
                         "--sha256", digest])
    assert code == 0
    assert (data_dir / "svamp" / "svamp_train.json").read_text() == SVAMP_TRAIN
    assert (data_dir / "svamp" / "llm" / "train_CoT_0.json").exists()
    assert (data_dir / "cqa" / "cqa_train.json").exists()
    assert sorted(p.name for p in data_dir.iterdir()) == [".download.json", "cqa", "svamp"]  # no temp leftovers
    manifest = json.loads((data_dir / ".download.json").read_text())
    assert manifest["sha256"] == digest and manifest["verified"] and manifest["datasets"] == ["cqa", "svamp"]
    assert f"sha256 {digest} verified" in capsys.readouterr().out


def test_checksum_mismatch_unpacks_nothing(tmp_path):
    served = tmp_path / "www"
    served.mkdir()
    _make_zip(served / "datasets.zip")
    data_dir = tmp_path / "data"
    with _serve(served) as base, pytest.raises(UserError, match="does not match the expected"):
        download.download_datasets(str(data_dir), url=f"{base}/datasets.zip", sha256="0" * 64)
    assert list(data_dir.iterdir()) == []


def test_unpinned_download_is_reported_unverified(tmp_path, capsys):
    archive, digest = _make_zip(tmp_path / "datasets.zip")
    assert download.main(["--data-dir", str(tmp_path / "d"), "--archive", str(archive)]) == 0
    assert f"sha256 {digest} UNVERIFIED" in capsys.readouterr().out
    assert json.loads((tmp_path / "d" / ".download.json").read_text())["verified"] is False


def test_existing_data_is_kept_without_force_and_replaced_with_it(tmp_path):
    archive, _ = _make_zip(tmp_path / "datasets.zip")
    data_dir = tmp_path / "data"
    (data_dir / "svamp").mkdir(parents=True)
    (data_dir / "svamp" / "svamp_train.json").write_text("mine\n")
    with pytest.raises(UserError, match="already holds svamp; pass --force"):
        download.download_datasets(str(data_dir), archive=str(archive))
    assert (data_dir / "svamp" / "svamp_train.json").read_text() == "mine\n"
    assert download.download_datasets(str(data_dir), archive=str(archive), force=True) == ["cqa", "svamp"]
    assert (data_dir / "svamp" / "svamp_train.json").read_text() == SVAMP_TRAIN


def test_offline_is_one_line_saying_how_to_set_the_data_dir(tmp_path, capsys):
    with socket.socket() as probe:  # A port nothing listens on.
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = cli.main(["data", "download", "--data-dir", str(tmp_path / "d"), "--url",
                     f"http://127.0.0.1:{port}/datasets.zip", "--timeout", "5"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: cannot download") and "DISTILL_DATA_DIR" in err
    assert download.existing_datasets(str(tmp_path / "d")) == []


def test_http_error_names_the_status(tmp_path):
    with _serve(tmp_path) as base, pytest.raises(UserError, match="HTTP 404"):
        download.download_datasets(str(tmp_path / "d"), url=f"{base}/missing.zip")


@pytest.mark.parametrize("members, message", [
    ({"datasets/../evil.txt": "x", "datasets/svamp/svamp_train.json": SVAMP_TRAIN}, "unsafe member path"),
    ({"datasets/readme.txt": "x"}, "no <name>/<name>_train.json"),
])
def test_bad_archives_are_refused(tmp_path, members, message):
    archive, _ = _make_zip(tmp_path / "datasets.zip", members)
    with pytest.raises(UserError, match=message):
        download.download_datasets(str(tmp_path / "d"), archive=str(archive))
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "d" / "svamp").exists()


def test_corrupt_archive_is_refused(tmp_path):
    archive, _ = _make_zip(tmp_path / "datasets.zip")
    data = bytearray(archive.read_bytes())
    start = 30 + len("datasets/svamp/svamp_train.json")  # Local header, name, then the stored bytes.
    data[start:start + 4] = b"XXXX"  # Same length, different bytes: a CRC mismatch.
    archive.write_bytes(bytes(data))
    with pytest.raises(UserError, match="svamp_train.json' is corrupt"):
        download.download_datasets(str(tmp_path / "d"), archive=str(archive))
    assert not (tmp_path / "d" / "svamp").exists()


@pytest.mark.parametrize("member", [
    "datasets/svamp//{outside}/escaped.json",  # an absolute part after a double slash
    "datasets/svamp/./svamp_valid.json",
    "datasets/svamp/C:/escaped.json",
    "datasets/svamp/a\\..\\escaped.json",
])
def test_member_paths_that_leave_the_target_are_refused(tmp_path, member):
    outside = tmp_path / "outside"
    outside.mkdir()
    name = member.format(outside=str(outside).lstrip("/"))
    archive, _ = _make_zip(tmp_path / "evil.zip", {"datasets/svamp/svamp_train.json": SVAMP_TRAIN,
                                                   "datasets/svamp/svamp_test.json": SVAMP_TRAIN, name: "{}\n"})
    data_dir = tmp_path / "data"
    with pytest.raises(UserError, match="unsafe member path"):
        download.unpack(str(archive), str(data_dir))
    assert not list(outside.iterdir()) and not (data_dir / "svamp").exists()


def test_zip_bombs_and_oversized_archives_are_refused(tmp_path):
    big = "0" * (4 << 20)  # 4 MB of zeros compresses ~1000x
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as out:
        out.writestr("datasets/svamp/svamp_train.json", SVAMP_TRAIN)
        out.writestr("datasets/svamp/svamp_test.json", big)
    with pytest.raises(UserError, match="expands .*x, over the 200x limit"):
        download.unpack(str(archive), str(tmp_path / "data"))
    with pytest.raises(UserError, match="over the 1,000-byte limit"):
        download.unpack(str(archive), str(tmp_path / "data"), max_unpacked_bytes=1000, max_compression_ratio=1e9)
    assert download.unpack(str(archive), str(tmp_path / "data"), max_compression_ratio=1e9) == ["svamp"]


def test_a_trickling_server_hits_the_deadline_and_leaves_nothing(tmp_path):
    """A server sending one byte every 0.2 s never trips the per-read timeout; the deadline stops it."""
    import time

    class Trickle(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.2)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        started = time.monotonic()
        with pytest.raises(UserError, match="unfinished after 1 s"):
            download.download_datasets(str(tmp_path / "data"), url=f"http://127.0.0.1:{server.server_address[1]}/z",
                                       timeout=5, deadline=1)
        assert time.monotonic() - started < 10
    finally:
        server.shutdown()
        server.server_close()
    assert not [p for p in (tmp_path / "data").rglob("*") if p.is_file()]


def test_symlink_members_are_refused(tmp_path):
    archive = tmp_path / "links.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("datasets/svamp/svamp_train.json", SVAMP_TRAIN)
        out.writestr("datasets/svamp/svamp_test.json", SVAMP_TRAIN)
        link = zipfile.ZipInfo("datasets/svamp/llm/train_CoT_0.json")
        link.external_attr = (0o120777 << 16)
        out.writestr(link, "/etc/passwd")
    with pytest.raises(UserError, match="is a symbolic link"):
        download.unpack(str(archive), str(tmp_path / "data"))
    assert not (tmp_path / "data" / "svamp").exists()
