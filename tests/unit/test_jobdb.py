"""Job persistence: gap-free per-job sequences under concurrent writers, and nothing lost on reopen."""

from __future__ import annotations

import threading

from services.trainer.jobdb import ErrorInfo, Job, JobDB, JobState


def _job(job_id: str, created_at: float) -> Job:
    return Job(id=job_id, request_id="", method="sft", display_name=job_id, state=JobState.VALIDATING,
               created_at=created_at, request_blob=b"\x01\x02", spec_json="{}")


def test_sequences_are_gap_free_under_concurrent_appends(tmp_path):
    db = JobDB(tmp_path / "jobs.db")
    for name in ("a", "b"):
        db.insert_job(_job(name, 1.0))

    def append(job_id: str) -> None:
        for i in range(100):
            db.append_event(job_id, "metrics", {"values": {"loss": float(i)}}, step=i, current_step=i)

    threads = [threading.Thread(target=append, args=(name,)) for name in ("a", "b", "a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name in ("a", "b"):
        events = db.events_after(name, 0, limit=1000)
        assert [e.sequence for e in events] == list(range(1, 201))
        assert db.get_job(name).last_sequence == 200
    assert [e.sequence for e in db.events_after("a", 150, limit=1000)] == list(range(151, 201))


def test_jobs_and_events_survive_reopening(tmp_path):
    path = tmp_path / "jobs.db"
    db = JobDB(path)
    db.insert_job(_job("job-1", 1.0))
    db.append_event("job-1", "state", {"state": "FAILED"}, state=JobState.FAILED,
                    error=ErrorInfo("INVALID_ARGUMENT", "bad rows", [{"row": 3, "field": "messages",
                                                                      "reason": "missing", "hint": "add it"}]),
                    checkpoint_ids=["c1"], latest_metrics={"loss": 2.0})
    db.close()
    again = JobDB(path)
    job = again.get_job("job-1")
    assert job.state is JobState.FAILED and job.error.violations[0]["row"] == 3
    assert job.checkpoint_ids == ["c1"] and job.latest_metrics == {"loss": 2.0}
    assert job.request_blob == b"\x01\x02"
    assert [e.data for e in again.events_after("job-1", 0)] == [{"state": "FAILED"}]


def test_listing_pages_newest_first(tmp_path):
    db = JobDB(tmp_path / "jobs.db")
    for i in range(5):
        db.insert_job(_job(f"job-{i}", float(i // 2)))  # ties on created_at are ordered by id
    first = db.list_jobs(limit=2)
    second = db.list_jobs(limit=2, before=(first[-1].created_at, first[-1].id))
    third = db.list_jobs(limit=2, before=(second[-1].created_at, second[-1].id))
    ids = [j.id for j in first + second + third]
    assert ids == ["job-4", "job-3", "job-2", "job-1", "job-0"]
    assert [j.id for j in db.list_jobs(states=[JobState.QUEUED])] == []
