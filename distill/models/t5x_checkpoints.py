"""T5X checkpoints -> our T5Config and Flax params, without importing t5x.

What `t5x.train` writes (orbax; what distill/t5x_model.py trains):

    <model_dir>/config.gin                   the operative gin config (network.T5Config, vocabulary)
    <model_dir>/checkpoint_<N>/state/        an orbax PyTree: {"target": params, "state": optimizer state}

The params of T5X's T5 (`t5x.examples.t5.network`) carry our names
(distill/models/t5.py) plus a trailing `kernel` on every dense weight
(`encoder/layers_0/attention/query/kernel` is our `.../attention/query`),
in the same [in, out] layout, so conversion renames and checks shapes.

The T5Config comes from the shapes (vocabulary, sizes, heads, layers,
buckets, gated MLP or not, logits tied to the embedding or not) plus
`network.T5Config.mlp_activations` from config.gin, which shapes cannot
tell; without a config.gin a gated MLP is taken as gated-gelu (T5 v1.1,
Flan-T5) and an ungated one as relu (original T5). T5X's network fixes
what our config leaves open: 128 for the relative-attention max distance,
1e-6 for the norm epsilon.

Only orbax checkpoints are read: the older msgpack layout
(checkpoint_<N>/checkpoint) is refused with a UserError.
"""
from __future__ import annotations

import ast
import os
import re
from typing import Any

import numpy as np

from distill.errors import UserError
from distill.models.t5 import T5Config

CONFIG_FILE = "config.gin"
_STEP_DIR = re.compile(r"^checkpoint_(\d+)$")
_PARAMS_DIR = "state"
_NETWORK = "network.T5Config"
_VOCABULARY_BINDING = "seqio.SentencePieceVocabulary.sentencepiece_model_file"
# network.T5Config.mlp_activations -> our feed_forward_proj (T5X takes activations from flax.linen,
# whose gelu is the tanh approximation: "gated-gelu" here; an ungated T5X "gelu" has no twin).
_ACTIVATIONS = {
    ("relu",): "relu",
    ("silu",): "silu",
    ("swish",): "silu",
    ("gelu", "linear"): "gated-gelu",
    ("relu", "linear"): "gated-relu",
    ("silu", "linear"): "gated-silu",
    ("swish", "linear"): "gated-silu",
}
_DEFAULT_ACTIVATIONS = ("relu",)  # t5x.examples.t5.network.T5Config's default


def _is_step_dir(path: str) -> bool:
    return bool(_STEP_DIR.match(os.path.basename(os.path.normpath(path)))) and (
        os.path.isfile(os.path.join(path, _PARAMS_DIR, "_METADATA"))
        or os.path.isfile(os.path.join(path, "checkpoint"))
    )


def _step_dirs(model_dir: str) -> dict[int, str]:
    """{N: <model_dir>/checkpoint_N} for the finished checkpoints in model_dir."""
    if not os.path.isdir(model_dir):
        return {}
    found = {}
    for name in os.listdir(model_dir):
        match = _STEP_DIR.match(name)
        if match and _is_step_dir(os.path.join(model_dir, name)):
            found[int(match.group(1))] = os.path.join(model_dir, name)
    return found


def is_t5x_checkpoint(path: str) -> bool:
    """A T5X model dir (it holds checkpoint_<N> folders) or one checkpoint_<N> folder."""
    return os.path.isdir(path) and (_is_step_dir(path) or bool(_step_dirs(path)))


def resolve_t5x_checkpoint(path: str) -> tuple[str, int]:
    """(model dir, step): the folder's own step, or a model dir's latest; UserError if neither."""
    absolute = os.path.abspath(path)
    if _is_step_dir(absolute):
        return os.path.dirname(absolute), int(_STEP_DIR.match(os.path.basename(absolute)).group(1))
    steps = _step_dirs(absolute)
    if not steps:
        raise UserError(f"{path} is not a T5X checkpoint: expected a T5X model dir holding checkpoint_<N> folders "
                        "or one checkpoint_<N> folder")
    return absolute, max(steps)


