"""The paper's loss under upstream T5X's `t5x.train` (DESIGN.md sections 1 and 4).

T5X is optional: importing this module imports neither t5x nor seqio. The
two gin-configurable names are built on first lookup (a module
`__getattr__`, PEP 562), which imports t5x then; gin_configs/t5x/finetune_distill.gin
references them as

    from distill import t5x_model
    MODEL = @t5x_model.StepByStepModel()
    train_script.train.trainer_cls = @t5x_model.StepByStepTrainer

`StepByStepModel` is T5X's `EncoderDecoderModel` with our feature converter
(`decoder_task_ids` rides through packing and batching; T5X's partitioner
shards it on the data axis like every [batch, length] feature) and a
`loss_fn` of alpha * label-task mean CE + (1 - alpha) * rationale-task mean
CE (distill/losses.py). `predict_batch` and `score_batch` are T5X's own.

Why a trainer too: T5X's trainer (t5x/trainer.py,
`accumulate_grads_microbatched`) cuts the batch into `num_microbatches`
slices and *sums* their losses and gradients. The loss is linear in the
per-task CE sums but not in the per-task token counts that divide them, so
every slice must divide by the counts of the whole global batch.
`StepByStepTrainer` computes them inside the jitted train step, from the
global batch before it is sliced, and hands them to every slice as the batch
feature `TOKEN_COUNTS_FEATURE`; `loss_fn` divides by them. Evaluation
(`eval_fn`, no slicing) counts the batch it gets. Training without that
feature is refused, so a plain `trainer.Trainer` cannot silently use
per-slice counts.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from distill import losses

if TYPE_CHECKING:
    import jax

# [batch, 2] float32, every row (global label tokens, global rationale tokens).
TOKEN_COUNTS_FEATURE = "decoder_task_token_counts"
_LAZY_NAMES = ("StepByStepModel", "StepByStepTrainer")


def with_global_token_counts(batch: Mapping[str, "jax.Array"]) -> dict[str, "jax.Array"]:
    """`batch` plus TOKEN_COUNTS_FEATURE: the per-task target-token counts of all of it, on every row."""
    import jax.numpy as jnp

    counts = losses.task_token_counts(batch)
    row = jnp.stack([counts["label_tokens"], counts["rationale_tokens"]])
    rows = batch["decoder_target_tokens"].shape[0]
    return {**batch, TOKEN_COUNTS_FEATURE: jnp.broadcast_to(row, (rows, 2))}


def global_token_counts(batch: Mapping[str, "jax.Array"]) -> dict[str, "jax.Array"]:
    """The denominators of the loss: TOKEN_COUNTS_FEATURE when present, else the batch's own counts."""
    if TOKEN_COUNTS_FEATURE not in batch:
        return losses.task_token_counts(batch)
    counts = batch[TOKEN_COUNTS_FEATURE][0]
    return {"label_tokens": counts[0], "rationale_tokens": counts[1]}


