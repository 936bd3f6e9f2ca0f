"""Fast tests of the inference side of the client: sampling kwargs -> SamplingParams (proto3 presence kept),
the CLI's pure formatting helpers, the chat/models/tokens command logic against an in-memory fake client,
and InferenceClient against an in-process fake InferenceService (cancel reaches the server). No torch.

Run: .venv/bin/python -m pytest tests/unit/test_cli_inference_format.py -q
"""

from __future__ import annotations

import io
import threading
from concurrent import futures

import grpc
import pytest

from lmforge import InferenceClient, cli
from lmforge.cli import console, inference_commands, parser
from lmforge.cli import format as fmt
from lmforge.client import (
    backend_name,
    build_generate_request,
    build_sampling_params,
    default_inference_address,
    finish_reason_name,
    parse_backend,
    parse_quantization,
    quantization_name,
)
from lmforge.v1 import common_pb2, inference_pb2, inference_pb2_grpc

MODEL = "smollm2-135m-instruct"


# ------------------------------------------------------------------------------- sampling + requests


def test_sampling_params_keep_presence_of_zero_values():
    params = build_sampling_params(temperature=0, top_k=0, presence_penalty=0.0, seed=0)
    for name in ("temperature", "top_k", "presence_penalty", "seed"):
        assert params.HasField(name), name
    assert params.temperature == 0.0 and params.top_k == 0 and params.seed == 0
    for name in ("top_p", "min_p", "repetition_penalty", "frequency_penalty", "max_new_tokens", "n"):
        assert not params.HasField(name), name


def test_sampling_params_every_field_none_skipped_and_unknown_rejected():
    params = build_sampling_params(temperature=0.7, top_p=0.9, top_k=40, min_p=0.05, repetition_penalty=1.1,
                                   presence_penalty=-0.5, frequency_penalty=0.5, seed=1234, max_new_tokens=64,
                                   stop=["\n\n", "###"], n=3)
    assert (params.temperature, params.top_p, params.top_k, params.min_p) == (0.7, 0.9, 40, 0.05)
    assert (params.repetition_penalty, params.presence_penalty, params.frequency_penalty) == (1.1, -0.5, 0.5)
    assert (params.seed, params.max_new_tokens, params.n, list(params.stop)) == (1234, 64, 3, ["\n\n", "###"])
    empty = build_sampling_params(temperature=None, stop=None, seed=None)
    assert empty.ListFields() == []
    assert list(build_sampling_params(stop="END").stop) == ["END"]  # one string is one stop sequence
    with pytest.raises(TypeError, match="temprature"):
        build_sampling_params(temprature=0.5)


def test_generate_request_chat_or_text():
    request = build_generate_request(MODEL, messages=[{"role": "system", "content": "be brief"}, ("user", "hi")],
                                     adapter_id="ad-1", temperature=0)
    assert request.WhichOneof("input") == "chat"
    assert [(m.role, m.content) for m in request.chat.messages] == [("system", "be brief"), ("user", "hi")]
    assert request.adapter_id == "ad-1" and request.sampling.HasField("temperature")
    raw = build_generate_request(MODEL, text="")  # an empty raw text is still a text
    assert raw.WhichOneof("input") == "text"
    for kwargs in ({}, {"messages": [], "text": "x"}):
        with pytest.raises(ValueError, match="exactly one"):
            build_generate_request(MODEL, **kwargs)
    with pytest.raises(ValueError, match="chat message"):
        build_generate_request(MODEL, messages=["just a string"])


def test_cli_sampling_flags_map_to_sampling_params():
    args = parser.build_parser().parse_args(
        ["chat", MODEL, "hi", "--temperature", "0", "--top-k", "0", "--max-new-tokens", "32", "--stop", "a",
         "--stop", "b", "--seed", "7"])
    kwargs = inference_commands.sampling_kwargs(args)
    assert kwargs == {"temperature": 0.0, "top_k": 0, "max_new_tokens": 32, "stop": ["a", "b"], "seed": 7}
    params = build_sampling_params(**kwargs)
    assert params.HasField("temperature") and params.temperature == 0.0
    assert params.HasField("top_k") and not params.HasField("top_p")
    assert inference_commands.sampling_kwargs(parser.build_parser().parse_args(["chat", MODEL, "hi"])) == {}


