"""Gin for the entry points: configurable names, flag parsing, friendly errors.

Imported only inside the entry points' `main` (distill/train.py, eval.py,
infer.py), the sweep and the gin-file tests: the library itself never
imports gin, so every function stays callable with plain keyword arguments.
The entry points hand their library function in (`run_entry_point(...,
entry=train, name="train")`), so this module imports none of them. Names
gin files may use:

    T5Config            distill.models.t5.T5Config (model gin files)
    make_optimizer      distill.optimizers.make_optimizer
    make_schedule       distill.optimizers.make_schedule (logged learning rate)
    Partitioner         distill.partitioning.Partitioner
    rules_2d            distill.partitioning.rules_2d (2D parameter sharding)
    train               distill.train.train                  (registered by its entry point)
    evaluate_checkpoint distill.eval.evaluate_checkpoint     (likewise)
    infer_checkpoint    distill.infer.infer_checkpoint       (likewise)

Flags follow T5X: `--gin_file` (repeatable), `--gin.NAME=VALUE` (rewritten
to `--gin_bindings='NAME = VALUE'`), `--gin_search_paths` (comma list); the
shipped gin_configs/ folder is always searched last, so
`--gin_file=experiments/svamp/step_by_step_gt_tiny.gin` works from anywhere
and `--gin_file=gin_configs/experiments/...` from the repo root.
"""
from __future__ import annotations

import logging
import os
import re
import tokenize
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gin
from absl import flags

from distill import optimizers, partitioning
from distill.errors import UserError
from distill.gin_paths import gin_configs_dir
from distill.models import t5

T5Config = gin.external_configurable(t5.T5Config, "T5Config")
make_optimizer = gin.external_configurable(optimizers.make_optimizer, "make_optimizer")
make_schedule = gin.external_configurable(optimizers.make_schedule, "make_schedule")
Partitioner = gin.external_configurable(partitioning.Partitioner, "Partitioner")
rules_2d = gin.external_configurable(partitioning.rules_2d, "rules_2d")

_registered: dict[str, Callable[..., Any]] = {}


