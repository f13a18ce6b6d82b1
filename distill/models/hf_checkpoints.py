"""Hugging Face T5 checkpoints <-> Flax parameters.

Import reads a checkpoint directory (config.json plus `model.safetensors`,
sharded `*.safetensors` with `model.safetensors.index.json`, or
`pytorch_model.bin` [sharded with an index]) tensor by tensor: each tensor
is read from the memory-mapped file, transposed into our layout, cast, and
(optionally) placed straight into its target sharding, so the host never
holds the model twice. Export streams the parameters into one safetensors
file the same way and writes a config.json that `transformers` loads as
`T5ForConditionalGeneration`.

Layout: HF Linear weights are [out, in]; our kernels are [in, out], so every
2-D tensor except the token embedding is transposed. The relative position
bias lives in block 0 of each HF stack and at stack level here.

No torch/transformers import at module import time (torch only for
`pytorch_model.bin`).
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import struct
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
from flax import linen as nn

from distill.atomic import replace_dir
from distill.errors import UserError
from distill.jsonl import parse_json
from distill.models.t5 import FEED_FORWARD_PROJ, T5Config, abstract_params
from distill.task_prefixes import TASK_PREFIXES, task_prefixes_to_hf

# Tensors an HF checkpoint may hold that this layout derives from others or does not use.
_IGNORED_SUFFIXES = ("EncDecAttention.relative_attention_bias.weight",)
TOKENIZER_FILES = ("spiece.model", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json",
                   "added_tokens.json")
_SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


# ---------------------------------------------------------------- config.json

def config_from_hf(hf_config: dict) -> T5Config:
    """T5Config for a Hugging Face T5/mT5 config.json dict.

    Original T5 (relu, tied + scaled logits), T5 v1.1 / Flan-T5 / mT5
    (gated-gelu, untied). transformers >= 5 always writes
    tie_word_embeddings=true and keeps the real choice in
    scale_decoder_outputs, so that field wins when present.
    """
    def where(field: str) -> str:
        return f"config.json field {field!r} = {hf_config.get(field)!r}"

    model_type = hf_config.get("model_type", "t5")
    if model_type not in ("t5", "mt5"):
        raise UserError(f"{where('model_type')} is not supported; only T5-family models (t5, mt5) can be loaded")
    if hf_config.get("is_encoder_decoder", True) is False:
        raise UserError(f"{where('is_encoder_decoder')}: only encoder-decoder T5 checkpoints are supported")
    if hf_config.get("is_decoder", False):
        raise UserError(f"{where('is_decoder')}: decoder-only T5 stacks are not supported")
    proj = hf_config.get("feed_forward_proj", "relu")
    if proj not in FEED_FORWARD_PROJ:
        raise UserError(f"{where('feed_forward_proj')} is not supported; use one of {sorted(FEED_FORWARD_PROJ)}")
    if "scale_decoder_outputs" in hf_config:
        tied = bool(hf_config["scale_decoder_outputs"])
    else:
        tied = bool(hf_config.get("tie_word_embeddings", True))
    eos = hf_config.get("eos_token_id", 1)
    if isinstance(eos, list):
        eos = eos[0]
    try:
        num_layers = int(hf_config.get("num_layers", 6))
        decoder_layers = hf_config.get("num_decoder_layers")
        return T5Config(
            vocab_size=int(hf_config.get("vocab_size", 32128)),
            d_model=int(hf_config.get("d_model", 512)),
            d_kv=int(hf_config.get("d_kv", 64)),
            d_ff=int(hf_config.get("d_ff", 2048)),
            num_heads=int(hf_config.get("num_heads", 8)),
            num_encoder_layers=num_layers,
            num_decoder_layers=num_layers if decoder_layers is None else int(decoder_layers),
            relative_attention_num_buckets=int(hf_config.get("relative_attention_num_buckets", 32)),
            relative_attention_max_distance=int(hf_config.get("relative_attention_max_distance", 128)),
            dropout_rate=float(hf_config.get("dropout_rate", 0.1)),
            layer_norm_epsilon=float(hf_config.get("layer_norm_epsilon", 1e-6)),
            feed_forward_proj=proj,
            tie_word_embeddings=tied,
            pad_token_id=int(hf_config.get("pad_token_id", 0) or 0),
            eos_token_id=int(eos),
            decoder_start_token_id=int(hf_config.get("decoder_start_token_id", 0) or 0),
        )
    except (TypeError, ValueError) as err:
        if isinstance(err, UserError):
            raise
        raise UserError(f"config.json has a malformed T5 field: {err}") from None


def config_to_hf(config: T5Config) -> dict:
    """The config.json dict for `config` (model_type t5, T5ForConditionalGeneration)."""
    activation, gated = FEED_FORWARD_PROJ[config.feed_forward_proj]
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "vocab_size": config.vocab_size,
        "d_model": config.d_model,
        "d_kv": config.d_kv,
        "d_ff": config.d_ff,
        "num_heads": config.num_heads,
        "num_layers": config.num_encoder_layers,
        "num_decoder_layers": config.num_decoder_layers,
        "relative_attention_num_buckets": config.relative_attention_num_buckets,
        "relative_attention_max_distance": config.relative_attention_max_distance,
        "dropout_rate": config.dropout_rate,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "initializer_factor": 1.0,
        "feed_forward_proj": config.feed_forward_proj,
        "dense_act_fn": activation,
        "is_gated_act": gated,
        "tie_word_embeddings": config.tie_word_embeddings,
        "scale_decoder_outputs": config.tie_word_embeddings,
        "is_encoder_decoder": True,
        "is_decoder": False,
        "use_cache": True,
        "pad_token_id": config.pad_token_id,
        "eos_token_id": config.eos_token_id,
        "decoder_start_token_id": config.decoder_start_token_id,
        "dtype": config.param_dtype,
    }


# ---------------------------------------------------------------- name mapping

def hf_names(config: T5Config) -> list[tuple[str, tuple[str, ...]]]:
    """(HF tensor name, our param path) for every parameter of `config`, in tree order."""
    _, gated = FEED_FORWARD_PROJ[config.feed_forward_proj]
    mlp = [("wi_0", "wi_0"), ("wi_1", "wi_1"), ("wo", "wo")] if gated else [("wi", "wi"), ("wo", "wo")]
    attention = [("q", "query"), ("k", "key"), ("v", "value"), ("o", "out")]
    names = [("shared.weight", ("token_embedder", "embedding"))]
    for stack, depth in (("encoder", config.num_encoder_layers), ("decoder", config.num_decoder_layers)):
        names.append((f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                      (stack, "relpos_bias", "rel_embedding")))
        for i in range(depth):
            hf, ours = f"{stack}.block.{i}.layer", (stack, f"layers_{i}")
            if stack == "encoder":
                sublayers = [("0", "SelfAttention", "pre_attention_layer_norm", "attention"),
                             ("1", "DenseReluDense", "pre_mlp_layer_norm", "mlp")]
            else:
                sublayers = [("0", "SelfAttention", "pre_self_attention_layer_norm", "self_attention"),
                             ("1", "EncDecAttention", "pre_cross_attention_layer_norm", "encoder_decoder_attention"),
                             ("2", "DenseReluDense", "pre_mlp_layer_norm", "mlp")]
            for index, hf_module, norm, module in sublayers:
                names.append((f"{hf}.{index}.layer_norm.weight", ours + (norm, "scale")))
                pairs = mlp if module == "mlp" else attention
                for hf_leaf, leaf in pairs:
                    names.append((f"{hf}.{index}.{hf_module}.{hf_leaf}.weight", ours + (module, leaf)))
        names.append((f"{stack}.final_layer_norm.weight", (stack, f"{stack}_norm", "scale")))
    if not config.tie_word_embeddings:
        names.append(("lm_head.weight", ("decoder", "logits_dense")))
    return names


def _to_ours(name: str, tensor: np.ndarray) -> np.ndarray:
    """HF [out, in] (and relpos [buckets, heads]) -> our [in, out] ([heads, buckets])."""
    return tensor.T if tensor.ndim == 2 and name != "shared.weight" else tensor


# Where to look when a checkpoint omits a tensor another one stands for (tied weights).
_FALLBACKS = {
    "shared.weight": ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"),
    "lm_head.weight": ("shared.weight", "encoder.embed_tokens.weight"),
}


# ---------------------------------------------------------------- reading

class _TensorSource:
    """Tensors of a checkpoint directory by name, read lazily from memory-mapped files."""

    def __init__(self, directory: pathlib.Path):
        self._handles: dict[str, Any] = {}
        self._file_of: dict[str, pathlib.Path] = {}
        self._torch = False
        for file in _weight_files(directory):
            if file.suffix == ".safetensors":
                from safetensors import SafetensorError, safe_open

                try:
                    handle = safe_open(str(file), framework="flax", device="cpu")
                except SafetensorError as err:
                    raise UserError(f"{file} is not a readable safetensors file ({err}); re-download or "
                                    "re-save the checkpoint") from None
                keys = handle.keys()
            else:
                self._torch = True
                handle = _torch_load(file)
                keys = handle.keys()
            self._handles[str(file)] = handle
            for key in keys:
                self._file_of[key] = file

    def names(self) -> set[str]:
        return set(self._file_of)

    def get(self, name: str) -> np.ndarray:
        handle = self._handles[str(self._file_of[name])]
        if self._torch:
            import torch

            tensor = handle[name]
            if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: go through float32.
                return tensor.to(torch.float32).numpy()
            return tensor.numpy()
        with jax.default_device(jax.devices("cpu")[0]):
            return np.asarray(handle.get_tensor(name))


def _torch_load(file: pathlib.Path) -> dict:
    try:
        import torch
    except ImportError:
        raise UserError(f"{file} is a PyTorch checkpoint; install torch (the `hf` extra) to read it") from None
    return torch.load(str(file), map_location="cpu", weights_only=True, mmap=True)


def _weight_files(directory: pathlib.Path) -> list[pathlib.Path]:
    """The weight files of an HF directory, preferring safetensors."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = directory / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as err:
                raise UserError(f"{index} is not a valid checkpoint index ({err}); re-save the checkpoint") from None
            files = [directory / name for name in sorted(set(weight_map.values()))]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise UserError(f"{index} lists {missing[0]}, which does not exist; the checkpoint is incomplete")
            return files
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (directory / single).is_file():
            return [directory / single]
    shards = sorted(directory.glob("*.safetensors"))
    if shards:
        return shards
    raise UserError(
        f"{directory} holds no model.safetensors, *.safetensors index or pytorch_model.bin; "
        "point --checkpoint at a Hugging Face T5 directory"
    )


