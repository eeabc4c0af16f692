"""The distributed engine for joins and corpus-wide aggregates: Dask (dask.distributed).

One code path: ``dask_client(settings)`` yields a ``distributed.Client``. Without a
``scheduler_address`` it starts an in-process ``LocalCluster`` (tests, the embedded
default, nothing to start by hand); with one it connects to a running scheduler (a
dask-kubernetes ``DaskCluster``, ``dask scheduler`` on a VM, Coiled, ...). The code that
submits work never knows which. No Dagster import here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when a cluster is used, not at definition load
    import distributed


@dataclass(frozen=True)
class EngineSettings:
    # tcp://host:8786 of a running scheduler; None starts a LocalCluster for the duration
    scheduler_address: str | None = None
    # LocalCluster only: worker processes, threads each, memory each (spill/pause above it)
    n_workers: int = 2
    threads_per_worker: int = 1
    memory_limit: str = "2GiB"
    # LocalCluster only: worker processes (True) or threads of this process (False: starts in
    # well under a second, for small inputs such as the bundled sample)
    processes: bool = True
    # "p2p" is dask's scalable shuffle (disk-backed, bounded memory); "tasks" for tiny graphs
    shuffle_method: str = "p2p"
    # dask config applied while the client is open (e.g. {"distributed.worker.memory.spill": 0.7})
    dask_config: dict = field(default_factory=dict, hash=False, compare=False)


@contextlib.contextmanager
def dask_client(settings: EngineSettings | None = None) -> Iterator[distributed.Client]:
    """A dask.distributed Client: connected to ``scheduler_address``, or to a LocalCluster we own."""
    import logging

    import dask
    from distributed import Client, LocalCluster

    settings = settings or EngineSettings()
    # p2p shuffles log every start/stop at WARNING: noise in a run's log
    logging.getLogger("distributed.shuffle._scheduler_plugin").setLevel(logging.ERROR)
    config = {"dataframe.shuffle.method": settings.shuffle_method, **settings.dask_config}
    with dask.config.set(config):
        if settings.scheduler_address:
            with Client(settings.scheduler_address) as client:
                yield client
            return
        # A thread worker's memory monitor measures this whole process (a Dagster run, a test
        # session), not the worker: past 80 % of the limit it pauses and the computation waits
        # forever. Only worker processes get a limit.
        memory_limit = settings.memory_limit if settings.processes else 0
        # dashboard off: a port per test run is noise, and nothing here serves it
        with (
            LocalCluster(
                n_workers=settings.n_workers,
                threads_per_worker=settings.threads_per_worker,
                memory_limit=memory_limit,
                processes=settings.processes,
                dashboard_address=None,
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client


def map_ordered(
    client: distributed.Client | None,
    fn,
    items,
    *args,
    max_in_flight: int = 8,
    **kwargs,
) -> Iterator:
    """``fn(item, *args, **kwargs)`` for every item, results yielded in item order.

    With a client the calls run on the cluster, at most ``max_in_flight`` at a time, so the
    caller (which folds results into on-disk state) holds a bounded number of them; without
    one they run here, one by one. Results must be picklable (frames, arrays, small dicts).
    """
    items = list(items)
    if client is None:
        for item in items:
            yield fn(item, *args, **kwargs)
        return
    pending: list = []
    nxt = 0
    while nxt < len(items) or pending:
        while nxt < len(items) and len(pending) < max_in_flight:
            # pure=False: a re-read of a changed shard must not be served from an old key
            pending.append(client.submit(fn, items[nxt], *args, pure=False, **kwargs))
            nxt += 1
        head = pending.pop(0)
        yield head.result()
        head.release()