def configurable(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """Registers an entry point's library function under `name` once; returns the gin wrapper."""
    if name not in _registered:
        _registered[name] = gin.external_configurable(fn, name)
    return _registered[name]


# ----------------------------------------------------------------------------
# Flags
# ----------------------------------------------------------------------------


def define_gin_flags(flag_values: flags.FlagValues) -> None:
    """Adds --gin_file, --gin_bindings, --gin_search_paths to a (private) FlagValues."""
    flags.DEFINE_multi_string("gin_file", [], "gin file(s), searched in --gin_search_paths and gin_configs/",
                              flag_values=flag_values)
    flags.DEFINE_multi_string("gin_bindings", [], "gin binding(s), e.g. 'TRAIN_STEPS = 100'",
                              flag_values=flag_values)
    flags.DEFINE_list("gin_search_paths", [], "comma-separated folders searched for gin files",
                      flag_values=flag_values)


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
    """`--gin.NAME=VALUE` -> `--gin_bindings=NAME = VALUE` (T5X's shorthand)."""
    out = []
    for arg in argv:
        if arg.startswith("--gin.") and "=" in arg:
            name, value = arg[len("--gin."):].split("=", 1)
            out.append(f"--gin_bindings={name} = {value}")
        elif arg.startswith("--gin."):
            raise UserError(f"{arg!r} has no value: write --gin.NAME=VALUE (strings quoted: --gin.MODEL_DIR=\"'dir'\")")
        else:
            out.append(arg)
    return out


def parse_flags(flag_values: flags.FlagValues, prog: str, argv: Sequence[str]) -> None:
    """Parses argv into flag_values; a bad flag is a UserError, not an absl traceback."""
    try:
        flag_values([prog, *rewrite_gin_args(argv)])
    except flags.Error as err:
        raise UserError(f"{prog}: {err}") from None


# ----------------------------------------------------------------------------
# Parsing gin files with one-line errors
# ----------------------------------------------------------------------------


def search_paths(extra: Sequence[str] = ()) -> list[str]:
    """The user's search paths, then gin_configs/, then its parent (for `gin_configs/...`)."""
    configs = gin_configs_dir()
    return [*extra, configs, os.path.dirname(configs)]


class _QuietSearch(logging.Filter):
    """Drops gin's "Path not found" log line for every search path it tries."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Path not found")


def parse_gin(gin_files: Sequence[str], gin_bindings: Sequence[str], extra_search_paths: Sequence[str] = (),
              *, entry_points: Mapping[str, Callable[..., Any]] | None = None, skip_unknown: bool = False) -> None:
    """Clears gin and parses the files then the bindings.

    entry_points: {gin name: library function} the files configure (e.g.
    {"train": distill.train.train}), registered before parsing.
    Any gin error (missing file, syntax error, unknown configurable or
    parameter) becomes a UserError naming the file or binding and the fix.
    """
    for name, fn in (entry_points or {}).items():
        configurable(fn, name)
    gin.clear_config()
    # Our folders go BEFORE gin's implicit '' (the working directory): gin also
    # tries every relative path as a Python package, which crashes on a
    # `runs/` output folder in the working directory (`include 'runs/train.gin'`).
    prefixes = gin.config._LOCATION_PREFIXES  # gin has no public API to order search paths
    prefixes[:] = [*dict.fromkeys([*search_paths(extra_search_paths), *prefixes])]
    quiet = _QuietSearch()
    logging.getLogger().addFilter(quiet)
    try:
        for gin_file in gin_files:
            found = _find_gin_file(gin_file, extra_search_paths)
            _parse_one(lambda: gin.parse_config_file(found, skip_unknown=skip_unknown), f"gin file {gin_file}")
        for binding in gin_bindings:
            _parse_one(lambda: gin.parse_config(binding, skip_unknown=skip_unknown), f"gin binding {binding!r}")
    finally:
        logging.getLogger().removeFilter(quiet)


def _find_gin_file(gin_file: str, extra_search_paths: Sequence[str]) -> str:
    """The absolute path of a --gin_file (working dir first, then the search paths).

    UserError naming the searched folders when it exists in none of them.
    """
    folders = ["", *search_paths(extra_search_paths)]
    for folder in folders:
        if os.path.isfile(os.path.join(folder, gin_file)):
            return os.path.abspath(os.path.join(folder, gin_file))
    shown = ", ".join(folder or "." for folder in folders)
    raise UserError(f"gin file {gin_file} not found (searched {shown}); e.g. "
                    "--gin_file=experiments/svamp/step_by_step_gt_tiny.gin")


def _parse_one(parse: Any, what: str) -> None:
    try:
        parse()
    except UserError:
        raise
    except OSError as err:
        first = str(err).splitlines()[0]
        raise UserError(f"{what}: {first} (paths are relative to --gin_search_paths or gin_configs/)") from None
    except TypeError as err:
        if "PathLike" in str(err):  # gin 0.5's way of saying an included file was not found
            raise UserError(f"{what}: a file it includes was not found in --gin_search_paths or gin_configs/") from None
        raise UserError(f"{what}: {_one_line(err)}") from None
    except (SyntaxError, ValueError, ImportError, tokenize.TokenError) as err:
        raise UserError(f"{what}: {_one_line(err)}") from None


def _one_line(err: BaseException) -> str:
    """Gin's multi-line message ('msg / In file X, line N / code') as one line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip() and line.strip() != "^"]
    return " | ".join(lines) if lines else type(err).__name__


def run_entry_point(prog: str, argv: Sequence[str] | None, entry: Callable[..., Any], *, name: str,
                    default_gin_file: str | None = None, checkpoint_flag: bool = False,
                    pass_config_text: bool = False) -> tuple[int, Any]:
    """Flags -> gin -> `entry` (registered as the configurable `name`); returns (exit code, its result).

    A UserError anywhere (flags, gin files, required macros, the run's own
    checks) is printed as one `error: ...` line and gives exit code 2.
    `--checkpoint X` (when checkpoint_flag) is shorthand for
    `--gin.CHECKPOINT_PATH="'X'"`; pass_config_text hands the parsed config
    to the entry as `config_text` (train writes it to MODEL_DIR/config.gin).
    """
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    flag_values = flags.FlagValues()
    define_gin_flags(flag_values)
    if checkpoint_flag:
        flags.DEFINE_string("checkpoint", None, "model dir (latest checkpoint) or <model_dir>/checkpoints/<step>",
                            flag_values=flag_values)
    try:
        parse_flags(flag_values, prog, argv)
        gin_files = list(flag_values.gin_file) or ([default_gin_file] if default_gin_file else [])
        if not gin_files:
            raise UserError(f"{prog}: no --gin_file given; e.g. --gin_file=experiments/svamp/step_by_step_gt_tiny.gin")
        bindings = list(flag_values.gin_bindings)
        if checkpoint_flag and flag_values.checkpoint:
            bindings.append(f"CHECKPOINT_PATH = {flag_values.checkpoint!r}")
        parse_gin(gin_files, bindings, flag_values.gin_search_paths, entry_points={name: entry})
        check_required_macros()
        kwargs = {"config_text": gin.config_str()} if pass_config_text else {}
        return 0, configurable(entry, name)(**kwargs)
    except UserError as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2, None


def check_required_macros() -> None:
    """UserError naming every macro still bound to %gin.REQUIRED after parsing.

    (Gin 0.5 passes the REQUIRED sentinel through macros silently, so the
    check must happen here, before the entry point runs.)
    """
    missing = re.findall(r"^([A-Za-z_][A-Za-z0-9_.]*) = %gin\.REQUIRED$", gin.config_str(), flags=re.MULTILINE)
    if missing:
        raise UserError(f"required gin macro(s) not set: {', '.join(missing)}; add --gin.{missing[0]}=... "
                        "or a gin file that sets them (see the opening comment of runs/*.gin)")
