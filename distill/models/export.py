"""`distill export --checkpoint CKPT --out DIR`: any checkpoint -> a Hugging Face T5 directory.

CKPT is one of
  - a Hugging Face T5 directory (config.json + weights): re-exported, e.g.
    to change the parameter dtype (a round trip otherwise);
  - a training model dir written by `distill train` (run.json +
    checkpoints/<step>): its latest finished step;
  - one step's checkpoint, `<model_dir>/checkpoints/<step>`.
DIR receives config.json (the task prefixes in its `task_specific_params`),
model.safetensors and the tokenizer (the HF
directory's tokenizer files, or the run's SentencePiece model as
spiece.model), loadable with `T5ForConditionalGeneration.from_pretrained`.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
from typing import TYPE_CHECKING

from distill.errors import UserError
from distill.models.t5 import DTYPES

if TYPE_CHECKING:
    from distill.run_dir import Trained


def export(checkpoint: str, out: str, *, overwrite: bool = False, dtype: str | None = None) -> pathlib.Path:
    """Write the HF directory for `checkpoint` to `out` (see the module docstring); returns out."""
    import jax

    from distill.models.hf_checkpoints import read_hf_config, save_hf_checkpoint
    from distill.run_dir import is_hf_dir, load_trained

    source = pathlib.Path(checkpoint)
    target = pathlib.Path(out)
    if not source.exists():
        raise UserError(f"--checkpoint {checkpoint} does not exist")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        if not overwrite:
            raise UserError(f"--out {out} exists and is not empty; pass --overwrite to replace it")
        if target.resolve() == source.resolve() or source.resolve().is_relative_to(target.resolve()):
            raise UserError(f"--out {out} holds the checkpoint being exported; choose another directory")
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"--dtype {dtype} is not supported; use one of {list(DTYPES)}")

    hf_source = is_hf_dir(str(source))
    if hf_source and dtype is None:  # Keep the checkpoint's own dtype (transformers writes "dtype" or "torch_dtype").
        hf_config = read_hf_config(source)
        stored = hf_config.get("dtype") or hf_config.get("torch_dtype")
        dtype = stored if stored in DTYPES else None
    trained = load_trained(str(source), param_dtype=dtype if hf_source else None)
    config, params = trained.config, trained.params
    if dtype is not None and dtype != config.param_dtype:
        params = jax.tree.map(lambda x: x.astype(dtype), params)
        config = config.replace(param_dtype=dtype)
    tokenizer: pathlib.Path | None = source if hf_source else None  # an HF folder's files are copied as they are
    if not hf_source and trained.tokenizer_path is not None:
        tokenizer = pathlib.Path(trained.tokenizer_path)
        _check_tokenizer(trained)
    if tokenizer is None:
        print(f"warning: no vocabulary found for {checkpoint}; {out} will have no spiece.model", file=sys.stderr)
    save_hf_checkpoint(config, params, target, tokenizer_dir=tokenizer, task_prefixes=trained.task_prefixes)
    return target


def _check_tokenizer(trained: "Trained") -> None:
    """Refuses a run's vocabulary with more pieces than the model has rows; warns on an unreadable one."""
    from distill.vocab import check_fits, load_tokenizer

    try:
        pieces = load_tokenizer(trained.tokenizer_path).get_piece_size()
    except UserError as err:
        print(f"warning: {err}; copied as it is", file=sys.stderr)
        return
    check_fits(pieces, trained.config.vocab_size, trained.tokenizer_path, trained.source)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="distill export", description="Export a checkpoint as a Hugging Face T5 directory."
    )
    parser.add_argument("--checkpoint", required=True,
                        help="HF T5 directory, training model dir (latest step) or <model_dir>/checkpoints/<step>")
    parser.add_argument("--out", required=True, help="directory to write (config.json, model.safetensors, tokenizer)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out when it already has files")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="parameter dtype of the exported weights (default: the checkpoint's)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        target = export(args.checkpoint, args.out, overwrite=args.overwrite, dtype=args.dtype)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {target} (load with transformers.T5ForConditionalGeneration.from_pretrained)")
    return 0


if __name__ == "__main__":
    from distill import cli

    sys.exit(cli.main(["export", *sys.argv[1:]]))
