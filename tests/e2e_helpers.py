"""Helpers shared by the end-to-end tests (quickstart, sweep, report, notebook, download, launcher)."""
from __future__ import annotations

import csv
import json
import pathlib

from distill.report import RESULT_COLUMNS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_results_csv(path: pathlib.Path, rows: list[dict]) -> pathlib.Path:
    """Writes rows (dicts keyed by RESULT_COLUMNS) as a sweep's results.csv."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def png_series(path: pathlib.Path) -> dict[str, list[str]]:
    """Checks path is a decodable non-empty PNG; returns {subplot title: [series labels]} it records."""
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    with Image.open(path) as image:
        image.load()
        assert image.width > 100 and image.height > 100
        return json.loads(image.text["Description"])


def markdown_rows(text: str, section: str) -> list[list[str]]:
    """The rows (cells stripped, header row first) of the first table under `## section`."""
    lines = text.splitlines()
    start = lines.index(f"## {section}")
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        if line.startswith("|") and not line.startswith("| ---"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows
