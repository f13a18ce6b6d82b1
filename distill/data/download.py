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
import sys
import tempfile
import zipfile

from distill.errors import UserError

DATASETS_URL = "https://github.com/google-research/distilling-step-by-step/raw/main/datasets.zip"
PINNED_SHA256: str | None = None
PAPER_DATASETS = ("anli1", "cqa", "esnli", "svamp")
MANIFEST = ".download.json"
_SKIPPED_PREFIXES = ("__MACOSX/",)


def default_data_dir() -> str:
    """$DISTILL_DATA_DIR, else a per-user cache folder (where quickstart downloads to)."""
    if os.environ.get("DISTILL_DATA_DIR"):
        return os.environ["DISTILL_DATA_DIR"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "distill", "data")


def existing_datasets(data_dir: str) -> list[str]:
    """Paper datasets that already have a folder in data_dir."""
    return [name for name in PAPER_DATASETS if os.path.isdir(os.path.join(data_dir, name))]


def fetch(url: str, dest: str, *, timeout: float = 60.0) -> str:
    """Streams url into dest; returns its sha256. Network failures become one-line UserErrors."""
    import httpx

    digest = hashlib.sha256()
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=timeout) as response:
            if response.status_code != 200:
                raise UserError(f"{url}: HTTP {response.status_code}; check the URL (--url) or download "
                                "datasets.zip by hand and pass --archive PATH")
            with open(dest, "wb") as handle:
                for chunk in response.iter_bytes(1 << 20):
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
        parts = name.split("/")
        if name.startswith("/") or ".." in parts or "\\" in name:
            raise UserError(f"{source}: unsafe member path {name!r}; refusing to unpack this archive")
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


def unpack(archive_path: str, data_dir: str, *, force: bool = False) -> list[str]:
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
        clashes = [name for name in groups if os.path.exists(os.path.join(data_dir, name))]
        if clashes and not force:
            raise UserError(f"{data_dir} already holds {', '.join(sorted(clashes))}; pass --force to replace them")
        os.makedirs(data_dir, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".download-", dir=data_dir)
        try:
            for dataset, members in groups.items():
                for info in members:
                    target = os.path.join(staging, dataset, _relative(info.filename, dataset))
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    with archive.open(info) as source, open(target, "wb") as sink:
                        shutil.copyfileobj(source, sink)
            for dataset in sorted(groups):
                final = os.path.join(data_dir, dataset)
                retired = None
                if os.path.exists(final):
                    retired = os.path.join(staging, f"{dataset}.replaced")
                    os.replace(final, retired)
                os.replace(os.path.join(staging, dataset), final)
                if retired:
                    shutil.rmtree(retired)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return sorted(groups)


def download_datasets(data_dir: str, *, url: str = DATASETS_URL, sha256: str | None = None,
                      archive: str | None = None, force: bool = False, timeout: float = 60.0) -> list[str]:
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
            observed = fetch(url, archive_path, timeout=timeout)
        else:
            archive_path, observed = archive, _sha256_file(archive)
        if expected and observed != expected:
            raise UserError(f"{archive or url}: sha256 {observed} does not match the expected {expected}; "
                            "the archive changed or is corrupt, nothing was unpacked")
        names = unpack(archive_path, data_dir, force=force)
    manifest = {
        "source": archive or url, "sha256": observed, "verified": expected is not None, "datasets": names,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    tmp_manifest = os.path.join(data_dir, MANIFEST + ".tmp")
    with open(tmp_manifest, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1)
    os.replace(tmp_manifest, os.path.join(data_dir, MANIFEST))
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distill data download", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None, help="where to unpack (default: $DISTILL_DATA_DIR, "
                        "else ~/.cache/distill/data)")
    parser.add_argument("--url", default=DATASETS_URL, help="archive URL (default: the paper's datasets.zip)")
    parser.add_argument("--archive", default=None, help="unpack this local datasets.zip instead of downloading")
    parser.add_argument("--sha256", default=None, help="expected sha256 of the archive (overrides the pinned value)")
    parser.add_argument("--force", action="store_true", help="replace dataset folders that already exist")
    parser.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or default_data_dir()
    names = download_datasets(data_dir, url=args.url, sha256=args.sha256, archive=args.archive,
                              force=args.force, timeout=args.timeout)
    with open(os.path.join(data_dir, MANIFEST), encoding="utf-8") as handle:
        manifest = json.load(handle)
    status = "verified" if manifest["verified"] else "UNVERIFIED (no pinned checksum; pass --sha256 to check)"
    print(f"unpacked {', '.join(names)} into {data_dir}; sha256 {manifest['sha256']} {status}")
    print(f"use it with: export DISTILL_DATA_DIR={os.path.abspath(data_dir)}")
    return 0


if __name__ == "__main__":
    from distill import cli  # One-line `error: ...` for a UserError, as under `distill`.

    sys.exit(cli.main(["data", "download", *sys.argv[1:]]))
