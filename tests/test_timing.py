"""irpo.timing: the phases a stage's record keeps (the loop test checks them in a real run)."""

import time

from irpo import timing


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
    assert timing.take() == {"seconds": {}, "counts": {}, "peak_gb": {}}


def test_a_phase_still_open_counts_up_to_the_take_and_goes_on_from_there():
    timing.take()
    with timing.phase("save"):
        time.sleep(0.05)
        first = timing.take()
        time.sleep(0.05)
    second = timing.take()
    assert first["seconds"]["save"] >= 0.05 and second["seconds"]["save"] >= 0.05
    assert first["seconds"]["save"] + second["seconds"]["save"] < 0.5


def test_each_phase_records_the_peak_memory_of_this_process_and_its_children():
    """A child holding 400 MB inside a phase raises that phase's peak (and its parent's), not the next one's."""
    import subprocess
    import sys

    timing.take()
    with timing.phase("stage"):
        with timing.phase("child"):
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import time; x = bytearray(400_000_000); x[::4096] = b'1' * len(x[::4096]); time.sleep(2)",
                ],
                check=True,
            )
        with timing.phase("quiet"):
            time.sleep(0.6)
    peaks = timing.take()["peak_gb"]
    assert peaks.keys() == {"stage", "stage / child", "stage / quiet"}
    assert peaks["stage / child"] >= peaks["stage / quiet"] + 0.35 and peaks["stage"] == peaks["stage / child"]
