"""The inference service's commands: chat (one-shot, piped or an interactive loop), models and tokens. Each
takes an InferenceClient and the parsed arguments and returns the exit code (lmforge.cli.console.EXIT_*)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import grpc

from lmforge.cli.console import EXIT_FAILED, EXIT_OK, print_note, print_table
from lmforge.cli.format import (
    MODELS_HEADERS,
    format_generation_stats,
    format_loaded_model,
    format_rpc_error,
    model_rows,
    to_json,
    token_lines,
)
from lmforge.client import SAMPLING_FIELDS, InferenceClient
from lmforge.v1 import inference_pb2


def sampling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling flags that were given (not None), named as SamplingParams fields, for generate()."""
    out: dict[str, Any] = {}
    for name in SAMPLING_FIELDS:
        value = getattr(args, name, None)
        if value is not None and not (name == "stop" and not value):
            out[name] = list(value) if name == "stop" else value
    return out


class ChoiceCollector:
    """Gathers a Generate stream per choice index: the deltas' text and the final GenerationFinished."""

    def __init__(self) -> None:
        self.parts: dict[int, list[str]] = {}
        self.finished: dict[int, inference_pb2.GenerationFinished] = {}

    def add(self, response: inference_pb2.GenerateResponse) -> None:
        self.parts.setdefault(response.index, []).append(response.text_delta)
        if response.HasField("finished"):
            self.finished[response.index] = response.finished

    def indices(self) -> list[int]:
        return sorted(set(self.parts) | set(self.finished))

    def text(self, index: int) -> str:
        """The final message's text when it came (it is authoritative), else the concatenated deltas."""
        finished = self.finished.get(index)
        if finished is not None and finished.text:
            return finished.text
        return "".join(self.parts.get(index, []))

    def block(self, index: int) -> str:
        """Choice `index` under its `--- choice i ---` header."""
        return f"--- choice {index} ---\n{self.text(index)}"


def format_choices(collector: ChoiceCollector) -> str:
    """Every choice under a `--- choice i ---` header, in index order."""
    return "\n".join(collector.block(i) for i in collector.indices())


def chat_messages(history: Sequence[tuple[str, str]], system: str | None = None) -> list[dict[str, str]]:
    """A ChatInput-ready list: the system prompt (if any), then the (role, content) turns."""
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": role, "content": content} for role, content in history]


def ensure_loaded(client: InferenceClient, args: argparse.Namespace, err: TextIO) -> None:
    """LoadModel with the --quantization/--backend flags; an already loaded model is fine (a note)."""
    try:
        loaded = client.load_model(args.model_id, quantization=args.quantization or "none",
                                   backend=args.backend or "transformers")
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
        print_note(err, f"{args.model_id} is already loaded ({e.details()})")
    else:
        print_note(err, format_loaded_model(loaded))


def run_generation(client: InferenceClient, args: argparse.Namespace, *, messages=None, text=None,
                   out: TextIO, err: TextIO) -> ChoiceCollector:
    """One Generate call, printed: choice 0's deltas as they arrive (n = 1), every choice under a header at
    the end (n > 1), JSON lines with --json; stats lines on stderr. The call is cancelled if this raises
    (Ctrl-C: KeyboardInterrupt), which stops the server's generation."""
    n = args.n or 1
    live = not args.json and n == 1
    collector = ChoiceCollector()
    call = client.generate(args.model_id, messages=messages, text=text, adapter_id=args.adapter or "",
                           **sampling_kwargs(args))
    try:
        for response in call:
            collector.add(response)
            if args.json:
                out.write(to_json(response) + "\n")
                out.flush()
            elif live and response.index == 0 and response.text_delta:
                out.write(response.text_delta)
                out.flush()
    finally:
        call.cancel()  # no-op when the stream is done
    if args.json:
        return collector
    if live:
        out.write("\n")
        out.flush()
        print_note(err, format_generation_stats(collector.finished.get(0)))
    else:
        for i in collector.indices():
            out.write(collector.block(i) + "\n")
            out.flush()
            print_note(err, format_generation_stats(collector.finished.get(i)))
    return collector


def _generation_ok(collector: ChoiceCollector) -> bool:
    bad = (inference_pb2.FINISH_REASON_CANCELLED, inference_pb2.FINISH_REASON_DEADLINE)
    return bool(collector.finished) and all(f.finish_reason not in bad for f in collector.finished.values())


