"""scripts/launch_tpu_vm.sh: argument checks, --dry-run, and the real command path run against a fake gcloud.

The fake gcloud executes `tpu-vm ssh --command CMD` locally with HOME in tmp_path
and copies `tpu-vm scp` files there, and a fake python3 records its argv, so
the test checks the exact argv that `python3 -m distill.train` would get on a
worker after both layers of shell quoting.
"""
import os
import shlex
import subprocess

import pytest

GIN_FILE = "runs/train.gin"
ARGS = ["--name", "my-tpu", "--zone", "us-central2-b", "--gin_file", GIN_FILE,
        "--model-dir", "gs://bucket/runs/sbs", "--data-dir", "gs://bucket/data",
        "--gin", "TRAIN_STEPS=100", "--gin", "MIXTURE_OR_TASK_NAME=svamp_step_by_step_gt",
        "--gin", "NOTE=it's a [test]"]

FAKE_GCLOUD = r"""#!/usr/bin/env bash
echo "$*" >> "$FAKE_ROOT/gcloud.log"
case "$4" in
  scp) cp "$5" "$FAKE_ROOT/home/${6#*:}" ;;
  ssh) while [[ "$1" != --command ]]; do shift; done
       (cd "$FAKE_ROOT/home" && HOME="$FAKE_ROOT/home" bash -c "$2") ;;
esac
"""
FAKE_PYTHON = r"""#!/usr/bin/env bash
{ for arg in "$@"; do printf '%s\x1f' "$arg"; done; printf '\n'; } >> "$FAKE_ROOT/python.log"
"""


def _launch(repo_root, tmp_path, *args):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (tmp_path / "home").mkdir(exist_ok=True)
    for name, text in (("gcloud", FAKE_GCLOUD), ("python3", FAKE_PYTHON)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_ROOT=str(tmp_path), TMPDIR=str(tmp_path))
    return subprocess.run(["bash", str(repo_root / "scripts" / "launch_tpu_vm.sh"), *args],
                          capture_output=True, text=True, env=env, timeout=60)


def _python_calls(tmp_path):
    lines = (tmp_path / "python.log").read_text().splitlines()
    return [line.split("\x1f")[:-1] for line in lines]


def test_dry_run_prints_commands_for_every_worker_and_runs_nothing(repo_root, tmp_path):
    result = _launch(repo_root, tmp_path, *ARGS, "--dry-run")
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line) for line in result.stdout.splitlines()]
    assert [c[:5] for c in commands[1:]] == [["gcloud", "compute", "tpus", "tpu-vm", verb]
                                             for verb in ("scp", "ssh", "ssh")]
    for command in commands[1:]:
        assert "--worker=all" in command and command[command.index("--zone") + 1] == "us-central2-b"
    train = shlex.split(commands[-1][commands[-1].index("--command") + 1])
    assert train[:6] == ["cd", "~/distill", "&&", "python3", "-m", "distill.train"]
    assert not (tmp_path / "gcloud.log").exists() and not (tmp_path / "python.log").exists()


def test_launch_installs_then_trains_with_exact_gin_flags(repo_root, tmp_path):
    result = _launch(repo_root, tmp_path, *ARGS)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "home" / "distill" / "setup.py").exists()  # The checkout reached the worker.
    install, train = _python_calls(tmp_path)
    assert install == ["-m", "pip", "install", "-q", "-e", f"{tmp_path}/home/distill[tpu]"]
    assert train == ["-m", "distill.train", f"--gin_file={GIN_FILE}", '--gin.MODEL_DIR="gs://bucket/runs/sbs"',
                     '--gin.DATA_DIR="gs://bucket/data"', "--gin.TRAIN_STEPS=100",
                     '--gin.MIXTURE_OR_TASK_NAME="svamp_step_by_step_gt"', '--gin.NOTE="it\'s a [test]"']
    assert (tmp_path / "gcloud.log").read_text().count("--worker=all") == 3


def test_package_spec_skips_the_copy_and_background_uses_nohup(repo_root, tmp_path):
    result = _launch(repo_root, tmp_path, *ARGS, "--package", "distill[tpu]==0.1.0", "--background", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and "pip install -q distill\\[tpu\\]==0.1.0" in lines[0]
    assert "nohup python3 -m distill.train" in lines[1] and "~/distill_train.log 2>&1 &" in lines[1]


@pytest.mark.parametrize("change, message", [
    ({"--name": None}, "--name is required"),
    ({"--name": "My_TPU"}, "is not a TPU VM name"),
    ({"--zone": "central"}, "does not look like a zone"),
    ({"--gin_file": "experiments/nope.gin"}, "is not under gin_configs/"),
    ({"--model-dir": "/local/dir"}, "--model-dir must be a gs:// path"),
    ({"--data-dir": None}, "--data-dir must be a gs:// path"),
    ({"--gin": "TRAIN_STEPS"}, "is not MACRO=VALUE"),
    ({"--bogus": "1"}, "unknown argument '--bogus'"),
])
def test_bad_arguments_are_one_line_errors(repo_root, tmp_path, change, message):
    args = list(ARGS[:10])  # Without the --gin overrides.
    for flag, value in change.items():
        if flag in args:
            index = args.index(flag)
            del args[index:index + 2]
        if value is not None:
            args += [flag, value]
    result = _launch(repo_root, tmp_path, *args, "--dry-run")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr and result.stderr.count("\n") == 1
    assert result.stdout == ""