def read_hf_config(path: str | os.PathLike) -> dict:
    """config.json of an HF checkpoint directory, as a dict (UserError if absent/malformed)."""
    file = pathlib.Path(path) / "config.json"
    if not file.is_file():
        raise UserError(f"{file} does not exist; expected a Hugging Face checkpoint directory")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {file} ({err})") from None
    config = parse_json(text, str(file))
    if not isinstance(config, dict):
        raise UserError(f"{file} is not a JSON object; expected a Hugging Face T5 config.json")
    return config


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def load_hf_checkpoint(
    path: str | os.PathLike, *, param_dtype: str | None = None, shardings: Any = None
) -> tuple[T5Config, dict]:
    """(T5Config, params) from an HF T5 checkpoint directory.

    params is a plain nested dict matching `unbox(init_params(config, ...))["params"]`:
    numpy arrays, or global jax.Arrays placed by `shardings` (a pytree of
    NamedSharding with the same structure) tensor by tensor. param_dtype
    overrides the parameter dtype (default float32, whatever the file holds).
    """
    directory = pathlib.Path(path)
    if not directory.is_dir():
        raise UserError(f"checkpoint directory {directory} does not exist")
    config = config_from_hf(read_hf_config(directory))
    if param_dtype is not None:
        config = config.replace(param_dtype=param_dtype)
    expected = nn.unbox(abstract_params(config))["params"]
    source = _TensorSource(directory)
    available = source.names()
    used: set[str] = set()
    params: dict = {}
    for name, target in hf_names(config):
        found = next((n for n in (name,) + _FALLBACKS.get(name, ()) if n in available), None)
        if found is None:
            raise UserError(f"{directory}: tensor {name!r} is missing; the weights do not match config.json")
        used.add(found)
        tensor = _to_ours(name, source.get(found)).astype(config.weight_dtype)
        want = _get(expected, target).shape
        if tensor.shape != want:
            raise UserError(
                f"{directory}: tensor {found!r} has shape {tuple(tensor.shape)} but config.json implies {want}"
            )
        if shardings is not None:
            sharding = _get(shardings, target)
            host = tensor
            tensor = jax.make_array_from_callback(host.shape, sharding, lambda index, h=host: h[index])
        _set(params, target, tensor)
        del tensor
    unused = sorted(
        n for n in available - used
        if not n.endswith(_IGNORED_SUFFIXES) and n not in ("encoder.embed_tokens.weight",
                                                           "decoder.embed_tokens.weight", "lm_head.weight")
    )
    if unused:
        raise UserError(
            f"{directory}: tensors {unused[:3]} do not fit config.json (layer counts or architecture differ)"
        )
    return config, params


