#!/usr/bin/env bash
# Run a distill training config on every worker of an existing TPU VM
# (a single host such as v4-8, or a multi-host pod slice such as v4-32).
#
# Every worker gets the same code and the same command (JAX's multi-host
# model: one process per host, all started together); the model dir and the
# data live on a gs:// bucket that every worker can read and write.
#
#   scripts/launch_tpu_vm.sh --name my-tpu --zone us-central2-b \
#     --gin_file experiments/svamp/step_by_step_gt.gin \
#     --model-dir gs://my-bucket/runs/svamp_sbs --data-dir gs://my-bucket/data \
#     --gin TRAIN_STEPS=10000 --gin BATCH_SIZE=64 [--dry-run]
#
# Steps: (1) copy this checkout (git archive of HEAD) to every worker and
# `pip install -e ".[tpu]"` there, or `pip install <--package SPEC>`;
# (2) start `python3 -m distill.train` on every worker with the gin files,
# MODEL_DIR, DATA_DIR and the --gin overrides (strings quoted for gin when
# they are not numbers, booleans, None, lists or already quoted).
# --dry-run prints the commands instead of running them.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: launch_tpu_vm.sh --name TPU_NAME --zone ZONE --gin_file FILE [--gin_file FILE ...]
                        --model-dir gs://BUCKET/PATH --data-dir gs://BUCKET/PATH
                        [--gin MACRO=VALUE ...] [--project PROJECT] [--package PIP_SPEC]
                        [--background] [--dry-run]
  --gin_file   a gin file, relative to gin_configs/ (e.g. experiments/svamp/step_by_step_gt.gin)
  --gin        a gin binding such as TRAIN_STEPS=10000 (repeatable)
  --package    install this pip spec on the workers instead of copying this checkout
  --background start training under nohup (log: ~/distill_train.log on each worker) and return
  --dry-run    print the commands, run nothing
USAGE
}

die() { echo "error: $*" >&2; exit 2; }

NAME="" ZONE="" PROJECT="" MODEL_DIR="" DATA_DIR="" PACKAGE="" DRY_RUN=0 BACKGROUND=0
GIN_FILES=() GIN_BINDINGS=()
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

need_value() { [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || die "$1 needs a value (see --help)"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) need_value "$@"; NAME="$2"; shift 2 ;;
    --zone) need_value "$@"; ZONE="$2"; shift 2 ;;
    --project) need_value "$@"; PROJECT="$2"; shift 2 ;;
    --model-dir) need_value "$@"; MODEL_DIR="$2"; shift 2 ;;
    --data-dir) need_value "$@"; DATA_DIR="$2"; shift 2 ;;
    --gin_file|--gin-file) need_value "$@"; GIN_FILES+=("$2"); shift 2 ;;
    --gin) need_value "$@"; GIN_BINDINGS+=("$2"); shift 2 ;;
    --package) need_value "$@"; PACKAGE="$2"; shift 2 ;;
    --background) BACKGROUND=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

