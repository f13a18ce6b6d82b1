"""StudentModel: score_batch is each row's target log-likelihood, predict_batch is the compiled decoder."""
import jax
import numpy as np

from distill import predict
from distill.models.student import StudentModel
from distill.models.t5 import init_params
from flax import linen as nn
from trainer_helpers import make_batch, tiny_config

CONFIG = tiny_config(num_encoder_layers=1, num_decoder_layers=1)


def _model_and_params():
    model = StudentModel(config=CONFIG, alpha=0.3)
    params = nn.unbox(init_params(CONFIG, jax.random.PRNGKey(0), encoder_length=8, decoder_length=8))["params"]
    return model, params


def test_score_batch_is_the_target_log_likelihood_per_row():
    model, params = _model_and_params()
    batch = make_batch(0, batch_size=4, vocab_size=CONFIG.vocab_size)
    scores = np.asarray(jax.jit(model.score_batch)(params, batch))
    logits = np.asarray(model.logits(params, batch), np.float64)
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    targets = batch["decoder_target_tokens"]
    picked = np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    expected = (picked * batch["decoder_loss_weights"]).sum(-1)
    assert scores.shape == (4,)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-4)
    assert np.all(scores < 0)


def test_predict_batch_is_the_compiled_decoder():
    model, params = _model_and_params()
    tokens = np.array([[5, 6, 7, 1], [8, 1, 0, 0]], np.int32)
    ours = model.predict_batch(params, tokens, max_decode_length=5)
    np.testing.assert_array_equal(ours, predict.predict_batch(CONFIG, params, tokens, max_decode_length=5))
