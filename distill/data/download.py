"""`distill data download`: fetch and unpack the paper's released datasets.

The authors ship their cached PaLM outputs and the four datasets as one
`datasets.zip` committed to their repository (`unzip datasets.zip` in their
README), holding `datasets/<name>/<name>_<split>.json` and
`datasets/<name>/llm/<split>_CoT_<i>.json`. This command downloads it,
checks its sha256, checks every member's CRC and path, and moves each dataset
folder into `<data dir>/<name>/` with an atomic rename, so an interrupted run
never leaves a half-written dataset and existing data is only replaced with
`--force`.

Checksum: `PINNED_SHA256` is None because this project was built without
network access and the archive's digest could not be read; nothing is
invented. Until it is pinned, pass `--sha256 <hex>` to enforce one; without
either the download is reported as unverified and its digest is recorded in
`<data dir>/.download.json` (pin that value here once checked).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
import zipfile

from distill.atomic import replace_dir, write_atomically
from distill.errors import UserError
from distill.safe_paths import check_relative, safe_join

DATASETS_URL = "https://github.com/google-research/distilling-step-by-step/raw/main/datasets.zip"
PINNED_SHA256: str | None = None
PAPER_DATASETS = ("anli1", "cqa", "esnli", "svamp")
MANIFEST = ".download.json"
_SKIPPED_PREFIXES = ("__MACOSX/",)
MAX_UNPACKED_BYTES = 2 << 30  # the paper's datasets.zip unpacks to about 0.5 GB
MAX_COMPRESSION_RATIO = 200  # text JSON compresses ~10x; a zip bomb, 1000x
MAX_DOWNLOAD_BYTES = 1 << 30  # the archive is about 40 MB


def default_data_dir() -> str:
    """$DISTILL_DATA_DIR, else a per-user cache folder (where quickstart downloads to)."""
    if os.environ.get("DISTILL_DATA_DIR"):
        return os.environ["DISTILL_DATA_DIR"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "distill", "data")


def existing_datasets(data_dir: str) -> list[str]:
    """Paper datasets that already have a folder in data_dir."""
    return [name for name in PAPER_DATASETS if os.path.isdir(os.path.join(data_dir, name))]


def fetch(url: str, dest: str, *, timeout: float = 60.0, deadline: float = 1800.0,
          max_bytes: int = MAX_DOWNLOAD_BYTES) -> str:
    """Streams url into dest; returns its sha256. Network failures become one-line UserErrors.

    `timeout` bounds each read; `deadline` (seconds) the whole download, so
    a server trickling a byte at a time cannot hold it forever; `max_bytes`
    its size. Either limit removes the partial file (the caller's temp dir).
    """
    import time

    import httpx

    digest = hashlib.sha256()
    start = time.monotonic()
    received = 0
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=timeout) as response:
            if response.status_code != 200:
                raise UserError(f"{url}: HTTP {response.status_code}; check the URL (--url) or download "
                                "datasets.zip by hand and pass --archive PATH")
            with open(dest, "wb") as handle:
                for chunk in response.iter_bytes():  # as it arrives, so the deadline is checked often
                    received += len(chunk)
                    if received > max_bytes:
                        raise UserError(f"{url}: more than {max_bytes:,} bytes; not the paper's datasets.zip? "
                                        "(--max-download-bytes raises the limit)")
                    if time.monotonic() - start > deadline:
                        raise UserError(f"{url}: download still unfinished after {deadline:g} s; "
                                        "try again later or raise --deadline")
                    digest.update(chunk)
                    handle.write(chunk)
    except httpx.HTTPError as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"cannot download {url} ({reason}): offline? Put the paper's data in a folder and set "
                        "DISTILL_DATA_DIR=<folder>, or pass --archive <local datasets.zip>") from None
    return digest.hexdigest()


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _dataset_members(archive: zipfile.ZipFile, source: str) -> dict[str, list[zipfile.ZipInfo]]:
    """Groups safe archive members by dataset folder, dropping a leading `datasets/`.

    Returns {dataset name: [members]} for every folder holding `<name>_train.json`.
    A member with an absolute path or `..` is refused (zip slip).
    """
    by_dataset: dict[str, list[zipfile.ZipInfo]] = {}
    for info in archive.infolist():
        name = info.filename
        if name.startswith(_SKIPPED_PREFIXES) or info.is_dir():
            continue
        parts = check_relative(name, source)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UserError(f"{source}: member {name!r} is a symbolic link; refusing to unpack this archive")
        if parts[0] == "datasets":
            parts = parts[1:]
        if len(parts) >= 2:
            by_dataset.setdefault(parts[0], []).append(info)
    found = {name: members for name, members in by_dataset.items()
             if any(m.filename.endswith(f"{name}/{name}_train.json") for m in members)}
    if not found:
        raise UserError(f"{source}: no <name>/<name>_train.json inside; is this the paper's datasets.zip?")
    return found


def _relative(name: str, dataset: str) -> str:
    """Path of a member below its dataset folder."""
    return name.split(f"{dataset}/", 1)[1]


def _check_sizes(members: list[zipfile.ZipInfo], source: str, max_bytes: int, max_ratio: float) -> None:
    """UserError when the members would unpack past max_bytes or a member's ratio is a zip bomb's."""
    total = sum(m.file_size for m in members)
    if total > max_bytes:
        raise UserError(f"{source}: unpacks to {total:,} bytes, over the {max_bytes:,}-byte limit; "
                        "pass --max-unpacked-bytes to allow more")
    for m in members:
        if m.file_size > 1 << 20 and m.file_size > max_ratio * max(m.compress_size, 1):
            raise UserError(f"{source}: member {m.filename!r} expands {m.file_size / max(m.compress_size, 1):.0f}x, "
                            f"over the {max_ratio:g}x limit (a zip bomb?); pass --max-compression-ratio to allow it")


def unpack(archive_path: str, data_dir: str, *, force: bool = False, max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
           max_compression_ratio: float = MAX_COMPRESSION_RATIO) -> list[str]:
    """Verifies archive_path and moves its dataset folders into data_dir; returns their names.

    Everything is extracted into a temp folder inside data_dir first (same
    file system), then each dataset folder is swapped in with os.replace; an
    existing folder is only replaced with force=True, and removed only after
    its replacement is in place.
    """
    try:
        archive = zipfile.ZipFile(archive_path)
    except (zipfile.BadZipFile, OSError) as err:
        raise UserError(f"{archive_path}: not a readable zip archive ({err}); delete it and download again") from None
    with archive:
        bad = archive.testzip()
        if bad is not None:
            raise UserError(f"{archive_path}: member {bad!r} is corrupt (CRC mismatch); download again")
        groups = _dataset_members(archive, archive_path)
        _check_sizes([m for members in groups.values() for m in members], archive_path, max_unpacked_bytes,
                     max_compression_ratio)
        clashes = [name for name in groups if os.path.exists(os.path.join(data_dir, name))]
        if clashes and not force:
            raise UserError(f"{data_dir} already holds {', '.join(sorted(clashes))}; pass --force to replace them")
        os.makedirs(data_dir, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".download-", dir=data_dir)
        try:
            for dataset, members in groups.items():
                for info in members:
                    target = safe_join(staging, f"{dataset}/{_relative(info.filename, dataset)}", archive_path)
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    with archive.open(info) as source, open(target, "wb") as sink:
                        _copy_bounded(source, sink, info, archive_path)
            for dataset in sorted(groups):
                replace_dir(os.path.join(staging, dataset), os.path.join(data_dir, dataset))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return sorted(groups)


def _copy_bounded(source, sink, info: zipfile.ZipInfo, archive_path: str) -> None:
    """Copies one member, refusing to write more than its header declares (a lying header)."""
    written = 0
    for chunk in iter(lambda: source.read(1 << 20), b""):
        written += len(chunk)
        if written > info.file_size:
            raise UserError(f"{archive_path}: member {info.filename!r} is larger than its header says; "
                            "refusing to unpack this archive")
        sink.write(chunk)


def download_datasets(data_dir: str, *, url: str = DATASETS_URL, sha256: str | None = None,
                      archive: str | None = None, force: bool = False, timeout: float = 60.0,
                      deadline: float = 1800.0, max_download_bytes: int = MAX_DOWNLOAD_BYTES,
                      max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
                      max_compression_ratio: float = MAX_COMPRESSION_RATIO) -> list[str]:
    """Downloads (or takes `archive`), verifies and unpacks the datasets; returns their names.

    sha256 (else PINNED_SHA256) must match when given; the observed digest is
    written to `<data_dir>/.download.json` either way.
    """
    clashes = existing_datasets(data_dir)
    if clashes and not force:
        raise UserError(f"{data_dir} already holds {', '.join(clashes)}; pass --force to replace them")
    expected = (sha256 or PINNED_SHA256 or "").lower() or None
    os.makedirs(data_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=data_dir) as tmp:
        if archive is None:
            archive_path = os.path.join(tmp, "datasets.zip")
            observed = fetch(url, archive_path, timeout=timeout, deadline=deadline, max_bytes=max_download_bytes)
        else:
            archive_path, observed = archive, _sha256_file(archive)
        if expected and observed != expected:
            raise UserError(f"{archive or url}: sha256 {observed} does not match the expected {expected}; "
                            "the archive changed or is corrupt, nothing was unpacked")
        names = unpack(archive_path, data_dir, force=force, max_unpacked_bytes=max_unpacked_bytes,
                       max_compression_ratio=max_compression_ratio)
    manifest = {
        "source": archive or url, "sha256": observed, "verified": expected is not None, "datasets": names,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_atomically(os.path.join(data_dir, MANIFEST), json.dumps(manifest, indent=1))
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distill data download", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None, help="where to unpack (default: $DISTILL_DATA_DIR, "
                        "else ~/.cache/distill/data)")
    parser.add_argument("--url", default=DATASETS_URL, help="archive URL (default: the paper's datasets.zip)")
    parser.add_argument("--archive", default=None, help="unpack this local datasets.zip instead of downloading")
    parser.add_argument("--sha256", default=None, help="expected sha256 of the archive (overrides the pinned value)")
    parser.add_argument("--force", action="store_true", help="replace dataset folders that already exist")
    parser.add_argument("--timeout", type=float, default=60.0, help="network timeout per read, in seconds")
    parser.add_argument("--deadline", type=float, default=1800.0, help="limit for the whole download, in seconds")
    parser.add_argument("--max-download-bytes", type=int, default=MAX_DOWNLOAD_BYTES)
    parser.add_argument("--max-unpacked-bytes", type=int, default=MAX_UNPACKED_BYTES)
    parser.add_argument("--max-compression-ratio", type=float, default=MAX_COMPRESSION_RATIO,
                        help="refuse members that expand more than this (zip bombs)")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or default_data_dir()
    names = download_datasets(data_dir, url=args.url, sha256=args.sha256, archive=args.archive,
                              force=args.force, timeout=args.timeout, deadline=args.deadline,
                              max_download_bytes=args.max_download_bytes, max_unpacked_bytes=args.max_unpacked_bytes,
                              max_compression_ratio=args.max_compression_ratio)
    with open(os.path.join(data_dir, MANIFEST), encoding="utf-8") as handle:
        manifest = json.load(handle)
    status = "verified" if manifest["verified"] else "UNVERIFIED (no pinned checksum; pass --sha256 to check)"
    print(f"unpacked {', '.join(names)} into {data_dir}; sha256 {manifest['sha256']} {status}")
    print(f"use it with: export DISTILL_DATA_DIR={os.path.abspath(data_dir)}")
    return 0


if __name__ == "__main__":
    from distill import cli  # One-line `error: ...` for a UserError, as under `distill`.

    sys.exit(cli.main(["data", "download", *sys.argv[1:]]))
