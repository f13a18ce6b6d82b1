"""`distill export --checkpoint CKPT --out DIR`: any checkpoint -> a Hugging Face T5 directory.

CKPT is one of
  - a Hugging Face T5 directory (config.json + weights): re-exported, e.g.
    to change the parameter dtype (a round trip otherwise);
  - a training model dir written by `distill train` (run.json +
    checkpoints/<step>): its latest finished step;
  - one step's checkpoint, `<model_dir>/checkpoints/<step>`.
DIR receives config.json, model.safetensors and the tokenizer (the HF
directory's tokenizer files, or the run's SentencePiece model as
spiece.model), loadable with `T5ForConditionalGeneration.from_pretrained`.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

from distill.errors import UserError
from distill.models.t5 import DTYPES, T5Config


def load_training_checkpoint(path: str | pathlib.Path) -> tuple[T5Config, Any, pathlib.Path | None]:
    """(config, params, SentencePiece model path or None) of a model dir or one step's checkpoint.

    The model config and vocabulary come from the run's run.json (written by
    `distill train`); the params are restored without the optimizer state.
    """
    from flax import linen as nn

    from distill import checkpointing
    from distill.models.t5 import abstract_params
    from distill.partitioning import Partitioner

    path = pathlib.Path(path).absolute()
    if checkpointing.is_complete_step_dir(path):
        model_dir = path.parent.parent
    else:
        model_dir = path.parent if path.name == "checkpoints" else path
    run_file = model_dir / "run.json"
    if not run_file.is_file():
        raise UserError(f"{path} is neither a Hugging Face T5 directory (no config.json) nor a training model dir "
                        f"(no {run_file}); pass one of those or a <model_dir>/checkpoints/<step> folder")
    try:
        run_info = json.loads(run_file.read_text(encoding="utf-8"))
        config = T5Config(**run_info["model_config"])
    except (ValueError, KeyError, TypeError) as err:
        if isinstance(err, UserError):
            raise
        raise UserError(f"{run_file} is not a readable run file ({err}); was it written by `distill train`?") from None
    candidates = [pathlib.Path(run_info["vocabulary_path"])] if run_info.get("vocabulary_path") else []
    candidates.append(model_dir / "vocab" / "spm.model")
    vocabulary = next((c for c in candidates if c.is_file()), None)
    boxed = abstract_params(config)
    shardings = Partitioner().shardings_for(boxed)["params"]
    params = checkpointing.restore_params(str(path), nn.unbox(boxed)["params"], shardings)
    return config, params, vocabulary


def export(checkpoint: str, out: str, *, overwrite: bool = False, dtype: str | None = None) -> pathlib.Path:
    """Write the HF directory for `checkpoint` to `out` (see the module docstring); returns out."""
    import jax

    from distill.models.checkpoints import load_hf_checkpoint, read_hf_config, save_hf_checkpoint

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

    if (source / "config.json").is_file():
        if dtype is None:  # Keep the checkpoint's own dtype (transformers writes "dtype" or "torch_dtype").
            hf_config = read_hf_config(source)
            stored = hf_config.get("dtype") or hf_config.get("torch_dtype")
            dtype = stored if stored in DTYPES else None
        config, params = load_hf_checkpoint(source, param_dtype=dtype)
        tokenizer: pathlib.Path | None = source
    else:
        config, params, tokenizer = load_training_checkpoint(source)
        if dtype is not None and dtype != config.param_dtype:
            params = jax.tree.map(lambda x: x.astype(dtype), params)
            config = config.replace(param_dtype=dtype)
        if tokenizer is None:
            print(f"warning: no vocabulary found for {checkpoint}; {out} will have no spiece.model", file=sys.stderr)
    save_hf_checkpoint(config, params, target, tokenizer_dir=tokenizer)
    return target


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
    sys.exit(main())
