"""irpo_data.timing: the phases a stage's record keeps (the loop test checks them in a real run)."""

import time

from irpo_data import timing


def test_nested_phases_are_named_under_their_parent_in_start_order_and_take_starts_afresh():
    timing.take()
    with timing.phase("sampling"):
        with timing.phase("engine start"):
            time.sleep(0.05)
        timing.count("vllm starts")
        with timing.phase("grading"):
            pass
    with timing.phase("grading"):  # the same name elsewhere is another phase
        pass
    taken = timing.take()
    assert list(taken["seconds"]) == ["sampling", "sampling / engine start", "sampling / grading", "grading"]
    assert taken["seconds"]["sampling"] >= taken["seconds"]["sampling / engine start"] >= 0.05
    assert taken["counts"] == {"vllm starts": 1}
    assert timing.take() == {"seconds": {}, "counts": {}}


def test_a_phase_still_open_counts_up_to_the_take_and_goes_on_from_there():
    timing.take()
    with timing.phase("save"):
        time.sleep(0.05)
        first = timing.take()
        time.sleep(0.05)
    second = timing.take()
    assert first["seconds"]["save"] >= 0.05 and second["seconds"]["save"] >= 0.05
    assert first["seconds"]["save"] + second["seconds"]["save"] < 0.5