def __getattr__(name: str) -> Any:
    if name in _LAZY_NAMES:
        return _build()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _build() -> dict[str, type]:
    """Create the T5X subclasses (imports t5x, clu and seqio); cached, so each class exists once."""
    try:
        from t5x import decoding, trainer
        from t5x import metrics as t5x_metrics
        from t5x import models
    except ImportError as err:
        raise ImportError(f"distill.t5x_model needs upstream T5X on the Python path ({err}); "
                          "see the README's 'Upstream T5X' section") from err
    import flax
    import jax.numpy as jnp
    from clu import metrics as clu_metrics

    from distill.errors import UserError
    from distill.feature_converters import StepByStepFeatureConverter

    @flax.struct.dataclass
    class TaskMean(clu_metrics.Average):
        """Mean CE over one task's tokens; 0 (not NaN) while the task has had no tokens, e.g. alpha = 1 runs."""

        def compute(self) -> jnp.ndarray:
            return jnp.where(self.count > 0, self.total / jnp.where(self.count > 0, self.count, 1), 0.0)

    class StepByStepModel(models.EncoderDecoderModel):
        """EncoderDecoderModel whose loss is alpha * label mean CE + (1 - alpha) * rationale mean CE.

        Same constructor as EncoderDecoderModel (z_loss and label_smoothing
        as T5X applies them) plus `alpha`; no `loss_normalizing_factor` (each
        task term is a mean already) and no `feature_converter_cls` (ours).
        """

        FEATURE_CONVERTER_CLS = StepByStepFeatureConverter

        def __init__(
            self,
            module: Any,
            input_vocabulary: Any,
            output_vocabulary: Any,
            optimizer_def: Any,
            decode_fn: Any = decoding.beam_search,
            label_smoothing: float = 0.0,
            z_loss: float = 0.0,
            alpha: float = 0.5,
            default_decoder_params: Any = None,
        ):
            if not 0.0 <= alpha <= 1.0:
                raise UserError(f"StepByStepModel.alpha = {alpha!r} must be in [0, 1]")
            self._alpha = float(alpha)
            super().__init__(
                module=module, input_vocabulary=input_vocabulary, output_vocabulary=output_vocabulary,
                optimizer_def=optimizer_def, decode_fn=decode_fn, feature_converter_cls=StepByStepFeatureConverter,
                label_smoothing=label_smoothing, z_loss=z_loss, loss_normalizing_factor=None,
                default_decoder_params=default_decoder_params,
            )

        @property
        def alpha(self) -> float:
            return self._alpha

        def loss_fn(self, params: Any, batch: Mapping[str, jnp.ndarray], dropout_rng: Any) -> tuple[jnp.ndarray, dict]:
            """(loss, T5X's metrics + label_loss, rationale_loss, label_tokens, rationale_tokens)."""
            if dropout_rng is not None and TOKEN_COUNTS_FEATURE not in batch:
                raise ValueError(
                    f"StepByStepModel trains only with the global per-task token counts ({TOKEN_COUNTS_FEATURE}); "
                    "set train.trainer_cls = @t5x_model.StepByStepTrainer (gin_configs/t5x/finetune_distill.gin)"
                )
            logits = self._compute_logits(params, batch, dropout_rng)
            sums = losses.loss_sums(logits, batch, label_smoothing=self._label_smoothing, z_loss=self._z_loss)
            counts = global_token_counts(batch)
            loss, _ = losses.loss_from_sums(sums, alpha=self._alpha, token_counts=counts)
            z_only = {**sums, "label_ce": jnp.zeros(()), "rationale_ce": jnp.zeros(())}
            z_term, _ = losses.loss_from_sums(z_only, alpha=self._alpha, token_counts=counts)
            segment_ids = {k[: -len("_segment_ids")]: v for k, v in batch.items() if k.endswith("_segment_ids")}
            if not segment_ids:
                segment_ids = {k: batch[k] != 0 for k in ("encoder_input_tokens", "decoder_target_tokens")}
            metrics = self._compute_metrics(
                logits=logits, targets=batch["decoder_target_tokens"], mask=batch["decoder_loss_weights"],
                loss=loss, z_loss=z_term, segment_ids=segment_ids,
            )
            metrics.update({
                "label_loss": TaskMean(total=sums["label_ce"], count=sums["label_tokens"]),
                "rationale_loss": TaskMean(total=sums["rationale_ce"], count=sums["rationale_tokens"]),
                "label_tokens": t5x_metrics.AveragePerStep(total=sums["label_tokens"]),
                "rationale_tokens": t5x_metrics.AveragePerStep(total=sums["rationale_tokens"]),
            })
            return loss, metrics

    class StepByStepTrainer(trainer.Trainer):
        """T5X's Trainer whose train step adds the global batch's per-task token counts before microbatching."""

        @trainer.cached_property
        def _partitioned_train_step(self) -> Any:
            def train_step(train_state: Any, batch: Mapping[str, jnp.ndarray]) -> Any:
                return trainer.train_with_lr(
                    train_state,
                    with_global_token_counts(batch),
                    learning_rate=self._learning_rate_fn(train_state.step),
                    dropout_rng=self._get_step_rng(train_state.step),
                    model=self._model,
                    num_microbatches=self._num_microbatches,
                    weight_metrics_computer=self._weight_metrics_computer,
                    data_partition_spec=self._partitioner.data_partition_spec,
                )

            return self._partitioner.partition(
                train_step,
                in_axis_resources=(self._train_state_axes, self._partitioner.data_partition_spec),
                out_axis_resources=(self._train_state_axes, None),
                donate_argnums=(0,),
            )

    built = {"StepByStepModel": StepByStepModel, "StepByStepTrainer": StepByStepTrainer}
    for name, cls in built.items():  # Picklable and readable in logs as distill.t5x_model.<name>.
        cls.__module__, cls.__qualname__ = __name__, name
    return built
