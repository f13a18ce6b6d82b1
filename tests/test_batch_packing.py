"""batch_packing.pack_batch: every sequence of the unpacked batch, once, packed; the same loss and gradients."""
import jax
import numpy as np
import optax
import pytest

from distill.batch_packing import pack_batch
from distill.partitioning import Partitioner
from distill.trainer import Trainer
from trainer_helpers import FAST_COMPILE, make_batch, tiny_config


def _unpacked(seed: int, rows: int = 16) -> dict[str, np.ndarray]:
    """Unpacked rows of varied lengths, padded out to wide columns as seqio pads them (64 / 48)."""
    batch = make_batch(seed, batch_size=rows, input_length=24, target_length=16)
    return {name: np.pad(value, ((0, 0), (0, (64 if name.startswith("encoder") else 48) - value.shape[1])))
            for name, value in batch.items()}


def _sequences(batch: dict[str, np.ndarray]) -> list[tuple]:
    """(input, target, decoder input, loss weights, task ids) of every sequence, in any layout."""
    found = []
    for row in range(batch["encoder_input_tokens"].shape[0]):
        enc = batch.get("encoder_segment_ids", (batch["encoder_input_tokens"] != 0).astype(np.int32))[row]
        dec = batch.get("decoder_segment_ids", (batch["decoder_target_tokens"] != 0).astype(np.int32))[row]
        for segment in sorted(set(enc[enc > 0])):
            parts = [batch["encoder_input_tokens"][row, enc == segment]]
            parts += [batch[name][row, dec == segment] for name in ("decoder_target_tokens", "decoder_input_tokens",
                                                                    "decoder_loss_weights", "decoder_task_ids")]
            found.append(tuple(tuple(part.tolist()) for part in parts))
    return sorted(found)


@pytest.mark.parametrize("row_multiple", [1, 4])
def test_every_sequence_once_with_segments_and_positions(row_multiple):
    batch = _unpacked(5)
    packed = pack_batch(batch, row_multiple=row_multiple)
    assert _sequences(packed) == _sequences(batch)
    rows = packed["encoder_input_tokens"].shape[0]
    assert rows % row_multiple == 0 and rows < batch["encoder_input_tokens"].shape[0]
    assert packed["encoder_input_tokens"].size + packed["decoder_target_tokens"].size < 0.6 * (
        batch["encoder_input_tokens"].size + batch["decoder_target_tokens"].size)
    for side in ("encoder", "decoder"):
        segments, positions = packed[f"{side}_segment_ids"], packed[f"{side}_positions"]
        for row in range(rows):
            for segment in set(segments[row][segments[row] > 0]):
                span = np.flatnonzero(segments[row] == segment)
                assert np.array_equal(span, np.arange(span[0], span[0] + len(span)))  # contiguous
                assert np.array_equal(positions[row, span], np.arange(len(span)))
    assert all(v.dtype == np.int32 for v in packed.values())
    with pytest.raises(ValueError, match="packed already"):
        pack_batch(packed)


def test_packed_batch_has_the_unpacked_loss_and_gradients():
    """SGD(lr=1): the parameter update is the gradient; packed and unpacked give the same one."""
    trainer = Trainer(config=tiny_config(), optimizer=optax.sgd(1.0),
                      partitioner=Partitioner(compiler_options=FAST_COMPILE), alpha=0.3)
    initial = jax.device_get(trainer.create_state().params)
    batch = _unpacked(9)
    packed = pack_batch(batch)
    unpacked_state, unpacked = trainer.train_step(trainer.init_from_params(initial), batch)
    packed_state, packed_metrics = trainer.train_step(trainer.init_from_params(initial), packed)
    for key in ("loss", "label_loss", "rationale_loss", "label_tokens", "rationale_tokens", "grad_norm"):
        np.testing.assert_allclose(float(packed_metrics[key]), float(unpacked[key]), rtol=2e-5, err_msg=key)
    for a, b, p0 in zip(jax.tree.leaves(unpacked_state.params), jax.tree.leaves(packed_state.params),
                        jax.tree.leaves(initial), strict=True):
        grad_unpacked, grad_packed = p0 - np.asarray(a), p0 - np.asarray(b)
        np.testing.assert_allclose(grad_packed, grad_unpacked, rtol=0, atol=2e-5 * np.abs(grad_unpacked).max() + 1e-9)
