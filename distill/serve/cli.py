"""`distill serve`: flags, checkpoint loading, start-up compilation, uvicorn, graceful shutdown.

Order of start-up: check the flags and the API key variable, bind the port (a port in use fails
before minutes of loading), load the checkpoint, compile the greedy program of every bucket shape
(distill/serve/decoder.py), then print one `distill serve: ... on http://HOST:PORT/v1` line on
stderr and serve. Connections made during warm-up wait in the socket's backlog.

SIGTERM (or Ctrl-C) stops accepting connections, lets the requests in flight finish (uvicorn's
graceful shutdown; the batcher stops after them) and exits 0.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sys

from distill.compilation_cache import enable_user_compilation_cache
from distill.errors import UserError
from distill.predict import MATMUL_DTYPE_HELP, TASKS, task_input_prefix, with_matmul_dtype
from distill.xla_flags import single_threaded_eigen


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="distill serve", description=(
        "Serve a T5 student behind an OpenAI-compatible API (/v1/completions, /v1/chat/completions) "
        "with dynamic batching."))
    add = parser.add_argument
    add("--checkpoint", required=True, help="anything `distill predict` accepts: a Hugging Face T5 folder, a "
                                            "training model dir (latest step) or <model_dir>/checkpoints/<step>")
    add("--host", default="127.0.0.1", help="address to bind (default %(default)s: this machine only)")
    add("--port", type=int, default=8000, help="port (default %(default)s; 0 picks a free one)")
    add("--api-key-env", default=None, help="environment variable holding the API key clients must send as "
                                            "`Authorization: Bearer <key>` (default: no key)")
    add("--task", choices=TASKS, default="label",
        help="the task prefix put before every input, as the model was trained with it (as `distill predict` "
             "does), or none (default %(default)s)")
    add("--model-name", default=None, help="the model id clients send (default: the checkpoint folder's name)")
    add("--max-batch-size", type=int, default=32, help="rows per decoded batch (default %(default)s)")
    add("--max-wait-ms", type=float, default=5.0,
        help="how long a row waits for others to batch with (default %(default)s)")
    add("--max-input-tokens", type=int, default=512,
        help="longest input, task prefix and EOS included; longer ones get 400 (default %(default)s)")
    add("--max-new-tokens", type=int, default=64,
        help="decode length of every batch; a larger max_tokens gets 400 (default %(default)s)")
    add("--max-in-flight", type=int, default=256,
        help="generation requests in flight before new ones get 429 (default %(default)s)")
    add("--max-body-bytes", type=int, default=1 << 20,
        help="largest request body; larger gets 413 (default %(default)s)")
    add("--matmul-dtype", choices=("float32", "bfloat16"), default=None, help=MATMUL_DTYPE_HELP)
    add("--access-log", action="store_true",
        help="log one line per request (off by default: formatting it costs about as much as the routing)")
    args = parser.parse_args(argv)
    for name, low in (("max_batch_size", 1), ("max_input_tokens", 2), ("max_new_tokens", 1), ("max_in_flight", 1),
                      ("max_body_bytes", 256)):
        if getattr(args, name) < low:
            raise UserError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
    if args.max_wait_ms < 0:
        raise UserError(f"--max-wait-ms must be >= 0, got {args.max_wait_ms}")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {args.port}")
    return args


def _api_key(variable: str | None) -> str | None:
    if variable is None:
        return None
    key = os.environ.get(variable, "").strip()
    if not key:
        raise UserError(f"--api-key-env {variable}: that environment variable is not set or empty")
    return key


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port; UserError when the address is taken or not ours."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as err:
        raise UserError(f"cannot listen on {host}:{port} ({err.strerror or err}): pick another --host/--port") from None
    sock.set_inheritable(True)
    return sock


def _exit_quietly_after_a_graceful_stop() -> None:
    """uvicorn re-raises the stop signal after shutting down; with these handlers that ends in exit 0.

    Installed just before uvicorn takes the signals over (it restores these before re-raising), so
    a signal during loading or warm-up still stops the process the usual way.
    """
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    single_threaded_eigen()  # before jax makes its CPU backend (distill/xla_flags.py)
    enable_user_compilation_cache()  # the decoder compiled by an earlier run is read back (distill/compilation_cache.py)
    api_key = _api_key(args.api_key_env)
    sock = _listen(args.host, args.port)
    port = sock.getsockname()[1]

    import uvicorn

    from distill.run_dir import load_trained
    from distill.serve.app import ServeOptions, create_app
    from distill.serve.decoder import Decoder
    from distill.serve.protocol import Limits

    trained = load_trained(args.checkpoint, require_tokenizer=True)
    tokenizer = trained.tokenizer()
    model_name = args.model_name or os.path.basename(os.path.abspath(args.checkpoint).rstrip(os.sep))
    config = with_matmul_dtype(trained.config, args.matmul_dtype)
    decoder = Decoder(config, trained.params, max_batch_size=args.max_batch_size,
                      max_input_tokens=args.max_input_tokens, max_new_tokens=args.max_new_tokens)
    print(f"distill serve: compiling greedy decoding for rows {decoder.row_buckets} x input lengths "
          f"{decoder.length_buckets} ...", file=sys.stderr, flush=True)
    decoder.warm_up()
    options = ServeOptions(limits=Limits(model_name, args.max_input_tokens, args.max_new_tokens),
                           task_prefix=task_input_prefix(trained.task_prefixes, args.task), api_key=api_key,
                           max_in_flight=args.max_in_flight, max_body_bytes=args.max_body_bytes,
                           max_wait_s=args.max_wait_ms / 1000)
    app = create_app(decoder, tokenizer, options, eos_id=config.eos_token_id)
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="info", access_log=args.access_log))
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"distill serve: {model_name} on http://{shown}:{port}/v1", file=sys.stderr, flush=True)
    _exit_quietly_after_a_graceful_stop()
    server.run(sockets=[sock])
    return 0 if server.started else 1
