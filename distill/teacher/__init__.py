"""The teacher stage: few-shot CoT prompting of a teacher LLM into cached rationales.

    prompts     exemplar data files (exemplars/<dataset>.json) -> completion / chat prompts
    backends/   OpenAI-compatible HTTP (httpx), the OpenAI Batch API, local HF causal LM (torch),
                local Flax T5 (jax)
    ratelimit   RPM / TPM token buckets
    batcher     bounded concurrency, per-attempt timeout, retries with backoff, one commit per answer
    batch_runner, batch_store   Batch API runs: split, submit, poll, merge; batch ids in the cache
    cache       SQLite (WAL) cache keyed by the prompt's hash: kill -9 safe, resumable, per-run usage
    accounting  tokens per run and in total, estimated cost;  budget: --max-cost / --max-tokens-total
    voting      self-consistency majority vote over n samples (the data layer's parser)
    export      <out>/<dataset>/<split>.teacher.jsonl + the reference llm/ layout, atomically
    progress    the stderr progress line;  redaction: the API key out of every message
    pipeline    `run_teacher(...)`, the library entry point
    cli         `distill teacher`;  status: `distill teacher status --cache PATH`

Importing this package imports none of TensorFlow, seqio, jax, torch or httpx;
each backend imports its own client when chosen.
"""
