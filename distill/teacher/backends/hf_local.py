"""A local Hugging Face causal LM as the teacher (torch; the `hf` extra).

Batched `generate` with left padding (decoder-only models continue from the
last position, so padding must sit on the left) over prompts the batcher has
sorted by length, so a batch pads little. Greedy when temperature is 0, else
sampling with `n` return sequences per prompt. Chat prompts go through the
tokenizer's chat template. Only the new tokens are decoded.

torch and transformers are imported here and nowhere else in the teacher.
"""
from __future__ import annotations

import os

from distill.errors import UserError
from distill.teacher.backends.base import Prompt, SamplingParams, cut_at_stop
from distill.teacher.cache import Completion


class HFBackend:
    kind = "hf"

    def __init__(self, model_dir: str, *, batch_size: int = 16, device: str | None = None) -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as err:
            raise UserError(f"--backend hf needs torch and transformers ({err}); pip install 'distill[hf]'") from None
        if not os.path.isdir(model_dir):
            raise UserError(f"--model {model_dir} is not a folder; "
                            "--backend hf loads a local save_pretrained() directory")
        self.model = model_dir
        self.batch_size = batch_size
        self._torch = torch
        self._device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self._tokenizer.padding_side = "left"
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self._model = AutoModelForCausalLM.from_pretrained(model_dir).to(self._device).eval()

    def _text(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        if not getattr(self._tokenizer, "chat_template", None):
            raise UserError(f"{self.model} has no chat template; use --prompt-format completion")
        return self._tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)

    def generate_batch(self, prompts: list[Prompt], params: SamplingParams) -> list[Completion]:
        """Completions for `prompts` in order; input_ids [batch, padded length], left padded."""
        torch = self._torch
        encoded = self._tokenizer([self._text(p) for p in prompts], return_tensors="pt", padding=True)
        encoded = {name: tensor.to(self._device) for name, tensor in encoded.items() if name != "token_type_ids"}
        sampled = params.temperature > 0
        options = dict(max_new_tokens=params.max_tokens, do_sample=sampled, num_return_sequences=params.n,
                       pad_token_id=self._tokenizer.pad_token_id)
        if sampled:
            options.update(temperature=params.temperature, top_p=params.top_p)
        with torch.no_grad():
            output = self._model.generate(**encoded, **options)  # [batch * n, padded + new]
        new_tokens = output[:, encoded["input_ids"].shape[1]:]
        texts = self._tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        prompt_lengths = encoded["attention_mask"].sum(dim=1).tolist()
        completions = []
        for i, prompt_length in enumerate(prompt_lengths):
            rows = range(i * params.n, (i + 1) * params.n)
            generated = sum(int((new_tokens[r] != self._tokenizer.pad_token_id).sum()) for r in rows)
            completions.append(Completion(tuple(cut_at_stop(texts[r], params.stop) for r in rows),
                                          int(prompt_length), generated))
        return completions