# ---------------------------------------------------------------- writing

def _export_tensors(config: T5Config, params: dict) -> Iterator[tuple[str, Any, bool]]:
    """(HF name, our array, transpose?) in file order, including the tied copies HF loaders expect."""
    for name, target in hf_names(config):
        leaf = _get(params, target)
        yield name, leaf, name != "shared.weight" and leaf.ndim == 2
        if name == "shared.weight":
            yield "encoder.embed_tokens.weight", leaf, False
            yield "decoder.embed_tokens.weight", leaf, False
            if config.tie_word_embeddings:
                yield "lm_head.weight", leaf, False


def write_safetensors(path: pathlib.Path, tensors: list[tuple[str, Any, bool]]) -> None:
    """Stream tensors into one safetensors file, one tensor in host memory at a time.

    The format is an 8-byte little-endian header size, a JSON header of
    {name: {dtype, shape, data_offsets}} padded to 8 bytes, then the raw
    little-endian bytes back to back in header order.
    """
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, leaf, transpose in tensors:
        dtype = np.dtype(leaf.dtype)
        if dtype.name not in _SAFETENSORS_DTYPES:
            raise UserError(f"cannot export parameter {name} of dtype {dtype.name}")
        shape = list(leaf.shape[::-1]) if transpose else list(leaf.shape)
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {"dtype": _SAFETENSORS_DTYPES[dtype.name], "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(encoded)))
        out.write(encoded)
        for _, leaf, transpose in tensors:
            host = np.asarray(jax.device_get(leaf))
            host = np.ascontiguousarray(host.T if transpose else host)
            out.write(host.astype(host.dtype.newbyteorder("<"), copy=False).tobytes())


def _copy_tokenizer(tokenizer_dir: pathlib.Path, out: pathlib.Path) -> None:
    """Copy HF tokenizer files; a bare SentencePiece model becomes spiece.model + a T5Tokenizer config."""
    if tokenizer_dir.is_file() and tokenizer_dir.suffix == ".model":
        shutil.copyfile(tokenizer_dir, out / "spiece.model")
    elif tokenizer_dir.is_dir():
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).is_file():
                shutil.copyfile(tokenizer_dir / name, out / name)
        models = sorted(tokenizer_dir.glob("*.model"))
        if not (out / "spiece.model").exists() and len(models) == 1:
            shutil.copyfile(models[0], out / "spiece.model")
    else:
        raise UserError(f"tokenizer path {tokenizer_dir} is neither a directory nor a SentencePiece .model file")
    if (out / "spiece.model").exists() and not (out / "tokenizer_config.json").exists():
        # Our vocabularies have no <extra_id_*> sentinels; tell T5Tokenizer not to add any.
        (out / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "T5Tokenizer", "extra_ids": 0, "eos_token": "</s>", "unk_token": "<unk>",
             "pad_token": "<pad>"}, indent=2) + "\n")


