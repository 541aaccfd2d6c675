"""The one fan-out helper: per-item errors, results as tasks finish, order kept by `ordered_map`, a moving bar."""

import os
import signal
import time

import pytest

from medscale.core.executor import (
    POOL_START_S,
    RAY_START_S,
    LocalExecutor,
    choose_executor,
    create_executor,
    fan_out,
    ordered_map,
)
from medscale.dedup.lsh import parse_verify  # a real function that fails on some items: run where Ray can import it

SPECS = ["dhash<=3", "ahash+dhash<=9", "bad", "phash<=1", "colour<=2", "ahash<=0"]


@pytest.mark.parametrize("kind", ["local", "pool", "ray"])
def test_fan_out_yields_every_item_once_with_its_own_error(kind, request):
    if kind == "ray":
        request.getfixturevalue("ray_local")
    executor = create_executor(kind, num_cpus=2)
    try:
        outcomes = list(fan_out(executor, parse_verify, SPECS, max_in_flight=2))
    finally:
        executor.close()
    assert sorted(item for item, _, _ in outcomes) == sorted(SPECS)
    results = {item: (result, error) for item, result, error in outcomes}
    assert "must look like" in str(results["bad"][1]) and "among" in str(results["colour<=2"][1])
    assert results["ahash+dhash<=9"] == ((("ahash", "dhash"), 9), None)
    assert sum(error is None for _, error in results.values()) == 4


def test_ordered_map_keeps_order_and_raises_the_first_error():
    assert ordered_map(LocalExecutor(), parse_verify, ["phash<=1", "dhash<=3"], progress=False) == [
        (("phash",), 1), (("dhash",), 3)]
    with pytest.raises(ValueError, match="must look like"):
        ordered_map(LocalExecutor(), parse_verify, ["dhash<=3", "bad"], progress=False)


def test_the_progress_bar_moves_as_items_finish(capsys):
    seen = []
    for item, _, _ in fan_out(LocalExecutor(), parse_verify, SPECS[:3], desc="work", unit="img",
                              weight=len):
        seen.append(item)
        if len(seen) == 1:
            time.sleep(0.2)  # past tqdm's refresh interval: the next finished item is drawn
        if len(seen) == 2:  # mid-way: the bar counts the first two items' weights (8 + 14 of 25), not 0 nor all
            assert "22/25" in capsys.readouterr().err
    assert "25/25" in capsys.readouterr().err


def test_an_unknown_executor_names_the_choices():
    with pytest.raises(ValueError, match="unknown executor 'spark'; choose one of ray, pool, local"):
        create_executor("spark")


def test_auto_picks_by_the_work_and_any_cluster_address():
    assert choose_executor("auto", None, work_s=0.1, num_cpus=2) == "local"
    assert choose_executor("auto", None, work_s=2 * 2 * POOL_START_S + 1, num_cpus=2) == "pool"
    assert choose_executor("auto", None, work_s=2 * 20 * RAY_START_S + 1, num_cpus=2) == "ray"
    assert choose_executor("auto", "auto", work_s=0.1) == "ray"  # a cluster named: always Ray
    assert choose_executor("local", None, work_s=1e9) == "local"  # an explicit choice stands


def _kill_self(_: int) -> None:
    os.kill(os.getpid(), signal.SIGKILL)  # a worker killed for real (as the OOM killer would)


def test_a_dead_pool_worker_is_a_fault_not_a_bad_item():
    from medscale.core.faults import FATAL, fault_kind

    executor = create_executor("pool", num_cpus=1)
    try:
        outcomes = list(fan_out(executor, _kill_self, [1]))
    finally:
        executor.close()
    [(_, result, error)] = outcomes
    assert result is None and fault_kind(error) == FATAL


def test_a_pool_works_from_a_script_without_a_main_guard(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text("from medscale.core.executor import create_executor, ordered_map\n"
                      "from medscale.dedup.lsh import parse_verify\n"
                      "executor = create_executor('pool', num_cpus=2)\n"
                      "print(ordered_map(executor, parse_verify, ['dhash<=3', 'ahash<=1'], progress=False))\n"
                      "executor.close()\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[(('dhash',), 3), (('ahash',), 1)]"


def _overlap(marker_dir: str) -> int:
    """Write this task's start mark, hold for 1 s, count the tasks that ran meanwhile, then write the end mark."""
    import pathlib
    import uuid

    here = pathlib.Path(marker_dir)
    me = uuid.uuid4().hex
    (here / f"{me}.start").touch()
    time.sleep(1.0)
    others = {p.stem for p in here.glob("*.start")} - {me}
    (here / f"{me}.end").touch()
    ended = {p.stem for p in here.glob("*.end")}
    return len(others - ended)


def test_ray_tasks_reserve_the_memory_they_ask_for(ray_local, tmp_path):
    """Two CPUs run two tasks at once; tasks that each reserve 60% of the node's memory run one at a time."""
    from ray import cloudpickle

    from medscale.core.executor import task_resources

    cloudpickle.register_pickle_by_value(__import__(__name__))  # this test module is not importable by workers
    node_mb = int(ray_local.cluster_resources()["memory"]) // 2**20
    assert task_resources(100, 0.5) == {"memory": 100 * 2**20, "num_gpus": 0.5} and task_resources() == {}
    overlaps = {}
    for name, request in (("free", task_resources()), ("reserved", task_resources(int(node_mb * 0.6)))):
        marks = tmp_path / name
        marks.mkdir()
        executor = create_executor("ray", task_options=request)
        overlaps[name] = [r for _, r, _ in fan_out(executor, _overlap, [str(marks)] * 4, max_in_flight=4)]
    assert max(overlaps["free"]) >= 1 and max(overlaps["reserved"]) == 0, overlaps