def test_enum_names():
    assert parse_quantization("nf4") == common_pb2.QUANTIZATION_NF4
    assert parse_quantization("INT8") == common_pb2.QUANTIZATION_INT8
    assert parse_quantization("none") == common_pb2.QUANTIZATION_NONE
    assert parse_quantization("QUANTIZATION_FP4") == common_pb2.QUANTIZATION_FP4
    with pytest.raises(ValueError, match="nf4"):
        parse_quantization("int3")
    assert parse_backend("vllm") == inference_pb2.BACKEND_VLLM
    assert parse_backend("transformers") == inference_pb2.BACKEND_TRANSFORMERS
    assert backend_name(inference_pb2.BACKEND_UNSPECIFIED) == "transformers"
    assert quantization_name(common_pb2.QuantizationSpec(type=common_pb2.QUANTIZATION_NF4, double_quant=True)) \
        == "nf4+dq"
    assert quantization_name(common_pb2.QuantizationSpec()) == "none"
    assert finish_reason_name(inference_pb2.FINISH_REASON_EOS) == "eos"
    assert finish_reason_name(inference_pb2.FINISH_REASON_UNSPECIFIED) == "-"


def test_inference_address_defaults(monkeypatch):
    monkeypatch.delenv("LMFORGE_INFERENCE_ADDRESS", raising=False)
    assert default_inference_address() == "127.0.0.1:50052"
    assert parser.build_parser().parse_args(["models"]).inference_address == "127.0.0.1:50052"
    monkeypatch.setenv("LMFORGE_INFERENCE_ADDRESS", "gpu-box:9000")
    assert default_inference_address() == "gpu-box:9000"
    assert parser.build_parser().parse_args(["models"]).inference_address == "gpu-box:9000"
    args = parser.build_parser().parse_args(["chat", MODEL, "x", "--inference-address", "h:1", "--json"])
    assert (args.inference_address, args.json, args.service) == ("h:1", True, "inference")
    args = parser.build_parser().parse_args(["--inference-address", "h:2", "tokens", MODEL, "x"])
    assert args.inference_address == "h:2"


# ------------------------------------------------------------------------------------------ formatting


def _finished(reason=inference_pb2.FINISH_REASON_EOS, tokens=42, tps=12.34, ttft=85.2, text=""):
    return inference_pb2.GenerationFinished(
        finish_reason=reason, text=text, usage=inference_pb2.Usage(prompt_tokens=10, completion_tokens=tokens),
        timings=inference_pb2.Timings(time_to_first_token_ms=ttft, tokens_per_second=tps))


