"""Worker events -> TrainingEvent protos (services/trainer/convert.py), including RL rollout samples."""

from __future__ import annotations

from lmforge.v1 import trainer_pb2
from services.trainer.convert import event_to_proto
from services.trainer.jobdb import Event


def test_rollout_samples_keep_every_completion_and_reward():
    data = {"round": 2, "samples": [
        {"prompt": "3+4=", "completions": [
            {"text": "7", "reward": 1.5, "rewards": {"exact_match": 1.0, "length_penalty": 0.5}},
            {"text": "八", "reward": 0.0, "rewards": {"exact_match": 0.0, "length_penalty": 0.0}}]},
        {"prompt": "你好", "completions": [{"text": "你好！", "reward": 1, "rewards": {}}]}]}
    proto = event_to_proto(Event(job_id="j", sequence=9, time=1.0, step=4, kind="rollouts", data=data))
    assert proto.WhichOneof("payload") == "rollouts" and proto.step == 4 and proto.rollouts.round == 2
    first, second = proto.rollouts.samples
    assert first.prompt == "3+4=" and [c.text for c in first.completions] == ["7", "八"]
    assert first.completions[0].reward == 1.5 and dict(first.completions[0].rewards) == {
        "exact_match": 1.0, "length_penalty": 0.5}
    assert second.completions[0].reward == 1.0


def test_log_events_become_log_lines():
    proto = event_to_proto(Event(job_id="j", sequence=1, time=1.0, step=0, kind="log",
                                 data={"level": "warning", "message": "reward exact_match raised on sample 3"}))
    assert proto.WhichOneof("payload") == "log"
    assert proto.log == trainer_pb2.LogEvent(level="warning", message="reward exact_match raised on sample 3")


def test_unknown_kinds_still_arrive_as_log_lines():
    # A kind this server does not know (e.g. written by a newer worker into the same jobs.db) is not dropped:
    # it arrives as a log line with its level and message, and an "info" level when it has none.
    proto = event_to_proto(Event(job_id="j", sequence=7, time=2.5, step=3, kind="profiler_trace",
                                 data={"level": "debug", "message": "step 3 took 1.2 s", "trace": [1, 2]}))
    assert proto.WhichOneof("payload") == "log"
    assert (proto.job_id, proto.sequence, proto.step) == ("j", 7, 3)
    assert proto.log == trainer_pb2.LogEvent(level="debug", message="step 3 took 1.2 s")
    bare = event_to_proto(Event(job_id="j", sequence=8, time=2.5, step=3, kind="heartbeat", data={}))
    assert bare.WhichOneof("payload") == "log"
    assert bare.log == trainer_pb2.LogEvent(level="info", message="")
