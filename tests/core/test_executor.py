"""The one fan-out helper: per-item errors, results as tasks finish, order kept by `ordered_map`, a moving bar."""

import time

import pytest

from medscale.core.executor import LocalExecutor, RayExecutor, create_executor, fan_out, ordered_map
from medscale.dedup.lsh import parse_verify  # a real function that fails on some items: run where Ray can import it

SPECS = ["dhash<=3", "ahash+dhash<=9", "bad", "phash<=1", "colour<=2", "ahash<=0"]


@pytest.mark.parametrize("kind", ["local", "ray"])
def test_fan_out_yields_every_item_once_with_its_own_error(kind, request):
    if kind == "ray":
        request.getfixturevalue("ray_local")
    executor = LocalExecutor() if kind == "local" else RayExecutor()
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
    with pytest.raises(ValueError, match="unknown executor 'spark'; choose one of ray, local"):
        create_executor("spark")