def save_hf_checkpoint(
    config: T5Config, params: Any, out_dir: str | os.PathLike, *, tokenizer_dir: str | os.PathLike | None = None,
    task_prefixes: Mapping[str, str] = TASK_PREFIXES,
) -> None:
    """Write an HF T5ForConditionalGeneration directory: config.json, model.safetensors, tokenizer files.

    config.json carries the task prefixes the model was trained with (`task_prefixes_to_hf`).

    params: plain or boxed, with or without the {"params": ...} wrapper;
    device arrays are fetched one tensor at a time. The directory is built
    under a temporary name next to out_dir and renamed into place, so a crash
    never leaves a half-written out_dir; an existing out_dir is replaced.
    """
    params = nn.unbox(params)
    if "params" in params:
        params = params["params"]
    out = pathlib.Path(out_dir).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        write_safetensors(staging / "model.safetensors", list(_export_tensors(config, params)))
        hf_config = {**config_to_hf(config), "task_specific_params": task_prefixes_to_hf(task_prefixes)}
        (staging / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
        (staging / "generation_config.json").write_text(json.dumps({
            "decoder_start_token_id": config.decoder_start_token_id, "eos_token_id": config.eos_token_id,
            "pad_token_id": config.pad_token_id}, indent=2) + "\n")
        if tokenizer_dir is not None:
            _copy_tokenizer(pathlib.Path(tokenizer_dir), staging)
        replace_dir(str(staging), str(out))
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
