"""The exit-code contract: 0 done, 75 preempted (from the run directory's record of this launch), else failed."""

import json

from medscale.launcher.outcome import contract_code, finished_since, preemption_record


def test_the_contract_in_closed_form():
    now = 1000.0
    fresh, old = {"epoch_s": now + 30}, {"epoch_s": now - 3600}
    assert contract_code(0, None, now) == 0
    assert contract_code(0, fresh, now) == 0  # restarted in place after a 75, then finished
    assert contract_code(1, fresh, now) == 75  # torchrun turns a worker's 75 into 1
    assert contract_code(-15, fresh, now) == 75
    assert contract_code(1, old, now) == 1  # an earlier attempt's record says nothing about this one
    assert contract_code(75, None, now) == 1  # nothing says it saved
    assert contract_code(-9, None, now) == 137
    assert contract_code(2, None, now) == 2
    assert contract_code(1, None, now, done=True) == 0  # a signal after the last step (a late spot notice)


def test_a_done_event_counts_only_when_this_launch_wrote_it(tmp_path):
    assert not finished_since(str(tmp_path), {}, 1000.0)
    events = [{"event": "start", "time": 990.0}, {"event": "done", "time": 1010.0, "step": 12}, "not json"]
    (tmp_path / "log.jsonl").write_text("\n".join(e if isinstance(e, str) else json.dumps(e) for e in events))
    assert finished_since(str(tmp_path), {}, 1000.0) and not finished_since(str(tmp_path), {}, 2000.0)


def test_the_record_is_read_from_the_run_directory_local_or_s3(tmp_path, s3_server):
    import s3fs

    assert preemption_record(str(tmp_path), {}) is None
    (tmp_path / "preempted.json").write_text(json.dumps({"step": 7, "epoch_s": 5.0}))
    assert preemption_record(str(tmp_path), {})["step"] == 7
    s3fs.S3FileSystem(**s3_server).pipe("medscale-test/run/preempted.json", b'{"step": 9}')
    assert preemption_record("s3://medscale-test/run", s3_server) == {"step": 9}
