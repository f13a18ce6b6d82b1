"""Tiny random Hugging Face T5 checkpoints for model, checkpoint and decoding tests.

Both variants have unequal encoder/decoder depths and a non-default number
of relative position buckets, so a mix-up of stacks or buckets shows up as a
numeric mismatch. Import as `from model_helpers import ...` (pytest puts
tests/ on sys.path) or `from tests.model_helpers import ...` from the repo root.
"""
from __future__ import annotations

import pathlib

import numpy as np

VOCAB_SIZE = 64

# The two architectures the network must represent.
VARIANTS = {
    # Original T5: ReLU MLP, tied embeddings, logits scaled by d_model**-0.5.
    "t5": dict(feed_forward_proj="relu", tie_word_embeddings=True, num_layers=2, num_decoder_layers=3,
               relative_attention_num_buckets=16, relative_attention_max_distance=20),
    # T5 v1.1 / Flan-T5: gated-GELU MLP, separate lm_head.
    "t5_1_1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, num_layers=3, num_decoder_layers=2,
                   relative_attention_num_buckets=8, relative_attention_max_distance=24),
}


def hf_t5_config(variant: str, **overrides):
    """A tiny transformers.T5Config (d_model 32, 4 heads of 8, d_ff 48, vocab 64, dropout 0)."""
    import transformers

    kwargs = dict(vocab_size=VOCAB_SIZE, d_model=32, d_kv=8, d_ff=48, num_heads=4, dropout_rate=0.0,
                  decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    kwargs.update(VARIANTS[variant])
    kwargs.update(overrides)
    return transformers.T5Config(**kwargs)


def hf_t5_model(variant: str, *, seed: int = 0, **overrides):
    """A random T5ForConditionalGeneration in eval mode.

    Layer norm scales and (for v1.1) a separate lm_head are randomized too:
    transformers initializes norms to 1 and, from version 5 on, ties lm_head
    to the embedding even for v1.1 configs, either of which would hide bugs.
    """
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.T5ForConditionalGeneration(hf_t5_config(variant, **overrides))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
        if not VARIANTS[variant]["tie_word_embeddings"]:
            model.lm_head.weight = torch.nn.Parameter(0.2 * torch.randn_like(model.shared.weight))
    return model.eval()


def save_hf_t5(directory: str | pathlib.Path, variant: str, *, seed: int = 0, **save_kwargs):
    """save_pretrained a random tiny T5 into `directory`; returns the torch model."""
    model = hf_t5_model(variant, seed=seed)
    model.save_pretrained(str(directory), **save_kwargs)
    return model


def padded_batch(seed: int = 0, batch: int = 3, input_length: int = 9, target_length: int = 8) -> dict:
    """Random int32 batch with row-dependent padding (token 0) in inputs and targets.

    Returns encoder_input_tokens [b, Li], decoder_target_tokens [b, Lt],
    decoder_input_tokens [b, Lt] (targets shifted right, start token 0)
    and decoder_loss_weights [b, Lt].
    """
    rng = np.random.RandomState(seed)
    inputs = rng.randint(2, VOCAB_SIZE, (batch, input_length)).astype(np.int32)
    targets = rng.randint(2, VOCAB_SIZE, (batch, target_length)).astype(np.int32)
    for row in range(batch):
        inputs[row, input_length - 2 * row:] = 0
        targets[row, target_length - row - 1] = 1  # EOS
        targets[row, target_length - row:] = 0
    decoder_inputs = np.zeros_like(targets)
    decoder_inputs[:, 1:] = targets[:, :-1]
    return {
        "encoder_input_tokens": inputs,
        "decoder_target_tokens": targets,
        "decoder_input_tokens": decoder_inputs,
        "decoder_loss_weights": (targets != 0).astype(np.float32),
    }
