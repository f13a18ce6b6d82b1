"""batch_packing.pack_batch: every sequence of the unpacked batch, once, packed; the same loss and gradients."""
import jax
import numpy as np
import optax
import pytest

from distill.batch_packing import group_rows, pack_batch
from distill.errors import UserError
from distill.models.student import StudentModel
from distill.models.t5 import init_params
from distill.partitioning import Partitioner
from distill.trainer import Trainer
from trainer_helpers import FAST_COMPILE, make_batch, tiny_config


def _unpacked(seed: int, rows: int = 16, target_length: int = 16) -> dict[str, np.ndarray]:
    """Unpacked rows of varied lengths, padded out to wide columns as seqio pads them (64 / 48);
    targets up to 16 tokens are label-like (decoder rows get grouped), 48 rationale-like."""
    batch = make_batch(seed, batch_size=rows, input_length=60, target_length=target_length)
    return {name: np.pad(value, ((0, 0), (0, (64 if name.startswith("encoder") else 48) - value.shape[1])))
            for name, value in batch.items()}


def _groups(batch: dict[str, np.ndarray]) -> list[range]:
    """Each decoder row's encoder rows: [j * G, (j + 1) * G), G = ceil(encoder rows / decoder rows)."""
    rows, decoder_rows = batch["encoder_input_tokens"].shape[0], batch["decoder_target_tokens"].shape[0]
    group = -(-rows // decoder_rows)
    return [range(j * group, min((j + 1) * group, rows)) for j in range(decoder_rows)]


def _sequences(batch: dict[str, np.ndarray]) -> list[tuple]:
    """(input, target, decoder input, loss weights, task ids) of every sequence, in any layout."""
    found = []
    for row, encoder_rows in enumerate(_groups(batch)):
        dec = batch.get("decoder_segment_ids", (batch["decoder_target_tokens"] != 0).astype(np.int32))[row]
        for encoder_row in encoder_rows:
            enc = batch.get("encoder_segment_ids", (batch["encoder_input_tokens"] != 0).astype(np.int32))[encoder_row]
            for segment in sorted(set(enc[enc > 0])):
                parts = [batch["encoder_input_tokens"][encoder_row, enc == segment]]
                parts += [batch[name][row, dec == segment] for name in (
                    "decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights", "decoder_task_ids")]
                found.append(tuple(tuple(part.tolist()) for part in parts))
    return sorted(found)


@pytest.mark.parametrize("decoder_group", [1, 2, 3])
@pytest.mark.parametrize("row_multiple", [1, 4])
def test_every_sequence_once_with_segments_and_positions(row_multiple, decoder_group):
    batch = _unpacked(5)
    packed = pack_batch(batch, row_multiple=row_multiple, decoder_group=decoder_group)
    assert _sequences(packed) == _sequences(batch)
    rows, decoder_rows = packed["encoder_input_tokens"].shape[0], packed["decoder_target_tokens"].shape[0]
    assert rows % (row_multiple * decoder_group if row_multiple > 1 else 1) == 0
    assert decoder_rows == -(-rows // decoder_group) and decoder_rows % row_multiple == 0
    assert rows < batch["encoder_input_tokens"].shape[0]
    assert packed["encoder_input_tokens"].size + packed["decoder_target_tokens"].size < 0.6 * (
        batch["encoder_input_tokens"].size + batch["decoder_target_tokens"].size)
    for side in ("encoder", "decoder"):
        segments, positions = packed[f"{side}_segment_ids"], packed[f"{side}_positions"]
        for row in range(segments.shape[0]):
            for segment in set(segments[row][segments[row] > 0]):
                span = np.flatnonzero(segments[row] == segment)
                assert np.array_equal(span, np.arange(span[0], span[0] + len(span)))  # contiguous
                assert np.array_equal(positions[row, span], np.arange(len(span)))
    for row, encoder_rows in enumerate(_groups(packed)):  # a group numbers its segments 1..k across its rows
        encoder_segments = [s for r in encoder_rows for s in packed["encoder_segment_ids"][r] if s > 0]
        decoder_segments = packed["decoder_segment_ids"][row]
        assert sorted(set(encoder_segments)) == list(range(1, len(set(encoder_segments)) + 1))
        assert set(decoder_segments[decoder_segments > 0]) == set(encoder_segments)
    assert all(v.dtype == np.int32 for v in packed.values())
    with pytest.raises(ValueError, match="packed already"):
        pack_batch(packed)


def _label_like(seed: int, rows: int = 64) -> dict[str, np.ndarray]:
    """Unpacked rows shaped like SVAMP's label task: inputs of 20-80 tokens, targets of 3-25, in 128/64 columns."""
    rng = np.random.default_rng(seed)
    batch = {name: np.zeros((rows, 128 if name.startswith("encoder") else 64), np.int32)
             for name in ("encoder_input_tokens", "decoder_target_tokens", "decoder_input_tokens",
                          "decoder_loss_weights", "decoder_task_ids")}
    for row in range(rows):
        inputs, targets = rng.integers(20, 81), rng.integers(3, 26)
        batch["encoder_input_tokens"][row, :inputs] = rng.integers(2, 64, inputs)
        batch["decoder_target_tokens"][row, :targets] = rng.integers(2, 64, targets)
        batch["decoder_input_tokens"][row, 1:targets] = batch["decoder_target_tokens"][row, :targets - 1]
        batch["decoder_loss_weights"][row, :targets] = 1
    return batch


def test_decoder_groups_balance_targets_into_fewer_positions():
    """Groups of two rows need fewer decoder positions than one row each (targets vary less over two rows)."""
    batch = _label_like(5)
    single, grouped = pack_batch(batch), pack_batch(batch, decoder_group=2)
    assert grouped["decoder_target_tokens"].size < 0.85 * single["decoder_target_tokens"].size
    long_targets = _unpacked(5, rows=64, target_length=48)  # two rows' would be wider than an encoder row
    assert pack_batch(long_targets, decoder_group=2)["decoder_target_tokens"].shape == (
        pack_batch(long_targets)["decoder_target_tokens"].shape)
    assert group_rows([5, 1, 4, 2, 3], 3) == [[0, 1], [2, 3], [4]]  # 5+1, 4+2, 3: largest first, lightest group
    assert group_rows([1, 1, 1], 1) == [[0, 1, 2]]


@pytest.mark.parametrize("decoder_group", [1, 2, 3])  # 9 rows: groups of 2, 2, 2, 2, 1 for decoder_group 2
def test_packed_batch_has_the_unpacked_loss_and_gradients(decoder_group):
    """SGD(lr=1): the parameter update is the gradient; packed and unpacked give the same one."""
    trainer = Trainer(config=tiny_config(), optimizer=optax.sgd(1.0),
                      partitioner=Partitioner(compiler_options=FAST_COMPILE), alpha=0.3)
    initial = jax.device_get(trainer.create_state().params)
    batch = _unpacked(9)
    packed = pack_batch(batch, decoder_group=decoder_group)
    assert packed["decoder_target_tokens"].shape[0] == -(-packed["encoder_input_tokens"].shape[0] // decoder_group)
    unpacked_state, unpacked = trainer.train_step(trainer.init_from_params(initial), batch)
    packed_state, packed_metrics = trainer.train_step(trainer.init_from_params(initial), packed)
    for key in ("loss", "label_loss", "rationale_loss", "label_tokens", "rationale_tokens", "grad_norm"):
        np.testing.assert_allclose(float(packed_metrics[key]), float(unpacked[key]), rtol=2e-5, err_msg=key)
    for a, b, p0 in zip(jax.tree.leaves(unpacked_state.params), jax.tree.leaves(packed_state.params),
                        jax.tree.leaves(initial), strict=True):
        grad_unpacked, grad_packed = p0 - np.asarray(a), p0 - np.asarray(b)
        np.testing.assert_allclose(grad_packed, grad_unpacked, rtol=0, atol=2e-5 * np.abs(grad_unpacked).max() + 1e-9)


def test_gradient_accumulation_refuses_grouped_decoder_rows():
    """Microbatches take strided rows, which would part a decoder row from its encoder rows."""
    trainer = Trainer(config=tiny_config(), optimizer=optax.sgd(1.0), num_microbatches=2,
                      partitioner=Partitioner(compiler_options=FAST_COMPILE))
    packed = pack_batch(_unpacked(9), row_multiple=2, decoder_group=2)
    with pytest.raises(UserError, match="num_microbatches"):
        trainer.train_step(trainer.create_state(), packed)


def test_the_model_refuses_rows_that_do_not_group():
    """5 encoder rows and 4 decoder rows: G = 2 would leave a decoder row without encoder rows."""
    config = tiny_config()
    batch = pack_batch(_unpacked(9), decoder_group=2)
    batch = {name: value[:5] if name.startswith("encoder") else value[:4] for name, value in batch.items()}
    with pytest.raises(ValueError, match="5 encoder rows do not group into 4 decoder rows"):
        StudentModel(config).logits(init_params(config, jax.random.PRNGKey(0), encoder_length=8,
                                                decoder_length=8)["params"], batch)
