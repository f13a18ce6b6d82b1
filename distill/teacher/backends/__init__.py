"""Teacher backends: where completions come from.

- `openai_http`: any OpenAI-compatible server (vLLM, SGLang, TGI, hosted APIs), async.
- `hf_local`: a local Hugging Face causal LM through torch `generate`, batched.
- `flax_t5`: a local (Flan-)T5 checkpoint through the project's own JAX decoding.

Each is imported only when chosen, so httpx, torch and jax stay out of
`import distill.teacher`. The shared request/response types are in `base`.
"""
