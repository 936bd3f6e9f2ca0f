"""Fast tests of the client CLI: formatting helpers, request files + flags -> StartTrainingRequest, and the
command logic against an in-memory fake client (no server, no torch).

Run: .venv/bin/python -m pytest tests/unit/test_cli_format.py -q
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from lmforge import cli
from lmforge.cli import choices, console, parser, trainer_commands
from lmforge.cli import format as fmt
from lmforge.cli.train_request import apply_train_overrides, build_train_request
from lmforge.client import (
    is_terminal,
    load_request_file,
    parse_checkpoint_kind,
    parse_dataset_format,
    parse_job_state,
    to_start_training_request,
)
from lmforge.v1 import common_pb2, trainer_pb2

ROOT = Path(__file__).resolve().parents[2]
SFT_LORA = ROOT / "examples" / "jobs" / "sft_lora.yaml"


# ------------------------------------------------------------------------------------------ formatting


@pytest.mark.parametrize(
    "seconds, expected",
    [(0, "0:00"), (35, "0:35"), (35.4, "0:35"), (59.6, "1:00"), (125, "2:05"), (3725, "1:02:05"),
     (None, "?"), (-1, "?"), (float("nan"), "?"), (float("inf"), "?")],
)
def test_format_eta(seconds, expected):
    assert fmt.format_eta(seconds) == expected


def test_progress_line_full():
    values = {"loss": 1.2341, "learning_rate": 1.9e-4, "tokens_per_second": 3210.4, "progress": 0.42,
              "eta_seconds": 35.2}
    assert (fmt.format_progress_line(21, 50, values)
            == "42% step 21/50 loss 1.234 lr 1.9e-04 3,210 tok/s ETA 0:35")


def test_progress_line_derives_progress_from_steps_and_skips_missing_values():
    assert fmt.format_progress_line(50, 50, {}) == "100% step 50/50"
    assert fmt.format_progress_line(0, 50, {}) == "0% step 0/50"
    assert fmt.format_progress_line(5, 0, {"loss": 2.0}) == "step 5 loss 2.000"  # total unknown: no percentage
    assert fmt.format_progress_line(1, 4, {}) == "25% step 1/4"
    assert fmt.format_progress_line(1, 3, {"progress": 1.7}) == "100% step 1/3"  # clamped


def test_progress_fraction_drives_the_bar():
    assert fmt.progress_fraction(1, 4, {}) == 0.25
    assert fmt.progress_fraction(1, 4, {"progress": 0.9}) == 0.9  # the event's own value wins
    assert fmt.progress_fraction(3, 0, {}) is None  # unknown: an indeterminate bar
    assert (fmt.progress_fraction(9, 4, {}), fmt.progress_fraction(1, 4, {"progress": -1.0})) == (1.0, 0.0)


def test_metrics_and_event_lines():
    train = trainer_pb2.TrainingEvent(sequence=3, step=2, metrics=trainer_pb2.MetricsEvent(
        phase="train", values={"loss": 0.5}, total_steps=4))
    assert fmt.format_metrics_line(train) == "50% step 2/4 loss 0.500"
    ev = trainer_pb2.TrainingEvent(sequence=4, step=2, metrics=trainer_pb2.MetricsEvent(
        phase="eval", values={"eval_loss": 1.5, "eval_perplexity": 4.4817}))
    assert fmt.format_event_line(ev) == "eval step 2: eval_loss 1.5 eval_perplexity 4.482"

    state = trainer_pb2.TrainingEvent(sequence=1, state_change=trainer_pb2.StateChangeEvent(
        state=trainer_pb2.JOB_STATE_RUNNING, message="on cpu"))
    assert fmt.format_event_line(state) == "state: RUNNING (on cpu)"
    ckpt = trainer_pb2.TrainingEvent(sequence=9, step=20, checkpoint_saved=trainer_pb2.CheckpointSavedEvent(
        checkpoint=common_pb2.Checkpoint(id="ad-123", kind=common_pb2.ADAPTER, step=20)))
    assert fmt.format_event_line(ckpt) == "checkpoint saved: ad-123 (step 20, adapter)"
    log = trainer_pb2.TrainingEvent(sequence=2, log=trainer_pb2.LogEvent(level="WARNING", message="slow"))
    assert fmt.format_event_line(log) == "log [WARNING] slow"
    resumed = trainer_pb2.TrainingEvent(sequence=30, step=4, attempt=2, resumed=trainer_pb2.ResumedEvent(
        attempt=2, from_step=4, reason="worker died: killed by SIGKILL"))
    assert fmt.format_event_line(resumed) == ("resumed: attempt 2 from step 4 (worker died: killed by SIGKILL); "
                                              "later steps are run again")


def test_format_table():
    text = console.format_table(["ID", "STATE"], [["job-1", "RUNNING"], ["j2", None]])
    assert text.splitlines() == ["ID     STATE", "job-1  RUNNING", "j2"]
    assert console.format_table(["A"], []) == "A"
    # numbers right-aligned; wide (CJK) characters take two columns; a pipe never wraps a long cell
    text = console.format_table(["NAME", "STEP", "NOTE"], [["锻造炉", "3/40", "x" * 300], ["sft-1", "12/40", "ok"]])
    assert text.splitlines() == ["NAME     STEP  NOTE", "锻造炉   3/40  " + "x" * 300, "sft-1   12/40  ok"]


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_tables_on_a_terminal_are_coloured_unless_no_color(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    rows = [["job-1", "SUCCEEDED"], ["job-2", "FAILED"]]
    out = FakeTTY()
    console.print_table(["ID", "STATE"], rows, out=out)
    text = out.getvalue()
    assert "\x1b[1mID" in text  # bold header
    assert "job-1  \x1b[32mSUCCEEDED\x1b[0m\n" in text and "job-2  \x1b[1;31mFAILED" in text
    monkeypatch.setenv("NO_COLOR", "1")
    out = FakeTTY()
    console.print_table(["ID", "STATE"], rows, out=out)
    assert "\x1b" not in out.getvalue()
    assert [line.split() for line in out.getvalue().splitlines()] == [["ID", "STATE"], *rows]
    out = io.StringIO()  # a pipe: format_table's plain text
    console.print_table(["ID", "STATE"], rows, out=out)
    assert out.getvalue() == console.format_table(["ID", "STATE"], rows) + "\n"
    monkeypatch.setenv("COLUMNS", "20")  # a narrow terminal wraps long lines itself; cells are never cut or folded
    out = FakeTTY()
    long_id = "ad-20261201-080608-cc4c3c-final"
    console.print_table(["ID", "STATE", "STEP"], [[long_id, "SUCCEEDED", "40/40"]], out=out)
    assert out.getvalue().splitlines()[1].split() == [long_id, "SUCCEEDED", "40/40"]


def test_format_bytes_and_timestamp():
    assert fmt.format_bytes(512) == "512 B"
    assert fmt.format_bytes(1536) == "1.5 KiB"
    assert fmt.format_bytes(3 * 1024**3) == "3.0 GiB"
    from google.protobuf.timestamp_pb2 import Timestamp

    assert fmt.format_timestamp(Timestamp()) == "-"
    assert fmt.format_timestamp(Timestamp(seconds=86400)) == "1970-01-02 00:00:00"


def test_format_violation_and_validation_report():
    v = common_pb2.FieldViolation(row=7, field="messages[1].role", reason="bad role 'human'",
                                  hint="use system, user or assistant")
    assert fmt.format_violation(v) == "row 7  messages[1].role  bad role 'human'  hint: use system, user or assistant"
    assert fmt.format_violation(common_pb2.FieldViolation(row=2, reason="invalid JSON")) == "row 2  -  invalid JSON"
    request_level = common_pb2.FieldViolation(field="dataset_id", reason="empty")
    assert fmt.format_violation(request_level) == "file  dataset_id  empty"

    report = trainer_pb2.ValidationReport(ok=False, format=trainer_pb2.DATASET_FORMAT_MESSAGES, total_rows=12,
                                          valid_rows=11, bad_rows=1, violations=[v])
    lines = fmt.validation_report_lines(report)
    assert lines[0].startswith("row 7  messages[1].role")
    assert lines[-2:] == ["format MESSAGES: 12 rows, 11 valid, 1 bad", "not ok"]


def test_job_outcome_lines():
    ok = trainer_pb2.Job(id="j", state=trainer_pb2.JOB_STATE_SUCCEEDED, result_checkpoint_id="ad-9")
    assert fmt.job_outcome_lines(ok) == ["final state: SUCCEEDED", "result checkpoint: ad-9"]
    failed = trainer_pb2.Job(id="j", state=trainer_pb2.JOB_STATE_FAILED, error=common_pb2.ErrorDetail(
        code="INVALID_ARGUMENT", message="3 bad rows",
        violations=[common_pb2.FieldViolation(row=4, field="messages", reason="missing")], log_tail="a\nb\n"))
    assert fmt.job_outcome_lines(failed) == [
        "final state: FAILED", "error: INVALID_ARGUMENT: 3 bad rows", "  row 4  messages  missing",
        "log tail:", "  a", "  b"]


class FakeRpcError(grpc.RpcError):
    def __init__(self, code, details, trailers=()):
        self._code, self._details, self._trailers = code, details, trailers

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailers


def test_format_rpc_error_without_details():
    err = FakeRpcError(grpc.StatusCode.NOT_FOUND, "job 'x' not found")
    assert fmt.format_rpc_error(err) == ["error: NOT_FOUND: job 'x' not found"]


def test_format_rpc_error_decodes_bad_request_and_error_detail():
    status_pb2 = pytest.importorskip("google.rpc.status_pb2")
    error_details_pb2 = pytest.importorskip("google.rpc.error_details_pb2")
    status = status_pb2.Status(code=3, message="bad request")
    bad = error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field="hyperparameters.batch_size", description="must be > 0")])
    status.details.add().Pack(bad)
    status.details.add().Pack(common_pb2.ErrorDetail(violations=[
        common_pb2.FieldViolation(row=3, field="messages", reason="missing", hint="add messages")]))
    err = FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "bad request",
                       (("grpc-status-details-bin", status.SerializeToString()),))
    assert fmt.format_rpc_error(err) == [
        "error: INVALID_ARGUMENT: bad request",
        "  hyperparameters.batch_size: must be > 0",
        "  row 3  messages  missing  hint: add messages",
    ]
    # A garbled trailer never hides the error itself.
    err = FakeRpcError(grpc.StatusCode.INTERNAL, "boom", (("grpc-status-details-bin", b"\xff\xff"),))
    assert fmt.format_rpc_error(err)[0] == "error: INTERNAL: boom"


def test_enum_parsing():
    assert parse_job_state("running") == trainer_pb2.JOB_STATE_RUNNING
    assert parse_job_state("JOB_STATE_FAILED") == trainer_pb2.JOB_STATE_FAILED
    assert parse_job_state(4) == trainer_pb2.JOB_STATE_SUCCEEDED
    assert parse_dataset_format("messages") == trainer_pb2.DATASET_FORMAT_MESSAGES
    assert parse_dataset_format("prompt-completion") == trainer_pb2.DATASET_FORMAT_PROMPT_COMPLETION
    assert parse_dataset_format("auto") == 0
    assert parse_checkpoint_kind("adapter") == common_pb2.ADAPTER
    assert parse_checkpoint_kind("base") == common_pb2.BASE_MODEL
    assert parse_checkpoint_kind("") == 0
    with pytest.raises(ValueError, match="expected one of"):
        parse_job_state("sleeping")
    assert is_terminal("succeeded") and is_terminal(trainer_pb2.JOB_STATE_CANCELLED)
    assert not is_terminal(trainer_pb2.JOB_STATE_RUNNING)


# ------------------------------------------------------------------- choices from the proto, and help


def _choices(argv: list[str], dest: str) -> list[str]:
    """The choices of option `dest` of the subcommand reached by `argv`."""
    current = parser.build_parser()
    for word in argv:
        sub = next(a for a in current._actions if isinstance(a, argparse._SubParsersAction))
        current = sub.choices[word]
    action = next(a for a in current._actions if a.dest == dest)
    return list(action.choices)


def test_choice_lists_come_from_the_proto_descriptors():
    oneof = trainer_pb2.StartTrainingRequest.DESCRIPTOR.oneofs_by_name["method"]
    assert choices.METHODS == tuple(f.name for f in oneof.fields)
    assert {"sft", "dpo", "grpo", "ppo", "distill", "continued_pretrain"} <= set(choices.METHODS)
    assert _choices(["train"], "method") == [*choices.METHODS, "continued-pretrain"]

    def short(enum_type, prefix):
        return [n.removeprefix(prefix).lower() for n in enum_type.keys() if not n.endswith("UNSPECIFIED")]

    assert _choices(["train"], "loss") == short(trainer_pb2.PreferenceLoss, "PREFERENCE_LOSS_") == [
        "sigmoid", "ipo", "hinge", "orpo", "simpo", "kto"]
    assert _choices(["train"], "adapter") == short(common_pb2.AdapterType, "ADAPTER_") == ["full", "lora", "qlora"]
    from lmforge.v1 import inference_pb2

    quantizations = short(common_pb2.QuantizationType, "QUANTIZATION_")
    assert quantizations == ["none", "int8", "nf4", "fp4"]
    backends = short(inference_pb2.Backend, "BACKEND_")
    for argv in (["chat"], ["models", "load"]):
        assert (_choices(argv, "quantization"), _choices(argv, "backend")) == (quantizations, backends)
    assert _choices(["checkpoints"], "kind") == ["base", "full", "adapter", "reward_model"]
    assert set(choices.JOB_STATES) == set(short(trainer_pb2.JobState, "JOB_STATE_"))
    assert list(choices.DATASET_FORMATS)[:2] == ["auto", "messages"] and "preference" in choices.DATASET_FORMATS
    # the methods a flag applies to are those whose spec has its field
    assert (choices.VOCABULARY_METHODS, choices.PREFERENCE_METHODS) == (("continued_pretrain", "sft"), ("dpo",))
    assert (choices.REWARD_MODEL_METHODS, choices.TEACHER_METHODS) == (("ppo",), ("distill",))


@pytest.mark.parametrize("argv", [
    [], ["train"], ["jobs"], ["jobs", "list"], ["jobs", "get"], ["jobs", "cancel"], ["metrics"], ["checkpoints"],
    ["evaluate"], ["datasets"], ["datasets", "upload"], ["datasets", "list"], ["datasets", "validate"], ["chat"],
    ["models"], ["models", "list"], ["models", "load"], ["models", "unload"], ["models", "load-adapter"],
    ["models", "unload-adapter"], ["tokens"],
])
def test_every_help_works(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parser.build_parser().parse_args([*argv, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: lmforge {' '.join(argv)}".rstrip()), out
    if argv == ["train"]:
        assert "{sigmoid,ipo,hinge,orpo,simpo,kto}" in out and "{full,lora,qlora}" in out
    if argv == ["datasets", "validate"]:
        assert "unpaired_preference" in out and "continued_pretrain" in out  # formats and methods listed


# -------------------------------------------------------------------- request file + flags -> request


def _train_args(*flags: str) -> argparse.Namespace:
    return parser.build_parser().parse_args(["train", *flags])


def test_sample_yaml_parses_into_start_training_request():
    data = load_request_file(SFT_LORA)
    req = build_train_request(data, _train_args("--dataset", "ds-1"))
    assert req.base_model_id == "smollm2-135m-instruct"
    assert req.dataset_id == "ds-1"
    assert req.WhichOneof("method") == "sft"
    assert req.adapter.type == common_pb2.ADAPTER_LORA and req.adapter.rank == 16
    assert not req.adapter.HasField("alpha")
    hp = req.hyperparameters
    assert (hp.max_steps, hp.batch_size, hp.max_seq_length, hp.logging_steps) == (40, 4, 256, 1)
    assert hp.HasField("learning_rate") and hp.learning_rate == pytest.approx(2e-4)
    assert req.checkpoints.every_steps == 20
    assert len(req.request_id) == 32 and int(req.request_id, 16) >= 0  # uuid4 hex, for idempotent retries


def test_flags_override_file_values():
    data = load_request_file(SFT_LORA)
    args = _train_args("--base-model", "tiny", "--dataset", "ds-2", "--adapter", "qlora", "--rank", "8",
                       "--alpha", "32", "--max-steps", "3", "--lr", "1e-4", "--batch-size", "2", "--grad-accum", "2",
                       "--max-seq-length", "128", "--packing", "--seed", "7", "--save-every", "1",
                       "--eval-split", "0.1", "--epochs", "2", "--name", "demo", "--label", "team=nlp")
    req = build_train_request(data, args)
    assert (req.base_model_id, req.dataset_id, req.display_name) == ("tiny", "ds-2", "demo")
    assert req.adapter.type == common_pb2.ADAPTER_QLORA
    assert (req.adapter.rank, req.adapter.alpha) == (8, 32.0)
    hp = req.hyperparameters
    assert (hp.max_steps, hp.batch_size, hp.gradient_accumulation_steps, hp.max_seq_length) == (3, 2, 2, 128)
    assert hp.learning_rate == pytest.approx(1e-4) and hp.packing and hp.seed == 7 and hp.num_epochs == 2.0
    assert hp.logging_steps == 1  # untouched file value survives
    assert req.checkpoints.every_steps == 1
    assert req.eval.split_ratio == pytest.approx(0.1)
    assert dict(req.labels) == {"team": "nlp"}
    assert data["hyperparameters"]["max_steps"] == 40  # the file dict itself is not modified


def test_flags_replace_camel_case_file_fields_and_method():
    data = {"baseModelId": "a", "datasetId": "d", "dpo": {"beta": 0.1},
            "hyperparameters": {"maxSteps": 9, "packing": True}}
    req = build_train_request(data, _train_args("--base-model", "b", "--max-steps", "2", "--no-packing",
                                                    "--method", "sft"))
    assert req.base_model_id == "b" and req.hyperparameters.max_steps == 2
    assert not req.hyperparameters.packing
    assert req.WhichOneof("method") == "sft"


def test_method_flags_go_into_the_method_body():
    req = build_train_request({"dpo": {"beta": 0.3}}, _train_args("--loss", "kto", "--eval-every", "5",
                                                                      "--early-stopping-patience", "2",
                                                                      "--metric-for-best", "rewards/margins"))
    assert req.dpo.loss == trainer_pb2.PREFERENCE_LOSS_KTO and req.dpo.beta == pytest.approx(0.3)
    assert (req.eval.every_steps, req.eval.early_stopping_patience, req.eval.metric_for_best) == (
        5, 2, "rewards/margins")
    req = build_train_request({}, _train_args("--method", "continued-pretrain", "--new-token", "锻造炉",
                                              "--new-token", "forgeweld"))
    assert list(req.continued_pretrain.vocabulary.new_tokens) == ["锻造炉", "forgeweld"]
    assert list(build_train_request({}, _train_args("--new-token", "x")).sft.vocabulary.new_tokens) == ["x"]
    with pytest.raises(ValueError, match="dpo method"):
        build_train_request({}, _train_args("--beta", "0.2"))
    req = build_train_request({"distill": {"teacher_model_id": "big"}}, _train_args("--teacher", "tiny-teacher"))
    assert req.distill.teacher_model_id == "tiny-teacher"
    with pytest.raises(ValueError, match="--teacher"):
        build_train_request({}, _train_args("--teacher", "x"))
    with pytest.raises(ValueError, match="--new-token"):
        build_train_request({}, _train_args("--method", "reward", "--new-token", "x"))


def test_method_defaults_to_sft_and_keeps_file_method_body():
    assert build_train_request({}, _train_args()).WhichOneof("method") == "sft"
    req = build_train_request({"sft": {"format": "DATASET_FORMAT_ALPACA"}}, _train_args("--method", "sft"))
    assert req.sft.format == trainer_pb2.DATASET_FORMAT_ALPACA
    req = build_train_request({"dpo": {"beta": 0.2}}, _train_args())
    assert req.WhichOneof("method") == "dpo" and req.dpo.beta == pytest.approx(0.2)


def test_json_request_file_and_unknown_field(tmp_path):
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"base_model_id": "m", "dataset_id": "d", "sft": {}, "request_id": "fixed"}))
    req = to_start_training_request(load_request_file(path))
    assert (req.base_model_id, req.request_id) == ("m", "fixed")
    with pytest.raises(json_format.ParseError):
        to_start_training_request({"base_model": "typo"})


# --------------------------------------------------------------------- commands against a fake client


def _event(seq, **payload):
    return trainer_pb2.TrainingEvent(sequence=seq, job_id="job-1", **payload)


def _events(final_state):
    return [
        _event(1, state_change=trainer_pb2.StateChangeEvent(state=trainer_pb2.JOB_STATE_RUNNING)),
        _event(2, step=1, metrics=trainer_pb2.MetricsEvent(phase="train", values={"loss": 2.0}, total_steps=2)),
        _event(3, step=2, metrics=trainer_pb2.MetricsEvent(phase="train", values={"loss": 1.0}, total_steps=2)),
        _event(4, step=2, checkpoint_saved=trainer_pb2.CheckpointSavedEvent(
            checkpoint=common_pb2.Checkpoint(id="ad-1", kind=common_pb2.ADAPTER, step=2, is_final=True))),
        _event(5, step=2, state_change=trainer_pb2.StateChangeEvent(state=final_state)),
    ]


class FakeClient:
    def __init__(self, final_state=trainer_pb2.JOB_STATE_SUCCEEDED):
        self.final_state = final_state
        self.started: list[trainer_pb2.StartTrainingRequest] = []
        self.uploaded: list[str] = []

    def upload_dataset(self, path, name=None):
        self.uploaded.append(str(path))
        return trainer_pb2.Dataset(id="ds-uploaded", name=Path(path).name, size_bytes=10)

    def start_training(self, request):
        self.started.append(request)
        return trainer_pb2.Job(id="job-1", state=trainer_pb2.JOB_STATE_VALIDATING)

    def stream_metrics(self, job_id, after_sequence=0, follow=True):
        return iter([e for e in _events(self.final_state) if e.sequence > after_sequence])

    def get_job(self, job_id):
        job = trainer_pb2.Job(id=job_id, state=self.final_state)
        if self.final_state == trainer_pb2.JOB_STATE_SUCCEEDED:
            job.result_checkpoint_id = "ad-1"
        else:
            job.error.CopyFrom(common_pb2.ErrorDetail(code="INTERNAL", message="worker died"))
        return job


def test_follow_job_non_tty_prints_one_line_per_event_and_outcome():
    out = io.StringIO()
    assert trainer_commands.follow_job(FakeClient(), "job-1", out=out) == 0
    assert out.getvalue().splitlines() == [
        "state: RUNNING",
        "50% step 1/2 loss 2.000",
        "100% step 2/2 loss 1.000",
        "checkpoint saved: ad-1 (step 2, adapter, final)",
        "state: SUCCEEDED",
        "final state: SUCCEEDED",
        "result checkpoint: ad-1",
    ]


def test_follow_job_tty_redraws_one_progress_bar(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")  # cursor moves only, no colour codes
    out = FakeTTY()
    assert trainer_commands.follow_job(FakeClient(), "job-1", after=1, out=out) == 0
    text = out.getvalue()
    half, full = "━" * 12 + " " * 12, "━" * 24  # rich's 24-wide bar at 50% and 100% (no colour: blank rest)
    assert text.startswith(f"\x1b[?25l{half} 50% step 1/2 loss 2.000\r\x1b[2K")  # cursor hidden, bar drawn ...
    assert f"\r\x1b[2K{full} 100% step 2/2 loss 1.000" in text  # ... and redrawn in place ("\r" + erase line)
    assert "loss 2.000\n" not in text  # never a line of its own
    assert "\r\x1b[2Kcheckpoint saved: ad-1 (step 2, adapter, final)\n" in text  # printed above the bar
    assert text.index("50% step 1/2") < text.index("checkpoint saved") < text.rindex("100% step 2/2")
    assert text.endswith(f"\r\x1b[2K{full} 100% step 2/2 loss 1.000\n\x1b[?25h"  # the last bar stays
                         "final state: SUCCEEDED\nresult checkpoint: ad-1\n")
    assert "state: RUNNING" not in text  # after=1 skips sequence 1


def test_follow_job_tty_colours_states(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    out = FakeTTY()
    assert trainer_commands.follow_job(FakeClient(trainer_pb2.JOB_STATE_FAILED), "job-1", out=out) == 1
    text = out.getvalue()
    assert "\x1b[36mstate: RUNNING\x1b[0m" in text and "\x1b[1;31mstate: FAILED\x1b[0m" in text
    assert "\x1b[32mcheckpoint saved: ad-1 (step 2, adapter, final)\x1b[0m" in text
    assert "\x1b[36m" + "━" * 12 + "\x1b[0m" in text and "50% step 1/2 loss 2.000" in text  # half done: cyan
    assert "\x1b[32m" + "━" * 24 + "\x1b[0m 100% step 2/2 loss 1.000\n" in text  # finished: green
    assert text.endswith("final state: FAILED\nerror: INTERNAL: worker died\n")


def test_follow_job_json_mode_and_failure_exit_code():
    out = io.StringIO()
    assert trainer_commands.follow_job(FakeClient(trainer_pb2.JOB_STATE_FAILED), "job-1", json_mode=True, out=out) == 1
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["sequence"] for line in lines[:-1]] == ["1", "2", "3", "4", "5"]
    assert lines[-1]["state"] == "JOB_STATE_FAILED" and lines[-1]["error"]["message"] == "worker died"

    out = io.StringIO()
    assert trainer_commands.follow_job(FakeClient(trainer_pb2.JOB_STATE_CANCELLED), "job-1", out=out) == 1
    assert "final state: CANCELLED" in out.getvalue()


def test_cmd_train_uploads_local_dataset_and_prints_job_id(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": []}\n')
    client = FakeClient()
    args = parser.build_parser().parse_args(["train", "-f", str(SFT_LORA), "--dataset", str(data), "--max-steps", "3"])
    assert trainer_commands.cmd_train(client, args) == 0
    assert client.uploaded == [str(data)]
    (req,) = client.started
    assert req.dataset_id == "ds-uploaded" and req.hyperparameters.max_steps == 3
    assert capsys.readouterr().out.splitlines()[0] == "job-1"


def test_cmd_train_without_dataset_is_a_usage_error(capsys):
    args = parser.build_parser().parse_args(["train", "-f", str(SFT_LORA)])
    assert trainer_commands.cmd_train(FakeClient(), args) == 2
    assert "--dataset" in capsys.readouterr().err


def test_global_options_work_after_the_subcommand(monkeypatch):
    monkeypatch.setenv("LMFORGE_TRAINER_ADDRESS", "envhost:1")
    args = parser.build_parser().parse_args(["jobs", "list", "--json", "--address", "h:2"])
    assert (args.json, args.address) == (True, "h:2")
    args = parser.build_parser().parse_args(["jobs", "list"])
    assert (args.json, args.address) == (False, "envhost:1")


def test_main_reports_local_errors_with_exit_2(tmp_path, capsys):
    assert cli.main(["--address", "127.0.0.1:1", "train", "-f", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


# ------------------------------------------------------------------------------- evaluation and BEST


def _evaluation(job_id, **metrics):
    return common_pb2.EvaluationResult(job_id=job_id, dataset_id="ds-1", metrics=metrics, samples=4)


def test_format_evaluation_summary():
    assert (fmt.format_evaluation_summary({"bleu": 31.234, "rougeL": 0.4512, "exact_match": 0.5, "rouge1": 0.6,
                                           "f1": 0.625})
            == "em 0.50 f1 0.62 bleu 31.2 rougeL 0.45")
    assert fmt.format_evaluation_summary({"perplexity": 12.345}) == "ppl 12.3"
    assert fmt.format_evaluation_summary({"accuracy": 0.75, "macro_f1": 0.7777}) == "acc 0.75 macro_f1 0.78"
    assert fmt.format_evaluation_summary({}) == "-"


def test_checkpoint_rows_show_best_and_the_newest_evaluation():
    ckpts = [
        common_pb2.Checkpoint(id="ad-1", kind=common_pb2.ADAPTER, base_model_id="tiny", method="sft", job_id="j",
                              step=3, is_best=True, size_bytes=2048, evaluations=[
                                  _evaluation("e1", perplexity=99.0), _evaluation("e2", bleu=31.2, rougeL=0.45,
                                                                                  exact_match=0.5)]),
        common_pb2.Checkpoint(id="ad-2", kind=common_pb2.ADAPTER, base_model_id="tiny", method="sft", job_id="j",
                              step=6, is_final=True),
    ]
    text = console.format_table(fmt.CHECKPOINT_HEADERS, fmt.checkpoint_rows(ckpts))
    header, first, second = text.splitlines()
    assert header.split() == ["ID", "KIND", "BASE", "MODEL", "METHOD", "JOB", "STEP", "FINAL", "BEST", "SIZE",
                              "CREATED", "EVAL"]
    assert first.startswith("ad-1") and first.endswith("em 0.50 bleu 31.2 rougeL 0.45")
    assert "yes" in first.split() and "2.0 KiB" in first
    row = fmt.checkpoint_rows(ckpts)[1]
    assert row[fmt.CHECKPOINT_HEADERS.index("FINAL")] == "yes"
    assert row[fmt.CHECKPOINT_HEADERS.index("BEST")] == ""
    assert row[fmt.CHECKPOINT_HEADERS.index("EVAL")] == "-"


def test_cmd_checkpoints_json_is_unchanged(capsys):
    ckpt = common_pb2.Checkpoint(id="ad-1", kind=common_pb2.ADAPTER, is_best=True,
                                 evaluations=[_evaluation("e1", bleu=10.0)])

    class Client:
        def list_checkpoints(self, **kw):
            return [ckpt]

    args = parser.build_parser().parse_args(["checkpoints", "--json"])
    assert trainer_commands.cmd_checkpoints(Client(), args) == 0
    line = capsys.readouterr().out.strip()
    assert json.loads(line) == json.loads(fmt.to_json(ckpt))


def test_evaluation_rows_and_find_evaluation():
    rows = fmt.evaluation_rows({"rougeL": 0.25, "bleu": 53.7285, "zeta": 1.0, "exact_match": 0.5, "rouge1": 0.5})
    assert rows == [("exact_match", "0.5"), ("bleu", "53.73"), ("rouge1", "0.5"), ("rougeL", "0.25"), ("zeta", "1")]

    job = trainer_pb2.Job(id="e2", result_checkpoint_id="ad-1", latest_metrics={"bleu": 1.0, "progress": 1.0,
                                                                                "samples": 4.0})
    ckpts = [common_pb2.Checkpoint(id="other", evaluations=[_evaluation("e2", bleu=9.0)]),
             common_pb2.Checkpoint(id="ad-1", evaluations=[_evaluation("e1", bleu=5.0), _evaluation("e2", bleu=7.0)])]
    assert fmt.find_evaluation(ckpts, job) == ({"bleu": 7.0}, 4)
    assert fmt.find_evaluation([], job) == ({"bleu": 1.0}, 4)  # not in the store: the job's latest metrics


def test_evaluate_progress_events_print_as_a_progress_line():
    event = trainer_pb2.TrainingEvent(sequence=5, step=1, metrics=trainer_pb2.MetricsEvent(
        phase="eval", values={"progress": 0.5, "eta_seconds": 4.0}, total_steps=2))
    assert fmt.format_event_line(event) == "eval 50% step 1/2 ETA 0:04"
    final = trainer_pb2.TrainingEvent(sequence=6, step=2, metrics=trainer_pb2.MetricsEvent(
        phase="eval", values={"progress": 1.0, "bleu": 12.5}, total_steps=2))
    assert fmt.format_event_line(final) == "eval step 2: bleu 12.5 progress 1"


class FakeEvalClient(FakeClient):
    def __init__(self):
        super().__init__()
        self.evaluations: list[tuple] = []

    def evaluate(self, model_id, dataset_id, **kw):
        self.evaluations.append((model_id, dataset_id, kw))
        return trainer_pb2.Job(id="job-1", method="evaluate", state=trainer_pb2.JOB_STATE_VALIDATING)

    def get_job(self, job_id):
        job = super().get_job(job_id)
        job.method = "evaluate"
        job.evaluation.CopyFrom(trainer_pb2.EvaluateRequest(model_id="tiny", adapter_id="ad-1", dataset_id="ds-1",
                                                            metrics=["bleu"]))
        return job

    def list_checkpoints(self, **kw):
        return [common_pb2.Checkpoint(id="ad-1", evaluations=[_evaluation("job-1", bleu=31.25, rougeL=0.5)])]


def test_cmd_evaluate_uploads_sends_flags_follows_and_prints_results(tmp_path, capsys):
    data = tmp_path / "qa.jsonl"
    data.write_text('{"prompt": "q", "completion": "a"}\n')
    client = FakeEvalClient()
    args = parser.build_parser().parse_args(["evaluate", "tiny", "--dataset", str(data), "--adapter", "ad-1",
                                          "--metric", "bleu,rouge", "--metric", "exact_match", "--max-new-tokens",
                                          "8", "--max-samples", "4", "--format", "prompt_completion", "--follow"])
    assert trainer_commands.cmd_evaluate(client, args) == 0
    (model_id, dataset_id, kw), = client.evaluations
    assert (model_id, dataset_id) == ("tiny", "ds-uploaded")
    assert kw["adapter_id"] == "ad-1" and kw["metrics"] == ["bleu", "rouge", "exact_match"]
    assert (kw["max_new_tokens"], kw["max_samples"], kw["batch_size"]) == (8, 4, 0)
    assert kw["format"] == trainer_pb2.DATASET_FORMAT_PROMPT_COMPLETION
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "job-1" and "final state: SUCCEEDED" in lines
    assert lines[-4:] == ["evaluation of ad-1 on ds-uploaded (4 rows):", "METRIC  VALUE", "bleu    31.25",
                          "rougeL  0.5"]


def test_cmd_evaluate_requires_a_dataset(capsys):
    with pytest.raises(SystemExit):
        parser.build_parser().parse_args(["evaluate", "tiny"])
    assert "--dataset" in capsys.readouterr().err


def test_jobs_get_shows_the_evaluated_model_adapter_and_dataset(capsys):
    args = parser.build_parser().parse_args(["jobs", "get", "job-1"])
    assert trainer_commands.cmd_jobs(FakeEvalClient(), args) == 0
    rows = {line.split("  ")[0]: line.split()[-1] for line in capsys.readouterr().out.splitlines()[1:]}
    assert (rows["model"], rows["adapter"], rows["dataset"], rows["metrics"]) == ("tiny", "ad-1", "ds-1", "bleu")
    assert "base model" not in rows


# ------------------------------------------------------------------------------ RL rollout samples


def _rollouts_event(seq=6, step=3):
    return _event(seq, step=step, rollouts=trainer_pb2.RolloutSamplesEvent(samples=[
        trainer_pb2.RolloutSample(prompt="3+4=", completions=[
            trainer_pb2.RolloutCompletion(text="7", reward=1.2, rewards={"numeric_match": 1.0,
                                                                         "language_consistency": 1.0}),
            trainer_pb2.RolloutCompletion(text="eight\nor nine " + "x" * 300, reward=0.2,
                                          rewards={"numeric_match": 0.0, "language_consistency": 1.0}),
        ]),
        trainer_pb2.RolloutSample(prompt="二加二等于几？", completions=[
            trainer_pb2.RolloutCompletion(text="", reward=0.0, rewards={"numeric_match": 0.0}),
            trainer_pb2.RolloutCompletion(text="四", reward=0.0, rewards={"numeric_match": 0.0}),
        ]),
    ]))


def test_rollouts_summary_line_and_full_samples():
    event = _rollouts_event()
    assert fmt.format_event_line(event) == \
        "rollouts step 3: 2 prompt(s) x 2 completions, mean reward 0.35 (--samples shows them)"
    lines = fmt.format_rollouts_lines(event, max_chars=40)
    assert lines[:5] == [
        "rollouts step 3:",
        "  prompt: 3+4=",
        "    [1] reward 1.2 (language_consistency 1, numeric_match 1)",
        "        7",
        "    [2] reward 0.2 (language_consistency 1, numeric_match 0)",
    ]
    assert lines[5] == "        eight⏎or nine " + "x" * 25 + "…" and len(lines[5].strip()) == 40
    assert lines[6:] == ["  prompt: 二加二等于几？", "    [1] reward 0 (numeric_match 0)", "        (empty)",
                         "    [2] reward 0 (numeric_match 0)", "        四"]


class RolloutsClient(FakeClient):
    def stream_metrics(self, job_id, after_sequence=0, follow=True):
        events = _events(self.final_state)
        return iter([*events[:3], _rollouts_event(), *events[3:]])


def test_metrics_samples_flag_prints_rollouts_in_full():
    args = parser.build_parser().parse_args(["metrics", "job-1", "--samples"])
    assert args.samples is True
    out = io.StringIO()
    assert trainer_commands.follow_job(RolloutsClient(), "job-1", out=out, samples=True) == 0
    text = out.getvalue().splitlines()
    assert text[3:6] == ["rollouts step 3:", "  prompt: 3+4=", "    [1] reward 1.2 (language_consistency 1, "
                                                                  "numeric_match 1)"]
    out = io.StringIO()
    assert trainer_commands.follow_job(RolloutsClient(), "job-1", out=out) == 0
    assert out.getvalue().splitlines()[3].startswith("rollouts step 3: 2 prompt(s) x 2 completions")


def test_rl_job_files_parse_and_the_reward_model_placeholder_must_be_set(tmp_path, capsys):
    jobs = Path(__file__).resolve().parents[2] / "examples" / "jobs"
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n')
    client = FakeClient()
    args = parser.build_parser().parse_args(["train", "-f", str(jobs / "grpo.yaml"), "--dataset", str(data)])
    assert trainer_commands.cmd_train(client, args) == 0
    (req,) = client.started
    assert req.WhichOneof("method") == "grpo" and req.grpo.num_generations == 4
    assert [r.name for r in req.grpo.rewards] == ["numeric_match", "language_consistency", "length_penalty"]

    args = parser.build_parser().parse_args(["train", "-f", str(jobs / "rloo.yaml"), "--dataset", str(data)])
    assert trainer_commands.cmd_train(FakeClient(), args) == 2
    assert "ppo.reward_model_id is still the placeholder" in capsys.readouterr().err
    client = FakeClient()
    args = parser.build_parser().parse_args(["train", "-f", str(jobs / "rloo.yaml"), "--dataset", str(data),
                                          "--reward-model", "rm-1"])
    assert trainer_commands.cmd_train(client, args) == 0
    (req,) = client.started
    assert req.WhichOneof("method") == "ppo" and req.ppo.reward_model_id == "rm-1"
    with pytest.raises(ValueError, match="--reward-model applies to the ppo method"):
        apply_train_overrides({"grpo": {}}, parser.build_parser().parse_args(
            ["train", "--method", "grpo", "--reward-model", "rm-1"]))