def chat_repl(client: InferenceClient, args: argparse.Namespace, *, out: TextIO, err: TextIO,
              read_line=input) -> int:
    """The interactive loop: keeps the conversation; /reset, /exit (or Ctrl-D); Ctrl-C stops a reply."""
    try:
        import readline  # noqa: F401  (line editing and history for input(), where available)
    except ImportError:
        pass
    mode = "raw text, no history" if args.raw else "/reset starts over"
    print_note(err, f"{args.model_id}: {mode}; /exit or Ctrl-D quits; Ctrl-C stops a reply")
    history: list[tuple[str, str]] = []

    def drop_turn() -> None:
        if history and history[-1][0] == "user" and not args.raw:
            history.pop()

    while True:
        try:
            line = read_line(">>> ")
        except EOFError:
            err.write("\n")
            return EXIT_OK
        except KeyboardInterrupt:
            err.write("\n")
            print_note(err, "(/exit or Ctrl-D quits)")
            continue
        command = line.strip()
        if not command:
            continue
        if command in ("/exit", "/quit"):
            return EXIT_OK
        if command == "/reset":
            history.clear()
            print_note(err, "conversation cleared")
            continue
        if command.startswith("/") and " " not in command:
            print_note(err, f"unknown command {command}; /reset, /exit")
            continue
        try:
            if args.raw:
                run_generation(client, args, text=line, out=out, err=err)
                continue
            history.append(("user", line))
            collector = run_generation(client, args, messages=chat_messages(history, args.system), out=out, err=err)
        except KeyboardInterrupt:
            out.write("\n")
            out.flush()
            print_note(err, "[cancelled; this turn is not kept]")
            drop_turn()
            continue
        except grpc.RpcError as e:
            out.flush()
            err.write("\n".join(format_rpc_error(e)) + "\n")
            drop_turn()
            continue
        history.append(("assistant", collector.text(0)))


def cmd_chat(client: InferenceClient, args: argparse.Namespace) -> int:
    if args.raw and args.system:
        raise ValueError("--system needs a chat; leave out --raw (or put the system text in the prompt)")
    if args.load or args.quantization or args.backend:
        ensure_loaded(client, args, sys.stderr)
    prompt = args.prompt
    if prompt is None:
        if sys.stdin.isatty():
            return chat_repl(client, args, out=sys.stdout, err=sys.stderr)
        prompt = sys.stdin.read()
        if not args.raw:
            prompt = prompt.rstrip("\n")
    if not prompt.strip():
        raise ValueError("empty prompt: pass PROMPT, pipe it on stdin, or run on a terminal for a chat")
    if args.raw:
        collector = run_generation(client, args, text=prompt, out=sys.stdout, err=sys.stderr)
    else:
        collector = run_generation(client, args, messages=chat_messages([("user", prompt)], args.system),
                                   out=sys.stdout, err=sys.stderr)
    return EXIT_OK if _generation_ok(collector) else EXIT_FAILED


def cmd_models(client: InferenceClient, args: argparse.Namespace) -> int:
    action = args.models_cmd or "list"
    if action == "list":
        response = client.list_models()
        if args.json:
            print(to_json(response))
        else:
            print_table(MODELS_HEADERS, model_rows(response))
        return EXIT_OK
    if action == "load":
        loaded = client.load_model(args.model_id, quantization=args.quantization, dtype=args.dtype,
                                   backend=args.backend, double_quant=args.double_quant,
                                   compute_dtype=args.compute_dtype or "")
        print(to_json(loaded) if args.json else format_loaded_model(loaded))
        return EXIT_OK
    if action == "unload":
        client.unload_model(args.model_id)
        print("{}" if args.json else f"unloaded {args.model_id}")
        return EXIT_OK
    if action == "load-adapter":
        adapter = client.load_adapter(args.adapter_id, model_id=args.model or "")
        print(to_json(adapter) if args.json else f"loaded adapter {adapter.adapter_id} on {adapter.base_model_id}")
        return EXIT_OK
    if action == "unload-adapter":
        client.unload_adapter(args.adapter_id, model_id=args.model or "")
        print("{}" if args.json else f"unloaded adapter {args.adapter_id}")
        return EXIT_OK
    raise AssertionError(action)


def cmd_tokens(client: InferenceClient, args: argparse.Namespace) -> int:
    text = args.text if args.text is not None else sys.stdin.read()
    if args.chat:
        response = client.tokenize(args.model_id, messages=chat_messages([("user", text)], args.system))
    else:
        if args.system:
            raise ValueError("--system needs --chat")
        response = client.tokenize(args.model_id, text=text)
    print(to_json(response) if args.json else "\n".join(token_lines(response, compact=args.compact)))
    return EXIT_OK
