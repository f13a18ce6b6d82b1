#!/usr/bin/env bash
# Fetch and unpack the paper's released datasets.zip (a thin wrapper over
# `distill data download`; all flags pass through, e.g. --data-dir DIR,
# --sha256 HEX, --archive datasets.zip, --force). Uses $PYTHON, else python3.
set -euo pipefail
exec "${PYTHON:-python3}" -m distill.data.download "$@"