# ---- validate ---------------------------------------------------------------
[[ -n "$NAME" ]] || die "--name is required: the name of an existing TPU VM (gcloud compute tpus tpu-vm list)"
[[ "$NAME" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "--name '$NAME' is not a TPU VM name (lowercase letters, digits, '-')"
[[ -n "$ZONE" ]] || die "--zone is required, e.g. --zone us-central2-b"
[[ "$ZONE" =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] || die "--zone '$ZONE' does not look like a zone such as us-central2-b"
[[ ${#GIN_FILES[@]} -gt 0 ]] || die "at least one --gin_file is required, e.g. --gin_file experiments/svamp/step_by_step_gt.gin"
for file in "${GIN_FILES[@]}"; do
  [[ -f "$REPO_ROOT/gin_configs/$file" ]] \
    || die "--gin_file '$file' is not under gin_configs/ (ls $REPO_ROOT/gin_configs/experiments)"
done
[[ "$MODEL_DIR" == gs://?* ]] || die "--model-dir must be a gs:// path every worker can write (got '${MODEL_DIR}')"
[[ "$DATA_DIR" == gs://?* ]] || die "--data-dir must be a gs:// path every worker can read (got '${DATA_DIR}')"
for binding in "${GIN_BINDINGS[@]+"${GIN_BINDINGS[@]}"}"; do
  [[ "$binding" =~ ^[A-Za-z_][A-Za-z0-9_.]*=.+$ ]] || die "--gin '$binding' is not MACRO=VALUE"
  case "${binding%%=*}" in
    MODEL_DIR|DATA_DIR) die "--gin ${binding%%=*}=... : use --model-dir/--data-dir instead" ;;
  esac
done
if [[ $DRY_RUN -eq 0 ]]; then
  command -v gcloud >/dev/null || die "gcloud not found; install the Google Cloud CLI or use --dry-run"
fi

# ---- build the commands -----------------------------------------------------
gin_value() {  # A gin literal: numbers, booleans, None, lists, refs and quoted strings as given; else a "string".
  local value="$1"
  if [[ "$value" =~ ^-?[0-9]+(\.[0-9]*)?([eE]-?[0-9]+)?$ || "$value" =~ ^(True|False|None)$ \
        || "$value" == [\[\(\{\'\"@%]* ]]; then
    printf '%s' "$value"
  else
    printf '"%s"' "$value"
  fi
}
squote() { local s="$1"; printf "'%s'" "${s//\'/\'\\\'\'}"; }  # One shell word, single-quoted.

train_args=(python3 -m distill.train)
for file in "${GIN_FILES[@]}"; do train_args+=("--gin_file=$file"); done
train_args+=("--gin.MODEL_DIR=$(gin_value "$MODEL_DIR")" "--gin.DATA_DIR=$(gin_value "$DATA_DIR")")
for binding in "${GIN_BINDINGS[@]+"${GIN_BINDINGS[@]}"}"; do
  train_args+=("--gin.${binding%%=*}=$(gin_value "${binding#*=}")")
done
train_cmd="$(printf '%q ' "${train_args[@]}")"
train_cmd="${train_cmd% }"
if [[ $BACKGROUND -eq 1 ]]; then
  train_cmd="nohup $train_cmd > ~/distill_train.log 2>&1 &"
fi

gcloud_common=(--zone "$ZONE" --worker=all)
[[ -n "$PROJECT" ]] && gcloud_common+=(--project "$PROJECT")

commands=()
if [[ -n "$PACKAGE" ]]; then
  install_cmd="python3 -m pip install -q $(printf '%q' "$PACKAGE")"
  workdir="~"
else
  archive="${TMPDIR:-/tmp}/distill-src-$NAME.tar.gz"
  commands+=("git -C $(printf '%q' "$REPO_ROOT") archive --format=tar.gz -o $(printf '%q' "$archive") HEAD")
  commands+=("gcloud compute tpus tpu-vm scp $(printf '%q' "$archive") $NAME:distill-src.tar.gz ${gcloud_common[*]}")
  install_cmd='rm -rf ~/distill && mkdir -p ~/distill && tar -xzf ~/distill-src.tar.gz -C ~/distill'
  install_cmd+=' && python3 -m pip install -q -e "$HOME/distill[tpu]"'
  workdir="~/distill"
fi
commands+=("gcloud compute tpus tpu-vm ssh $NAME ${gcloud_common[*]} --command $(squote "$install_cmd")")
commands+=("gcloud compute tpus tpu-vm ssh $NAME ${gcloud_common[*]} --command $(squote "cd $workdir && $train_cmd")")

# ---- run --------------------------------------------------------------------
for command in "${commands[@]}"; do
  if [[ $DRY_RUN -eq 1 ]]; then
    echo "$command"
  else
    echo "+ $command" >&2
    eval "$command"
  fi
done