def read_gin_bindings(model_dir: str) -> dict[str, Any]:
    """`selector.param = value` lines of <model_dir>/config.gin as Python values ({} without the file).

    Macros (`= %NAME`) resolve through the file's `NAME = value` lines;
    values that are not Python literals (configurable references) are
    skipped. T5X wraps long lines with a trailing backslash, which is
    joined; values spread over bracketed lines are skipped (none of the
    bindings read here are written that way).
    """
    file = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.isfile(file):
        return {}
    raw: dict[str, str] = {}
    with open(file, encoding="utf-8") as handle:
        text = handle.read().replace("\\\n", " ")
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z_][\w./]*)\s*=\s*(.+?)\s*$", line)
        if match:
            raw[match.group(1)] = match.group(2)
    values: dict[str, Any] = {}
    for name, value in raw.items():
        for _ in range(8):  # follow %MACRO chains
            if not value.startswith("%") or value[1:] not in raw:
                break
            value = raw[value[1:]]
        try:
            values[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            continue
    return values


def t5x_vocabulary_file(model_dir: str) -> str | None:
    """The SentencePiece file of a T5X run: config.gin's when local, else $DISTILL_VOCABULARY when local.

    $DISTILL_VOCABULARY is what distill's tasks tokenized the run's data
    with (gin_configs/t5x/finetune_distill.gin); a remote path (gs://...)
    counts as none.
    """
    candidates = [read_gin_bindings(model_dir).get(_VOCABULARY_BINDING), os.environ.get("DISTILL_VOCABULARY")]
    return next((c for c in candidates if isinstance(c, str) and os.path.isfile(c)), None)


def _read_target(step_dir: str) -> dict:
    """The "target" (params) subtree of an orbax T5X checkpoint, as numpy arrays; optimizer state is not read."""
    params_dir = os.path.join(step_dir, _PARAMS_DIR)
    if not os.path.isfile(os.path.join(params_dir, "_METADATA")):
        raise UserError(f"{step_dir} is a T5X checkpoint in the pre-orbax msgpack layout, which distill cannot read; "
                        "re-save it with a current t5x (restore and save once)")
    import jax
    import orbax.checkpoint as ocp

    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(params_dir).item_metadata.tree
    if "target" not in tree:
        raise UserError(f"{params_dir} holds no 'target' (params) tree; is it a checkpoint written by t5x.train?")
    target = tree["target"]
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    restored = checkpointer.restore(params_dir, args=ocp.args.PyTreeRestore(
        item={"target": target}, restore_args={"target": restore_args}, partial_restore=True))
    return restored["target"]


def _to_ours(tree: dict) -> dict:
    """Drop T5X's trailing `kernel` level: {"query": {"kernel": w}} -> {"query": w}."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out[key] = value["kernel"] if set(value) == {"kernel"} else _to_ours(value)
        else:
            out[key] = np.asarray(value)
    return out


def _layer_count(stack: dict, where: str) -> int:
    indices = sorted(int(k[len("layers_"):]) for k in stack if re.fullmatch(r"layers_\d+", k))
    if not indices or indices != list(range(len(indices))):
        raise UserError(f"{where}: layers {indices} are not layers_0..layers_<n-1>; not a t5x.examples.t5 network")
    return len(indices)


def config_from_t5x(params: dict, bindings: dict[str, Any], where: str) -> T5Config:
    """T5Config for converted params (see the module docstring for what comes from where)."""
    try:
        vocab_size, d_model = params["token_embedder"]["embedding"].shape
        num_heads, buckets = params["encoder"]["relpos_bias"]["rel_embedding"].shape
        layer = params["encoder"]["layers_0"]
        joined = layer["attention"]["query"].shape[1]
        mlp = layer["mlp"]
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{where}: parameter {err} is missing or misshapen; only t5x.examples.t5.network "
                        "checkpoints (T5 v1.1, Flan-T5, original T5) can be converted") from None
    gated = "wi_0" in mlp
    if set(mlp) - {"wi", "wi_0", "wi_1", "wo"}:
        raise UserError(f"{where}: MLP weights {sorted(mlp)}: only one or two input projections are supported "
                        f"({_NETWORK}.mlp_activations of length 1 or 2)")
    tied = "logits_dense" not in params["decoder"]
    activations = bindings.get(f"{_NETWORK}.mlp_activations")
    if activations is None and not bindings:  # no config.gin: what the public checkpoints use
        activations = ("gelu", "linear") if gated else ("relu",)
    elif activations is None:  # config.gin leaves it at the network's default
        activations = _DEFAULT_ACTIVATIONS
    activations = tuple(activations)
    proj = _ACTIVATIONS.get(activations)
    if proj is None or proj.startswith("gated") != gated:
        raise UserError(f"{where}: {_NETWORK}.mlp_activations = {activations!r} with "
                        f"{'a gated' if gated else 'an ungated'} MLP cannot be represented; supported: "
                        f"{sorted(_ACTIVATIONS)}")
    via_embedding = bindings.get(f"{_NETWORK}.logits_via_embedding")
    if via_embedding is not None and bool(via_embedding) != tied:
        raise UserError(f"{where}: {_NETWORK}.logits_via_embedding = {via_embedding!r} but the checkpoint "
                        f"{'lacks' if tied else 'has'} decoder/logits_dense")
    if joined % num_heads:
        raise UserError(f"{where}: attention width {joined} is not a multiple of {num_heads} heads")
    dropout = bindings.get(f"{_NETWORK}.dropout_rate")
    return T5Config(
        vocab_size=int(vocab_size), d_model=int(d_model), d_kv=joined // num_heads,
        d_ff=int((mlp["wi_0"] if gated else mlp["wi"]).shape[1]), num_heads=int(num_heads),
        num_encoder_layers=_layer_count(params["encoder"], where),
        num_decoder_layers=_layer_count(params["decoder"], where),
        relative_attention_num_buckets=int(buckets), relative_attention_max_distance=128,
        dropout_rate=float(dropout) if isinstance(dropout, (int, float)) else 0.1,
        layer_norm_epsilon=1e-6, feed_forward_proj=proj, tie_word_embeddings=tied,
    )


def _check_tree(params: dict, expected: Any, where: str, prefix: str = "") -> None:
    """UserError naming the first parameter that is missing, extra or of another shape than `expected`."""
    if set(params) != set(expected):
        extra, missing = sorted(set(params) - set(expected)), sorted(set(expected) - set(params))
        raise UserError(f"{where}: parameters {prefix}{(extra or missing)[0]} {'unexpected' if extra else 'missing'}; "
                        "the checkpoint is not a t5x.examples.t5 network of the shape it implies")
    for key, want in expected.items():
        have = params[key]
        if isinstance(want, dict):
            if not isinstance(have, dict):
                raise UserError(f"{where}: {prefix}{key} is an array where a module is expected")
            _check_tree(have, want, where, f"{prefix}{key}/")
        elif getattr(have, "shape", None) != tuple(want.shape):
            raise UserError(f"{where}: {prefix}{key} has shape {getattr(have, 'shape', None)}, expected {want.shape}")


def load_t5x_checkpoint(path: str) -> tuple[T5Config, dict]:
    """(T5Config, params) of a T5X model dir (its latest checkpoint_<N>) or one checkpoint_<N> folder.

    params is a plain nested dict of float32 numpy arrays matching
    `unbox(init_params(config, ...))["params"]` (distill/models/t5.py).
    """
    from flax import linen as nn

    from distill.models.t5 import abstract_params

    model_dir, step = resolve_t5x_checkpoint(path)
    step_dir = os.path.join(model_dir, f"checkpoint_{step}")
    params = _to_ours(_read_target(step_dir))
    config = config_from_t5x(params, read_gin_bindings(model_dir), step_dir)
    _check_tree(params, nn.unbox(abstract_params(config))["params"], step_dir)
    return config, _as_float32(params)


def _as_float32(tree: dict) -> dict:
    """Every leaf as float32 (T5X saves float32 by default; bfloat16 saves are widened)."""
    return {k: _as_float32(v) if isinstance(v, dict) else np.asarray(v, np.float32) for k, v in tree.items()}
