"""`distill serve`: the trained student behind an OpenAI-compatible HTTP API, with dynamic batching.

One job per module, read in this order:

- `protocol.py`: request bodies in (parsing, validation, OpenAI-style errors), response bodies and
  stream chunks out. Pure Python, no model.
- `decoder.py`: the model side: bucket shapes, padding, `distill.predict.predict_batch`, start-up
  compilation.
- `batcher.py`: groups concurrent rows by decoding settings and input-length bucket and decodes each
  group on a worker thread, so the event loop keeps serving.
- `app.py`: the Starlette (ASGI) routes: auth, body and in-flight limits, streaming, /metrics.
- `cli.py`: `distill serve` flags, checkpoint loading, warm-up, uvicorn and graceful shutdown.

Nothing here is imported by `import distill`; jax, starlette and uvicorn load only when serving.
"""
