"""A local (Flan-)T5 checkpoint as the teacher, through the project's own JAX decoding.

Lets a TPU or GPU user prompt Flan-T5-XXL few-shot without running a server:
`distill.run_dir.load_trained` reads a Hugging Face T5 folder
(config.json, weights, spiece.model) or one of this project's training model
dirs, and `distill.predict.decode_texts` runs
batched, jit-compiled greedy or sampled decoding (inputs sorted and padded to
a few bucket shapes). Prompts must be plain text (T5 has no chat template).

A prompt longer than `max_input_length` tokens is refused up front: the
decoder would keep its head and cut the question at its end. Use fewer
exemplars (--exemplars) or raise the limit.

jax is imported here (through distill.predict) and nowhere else in the teacher.
"""
from __future__ import annotations

from distill.errors import UserError
from distill.teacher.backends.base import Prompt, SamplingParams, cut_at_stop
from distill.teacher.cache import Completion


class FlaxT5Backend:
    kind = "flax_t5"

    def __init__(self, model_dir: str, *, batch_size: int = 16, max_input_length: int = 2048) -> None:
        from distill.run_dir import load_trained

        self.model = model_dir
        self.batch_size = batch_size
        self.max_input_length = max_input_length
        trained = load_trained(model_dir, require_tokenizer=True)
        self._config, self._params, self._vocabulary = trained.config, trained.params, trained.tokenizer()

    def generate_batch(self, prompts: list[Prompt], params: SamplingParams) -> list[Completion]:
        """n completions per prompt; sample i of every prompt uses PRNG key i (reproducible)."""
        import jax

        from distill.predict import decode_texts

        if any(not isinstance(p, str) for p in prompts):
            raise UserError("--backend flax takes plain-text prompts; use --prompt-format completion")
        lengths = [len(self._vocabulary.encode(p)) + 1 for p in prompts]  # + EOS
        if max(lengths) > self.max_input_length:
            raise UserError(f"a prompt has {max(lengths)} tokens, over the {self.max_input_length}-token input "
                            "limit; use fewer exemplars (--exemplars FILE) or a shorter --limit of inputs")
        samples = []
        for sample in range(params.n):
            options = {}
            if params.temperature > 0:
                options = dict(method="sample", rng=jax.random.PRNGKey(sample),
                               temperature=params.temperature, top_p=params.top_p)
            samples.append(decode_texts(self._config, self._params, self._vocabulary, prompts,
                                        batch_size=self.batch_size, max_input_length=self.max_input_length,
                                        max_decode_length=params.max_tokens, **options))
        completions = []
        for i, prompt_tokens in enumerate(lengths):
            texts = tuple(cut_at_stop(sample[i], params.stop) for sample in samples)
            completions.append(Completion(texts, prompt_tokens, sum(len(self._vocabulary.encode(t)) for t in texts)))
        return completions