def test_generation_stats_line():
    assert fmt.format_generation_stats(_finished()) == "[finish: eos · 42 tokens · 12.3 tok/s · ttft 85 ms]"
    assert (fmt.format_generation_stats(_finished(inference_pb2.FINISH_REASON_LENGTH, 1, 0, 1530))
            == "[finish: length · 1 token · ttft 1.53 s]")
    assert fmt.format_generation_stats(None).startswith("[finish: -")


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_notes_are_faint_on_a_colour_terminal_only(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    line = "[finish: eos · 42 tokens] 二加二"  # brackets are not rich markup, Chinese is kept
    tty = FakeTTY()
    console.print_note(tty, line)
    assert tty.getvalue() == f"\x1b[2m{line}\x1b[0m\n"
    pipe = io.StringIO()
    console.print_note(pipe, line)
    assert pipe.getvalue() == line + "\n"
    monkeypatch.setenv("NO_COLOR", "1")
    tty = FakeTTY()
    console.print_note(tty, line)
    assert tty.getvalue() == line + "\n"


def test_choice_collector_and_choice_blocks():
    collector = inference_commands.ChoiceCollector()
    for index, delta in [(0, "Hel"), (1, "Bon"), (0, "lo"), (1, "jour")]:
        collector.add(inference_pb2.GenerateResponse(index=index, text_delta=delta))
    collector.add(inference_pb2.GenerateResponse(index=1, finished=_finished(text="Bonjour")))
    assert collector.indices() == [0, 1]
    assert collector.text(0) == "Hello" and collector.text(1) == "Bonjour"
    assert 1 in collector.finished and 0 not in collector.finished
    assert inference_commands.format_choices(collector) == "--- choice 0 ---\nHello\n--- choice 1 ---\nBonjour"


def test_chat_messages():
    assert inference_commands.chat_messages([("user", "hi"), ("assistant", "yo")], "sys") == [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"}]
    assert inference_commands.chat_messages([("user", "hi")]) == [{"role": "user", "content": "hi"}]


def _models_response():
    nf4 = common_pb2.QuantizationSpec(type=common_pb2.QUANTIZATION_NF4)
    return inference_pb2.ListModelsResponse(
        available=[
            common_pb2.Checkpoint(id="base", kind=common_pb2.BASE_MODEL),
            common_pb2.Checkpoint(id="ft-1", kind=common_pb2.FULL_CHECKPOINT, base_model_id="base"),
            common_pb2.Checkpoint(id="ad-1", kind=common_pb2.ADAPTER, base_model_id="base"),
            common_pb2.Checkpoint(id="ad-2", kind=common_pb2.ADAPTER, base_model_id="base"),
        ],
        loaded=[
            inference_pb2.LoadedModel(model_id="base", backend=inference_pb2.BACKEND_TRANSFORMERS, quantization=nf4,
                                      memory_bytes=300 << 20, adapters=[inference_pb2.LoadedAdapter(
                                          adapter_id="ad-1", base_model_id="base")]),
            inference_pb2.LoadedModel(model_id="hub-only", backend=inference_pb2.BACKEND_VLLM,
                                      memory_bytes=1536 << 20),
        ])


def test_model_rows_and_table():
    rows = fmt.model_rows(_models_response())
    assert rows == [
        ["base", "base", "-", "yes", "transformers", "nf4", "300", "ad-1"],
        ["ft-1", "full", "base", "no", "-", "-", "-", "-"],
        ["ad-1", "adapter", "base", "yes", "-", "-", "-", "-"],
        ["ad-2", "adapter", "base", "no", "-", "-", "-", "-"],
        ["hub-only", "-", "-", "yes", "vllm", "none", "1,536", "-"],
    ]
    table = console.format_table(fmt.MODELS_HEADERS, rows).splitlines()
    assert table[0].split() == ["ID", "KIND", "BASE", "MODEL", "LOADED", "BACKEND", "QUANT", "MEMORY", "MiB",
                                "ADAPTERS"]
    assert len(table) == 6


def test_format_loaded_model():
    m = inference_pb2.LoadedModel(
        model_id="base", backend=inference_pb2.BACKEND_TRANSFORMERS, dtype="bfloat16", device="cuda:0",
        quantization=common_pb2.QuantizationSpec(type=common_pb2.QUANTIZATION_NF4, double_quant=True),
        memory_bytes=246 << 20, context_length=8192, load_seconds=3.21)
    assert fmt.format_loaded_model(m) == \
        "loaded base: transformers, nf4+dq, bfloat16 on cuda:0, 246 MiB, context 8192, 3.2 s"


def test_quote_piece_and_token_lines():
    assert fmt.quote_piece(" world") == "' world'"
    assert fmt.quote_piece("a\nb\t'\\") == "'a\\nb\\t\\'\\\\'"
    assert fmt.quote_piece("\x00é\ufffd") == "'\\x00é\ufffd'"
    response = inference_pb2.TokenizeResponse(token_ids=[19556, 905, 7], pieces=["Hello", " world", "\n"], count=3,
                                              chars_per_token=4.0, context_length=8192)
    assert fmt.token_lines(response) == [
        "3 tokens · 4.00 chars/token · context 8192",
        "19556  'Hello'",
        "  905  ' world'",
        "    7  '\\n'",
    ]
    assert fmt.token_lines(response, compact=True) == [
        "3 tokens · 4.00 chars/token · context 8192", "'Hello' ' world' '\\n'"]
    one = inference_pb2.TokenizeResponse(token_ids=[1], pieces=["a"], count=1, chars_per_token=1.0)
    assert fmt.format_token_summary(one) == "1 token · 1.00 chars/token"


# --------------------------------------------------------------------------- commands on a fake client


class FakeCall:
    """What a grpc server-streaming call looks like to the CLI: an iterator with cancel()."""

    def __init__(self, responses, interrupt_after=None):
        self._responses = list(responses)
        self._interrupt_after = interrupt_after
        self.cancelled = False

    def __iter__(self):
        for i, response in enumerate(self._responses):
            if self._interrupt_after is not None and i == self._interrupt_after:
                raise KeyboardInterrupt
            yield response

    def cancel(self):
        self.cancelled = True
        return True


def _stream(*choices, reason=inference_pb2.FINISH_REASON_EOS):
    """Responses for choices given as lists of deltas, interleaved, each ended by a finished message."""
    out = []
    for step in range(max(len(c) for c in choices)):
        for i, deltas in enumerate(choices):
            if step < len(deltas):
                out.append(inference_pb2.GenerateResponse(index=i, text_delta=deltas[step]))
    for i, deltas in enumerate(choices):
        out.append(inference_pb2.GenerateResponse(index=i, finished=_finished(reason, text="".join(deltas))))
    return out


class FakeInferenceClient:
    def __init__(self, streams=(), load_error=None):
        self.streams = list(streams)  # one FakeCall per generate()
        self.calls: list[dict] = []
        self.handed_out: list[FakeCall] = []
        self.load_error = load_error
        self.loads: list[tuple] = []

    def generate(self, model_id, **kw):
        self.calls.append({"model_id": model_id, **kw})
        call = self.streams.pop(0)
        self.handed_out.append(call)
        return call

    def load_model(self, model_id, **kw):
        self.loads.append((model_id, kw))
        if self.load_error:
            raise self.load_error
        return inference_pb2.LoadedModel(model_id=model_id, memory_bytes=1 << 20)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


class FakeRpcError(grpc.RpcError):
    def __init__(self, code, details=""):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return ()


def _chat_args(*extra):
    return parser.build_parser().parse_args(["chat", MODEL, *extra])


def test_run_generation_streams_deltas_then_stats_and_cancels_call():
    client = FakeInferenceClient([FakeCall(_stream(["Hel", "lo", "!"]))])
    out, err = io.StringIO(), io.StringIO()
    args = _chat_args("hi", "--temperature", "0", "--adapter", "ad-1")
    collector = inference_commands.run_generation(client, args, messages=[{"role": "user", "content": "hi"}], out=out,
                                                  err=err)
    assert out.getvalue() == "Hello!\n"
    assert err.getvalue() == "[finish: eos · 42 tokens · 12.3 tok/s · ttft 85 ms]\n"  # not a TTY: no escapes
    assert collector.text(0) == "Hello!"
    assert client.calls[0]["adapter_id"] == "ad-1" and client.calls[0]["temperature"] == 0.0
    assert client.handed_out[0].cancelled  # cancel() is harmless after the end


def test_run_generation_n_choices_printed_under_headers():
    client = FakeInferenceClient([FakeCall(_stream(["a", "b"], ["c"]))])
    out, err = io.StringIO(), io.StringIO()
    inference_commands.run_generation(client, _chat_args("x", "--n", "2"), text="x", out=out, err=err)
    assert out.getvalue() == "--- choice 0 ---\nab\n--- choice 1 ---\nc\n"
    assert err.getvalue().count("[finish: eos") == 2
    assert client.calls[0]["n"] == 2 and client.calls[0]["text"] == "x"


def test_run_generation_stats_are_faint_on_a_colour_terminal(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    client = FakeInferenceClient([FakeCall(_stream(["你", "好"]))])
    out, err = io.StringIO(), FakeTTY()
    inference_commands.run_generation(client, _chat_args("x"), text="x", out=out, err=err)
    assert out.getvalue() == "你好\n"  # the reply itself is never styled
    assert err.getvalue() == "\x1b[2m[finish: eos · 42 tokens · 12.3 tok/s · ttft 85 ms]\x1b[0m\n"


def test_run_generation_json_lines():
    client = FakeInferenceClient([FakeCall(_stream(["a"]))])
    out, err = io.StringIO(), io.StringIO()
    inference_commands.run_generation(client, _chat_args("x", "--json"), text="x", out=out, err=err)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and '"text_delta": "a"' in lines[0] and '"finished"' in lines[1]
    assert err.getvalue() == ""


def test_ctrl_c_mid_stream_cancels_the_call():
    call = FakeCall(_stream(["a", "b", "c"]), interrupt_after=1)
    client = FakeInferenceClient([call])
    with pytest.raises(KeyboardInterrupt):
        inference_commands.run_generation(client, _chat_args("x"), text="x", out=io.StringIO(), err=io.StringIO())
    assert call.cancelled


def test_repl_keeps_history_resets_and_drops_a_cancelled_turn():
    client = FakeInferenceClient([
        FakeCall(_stream(["Hi there"])),
        FakeCall(_stream(["long", "er"]), interrupt_after=1),  # Ctrl-C during the 2nd reply
        FakeCall(_stream(["Paris"])),
        FakeCall(_stream(["fresh"])),
    ])
    lines = iter(["hello", "", "tell me a story", "capital of France?", "/reset", "again", "/exit", "never"])
    out, err = io.StringIO(), io.StringIO()
    args = _chat_args("--system", "be brief")
    assert inference_commands.chat_repl(client, args, out=out, err=err, read_line=lambda prompt: next(lines)) == 0
    msgs = [[(m["role"], m["content"]) for m in c["messages"]] for c in client.calls]
    assert msgs[0] == [("system", "be brief"), ("user", "hello")]
    assert msgs[1] == [("system", "be brief"), ("user", "hello"), ("assistant", "Hi there"),
                       ("user", "tell me a story")]
    # the cancelled turn is not kept
    assert msgs[2] == [("system", "be brief"), ("user", "hello"), ("assistant", "Hi there"),
                       ("user", "capital of France?")]
    assert msgs[3] == [("system", "be brief"), ("user", "again")]  # after /reset
    assert client.handed_out[1].cancelled
    assert "cancelled" in err.getvalue() and "conversation cleared" in err.getvalue()
    assert out.getvalue().startswith("Hi there\n")


def test_repl_survives_rpc_errors_and_ends_on_eof():
    class FailingClient(FakeInferenceClient):
        def generate(self, model_id, **kw):
            self.calls.append(kw)
            if len(self.calls) == 1:
                raise FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "model not loaded")
            return FakeCall(_stream(["ok"]))

    lines = iter(["first", "second"])

    def read_line(prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    client = FailingClient()
    err = io.StringIO()
    assert inference_commands.chat_repl(client, _chat_args(), out=io.StringIO(), err=err, read_line=read_line) == 0
    assert "error: FAILED_PRECONDITION: model not loaded" in err.getvalue()
    assert [m["content"] for m in client.calls[1]["messages"]] == ["second"]  # the failed turn was dropped


def test_main_chat_one_shot_with_load_already_loaded(monkeypatch, capsys):
    fake = FakeInferenceClient([FakeCall(_stream(["4"]))],
                               load_error=FakeRpcError(grpc.StatusCode.ALREADY_EXISTS, "base is loaded"))
    seen = {}

    def factory(address, timeout):
        seen.update(address=address, timeout=timeout)
        return fake

    monkeypatch.setattr(cli, "InferenceClient", factory)
    code = cli.main(["--inference-address", "h:9", "chat", MODEL, "2+2?", "--load", "--quantization", "nf4",
                     "--temperature", "0"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out == "4\n"
    assert "already loaded" in captured.err and "[finish: eos" in captured.err
    assert seen == {"address": "h:9", "timeout": 60.0}
    assert fake.loads == [(MODEL, {"quantization": "nf4", "backend": "transformers"})]
    assert fake.calls[0]["messages"] == [{"role": "user", "content": "2+2?"}]


def test_main_chat_other_load_errors_exit_2(monkeypatch, capsys):
    fake = FakeInferenceClient(load_error=FakeRpcError(grpc.StatusCode.NOT_FOUND, "no model 'nope'"))
    monkeypatch.setattr(cli, "InferenceClient", lambda address, timeout: fake)
    assert cli.main(["chat", "nope", "hi", "--load"]) == 2
    assert capsys.readouterr().err.startswith("error: NOT_FOUND: no model 'nope'")


def test_main_chat_raw_from_stdin_and_raw_with_system_is_an_error(monkeypatch, capsys):
    fake = FakeInferenceClient([FakeCall(_stream([" there"]))])
    monkeypatch.setattr(cli, "InferenceClient", lambda address, timeout: fake)
    monkeypatch.setattr("sys.stdin", io.StringIO("Once upon a time\n"))
    assert cli.main(["chat", MODEL, "--raw"]) == 0
    assert fake.calls[0]["text"] == "Once upon a time\n" and fake.calls[0]["messages"] is None
    capsys.readouterr()
    assert cli.main(["chat", MODEL, "x", "--raw", "--system", "s"]) == 2
    assert "--system" in capsys.readouterr().err


class FakeAdminClient:
    def __init__(self):
        self.calls = []

    def list_models(self):
        return _models_response()

    def load_model(self, model_id, **kw):
        self.calls.append(("load", model_id, kw))
        return inference_pb2.LoadedModel(model_id=model_id, memory_bytes=2 << 20)

    def unload_model(self, model_id):
        self.calls.append(("unload", model_id))

    def load_adapter(self, adapter_id, model_id=""):
        self.calls.append(("load-adapter", adapter_id, model_id))
        return inference_pb2.LoadedAdapter(adapter_id=adapter_id, base_model_id=model_id or "base")

    def tokenize(self, model_id, text=None, messages=None, add_generation_prompt=None):
        self.calls.append(("tokenize", text, messages))
        return inference_pb2.TokenizeResponse(token_ids=[5], pieces=["hi"], count=1, chars_per_token=2.0)


def _run(client, argv):
    args = parser.build_parser().parse_args(argv)
    assert args.service == "inference"
    return args.func(client, args)


def test_models_commands(capsys):
    client = FakeAdminClient()
    assert _run(client, ["models"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:4] == ["base", "base", "-", "yes"]
    assert _run(client, ["models", "list", "--json"]) == 0
    assert '"available"' in capsys.readouterr().out
    assert _run(client, ["models", "load", "base", "--quantization", "int8", "--dtype", "float16"]) == 0
    assert client.calls[-1] == ("load", "base", {"quantization": "int8", "dtype": "float16",
                                                  "backend": "transformers", "double_quant": False,
                                                  "compute_dtype": ""})
    assert capsys.readouterr().out.startswith("loaded base: transformers")
    assert _run(client, ["models", "unload", "base"]) == 0
    assert client.calls[-1] == ("unload", "base")
    assert _run(client, ["models", "load-adapter", "ad-1", "--model", "ft-1"]) == 0
    assert client.calls[-1] == ("load-adapter", "ad-1", "ft-1")
    assert "loaded adapter ad-1 on ft-1" in capsys.readouterr().out


def test_tokens_command_text_chat_and_stdin(monkeypatch, capsys):
    client = FakeAdminClient()
    assert _run(client, ["tokens", MODEL, "hi"]) == 0
    assert capsys.readouterr().out == "1 token · 2.00 chars/token\n5  'hi'\n"
    assert client.calls[-1] == ("tokenize", "hi", None)
    assert _run(client, ["tokens", MODEL, "hi", "--chat"]) == 0
    assert client.calls[-1] == ("tokenize", None, [{"role": "user", "content": "hi"}])
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO("from stdin"))
    assert _run(client, ["tokens", MODEL, "--compact"]) == 0
    assert client.calls[-1] == ("tokenize", "from stdin", None)
    assert capsys.readouterr().out.splitlines()[1] == "'hi'"


# --------------------------------------------------------------------- InferenceClient over real gRPC


class FakeServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self):
        self.requests = []
        self.cancelled = threading.Event()

    def Generate(self, request, context):
        self.requests.append(request)
        if request.text == "forever":
            context.add_callback(self.cancelled.set)  # runs when the RPC ends: here, the client's cancel
            while context.is_active():
                yield inference_pb2.GenerateResponse(text_delta="x")
                self.cancelled.wait(0.01)
            return
        yield inference_pb2.GenerateResponse(index=0, text_delta="Hi")
        yield inference_pb2.GenerateResponse(index=0, text_delta="!")
        yield inference_pb2.GenerateResponse(index=0, finished=_finished(text="Hi!"))

    def Tokenize(self, request, context):
        self.requests.append(request)
        return inference_pb2.TokenizeResponse(count=2, token_ids=[1, 2], pieces=["a", "b"])

    def LoadModel(self, request, context):
        self.requests.append(request)
        return inference_pb2.LoadedModel(model_id=request.model_id, quantization=request.quantization,
                                         backend=request.backend, dtype=request.dtype)

    def LoadAdapter(self, request, context):
        self.requests.append(request)
        return inference_pb2.LoadedAdapter(adapter_id=request.adapter_id, base_model_id=request.model_id or "base")


@pytest.fixture()
def served():
    servicer = FakeServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with InferenceClient(f"127.0.0.1:{port}", timeout=10) as client:
            yield client, servicer
    finally:
        server.stop(None)


def test_client_chat_tokenize_and_load_over_grpc(served):
    client, servicer = served
    text, finished = client.chat(MODEL, [("user", "hello")], temperature=0, max_new_tokens=5)
    assert text == "Hi!" and finished.finish_reason == inference_pb2.FINISH_REASON_EOS
    sent = servicer.requests[-1]
    assert sent.sampling.HasField("temperature") and not sent.sampling.HasField("top_p")
    tok = client.tokenize(MODEL, messages=[{"role": "user", "content": "hi"}], add_generation_prompt=False)
    assert tok.count == 2
    assert servicer.requests[-1].HasField("add_generation_prompt") and not servicer.requests[-1].add_generation_prompt
    client.tokenize(MODEL, text="hi")
    assert not servicer.requests[-1].HasField("add_generation_prompt")
    loaded = client.load_model(MODEL, quantization="nf4", backend="vllm", double_quant=True)
    assert loaded.quantization.type == common_pb2.QUANTIZATION_NF4 and loaded.quantization.double_quant
    assert loaded.backend == inference_pb2.BACKEND_VLLM and loaded.dtype == "auto"
    assert client.load_adapter("ad-1").base_model_id == "base"


def test_client_generate_returns_a_cancellable_call(served):
    client, servicer = served
    call = client.generate(MODEL, text="forever")
    assert next(call).text_delta == "x"
    assert call.cancel()
    assert servicer.cancelled.wait(5), "the server never saw the cancellation"
    with pytest.raises(grpc.RpcError) as info:
        for _ in call:
            pass
    assert info.value.code() == grpc.StatusCode.CANCELLED
