"""Running the per-chunk stage in-process or on a Dask cluster.

* ``workers == 1`` or ``scheduler == "synchronous"``: plain loop in this process.
* ``scheduler is None`` and ``workers > 1``: a ``distributed.LocalCluster`` with
  ``workers`` single-threaded worker processes (RDKit holds the GIL, so
  processes, not threads, give the speed-up).
* ``scheduler == "tcp://host:port"``: ``distributed.Client(address)``; the
  workers need molequi and RDKit installed.

Only a bounded number of chunks is in flight (``2 × workers``) so that huge
inputs are streamed, not loaded.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator

from .config import StageConfig
from .io import Candidate
from .stage import process_chunk

ChunkResult = tuple[int, list[dict[str, object]]]


def _run_in_process(chunks: Iterator[tuple[int, list[Candidate]]],
                    cfg: StageConfig) -> Iterator[ChunkResult]:
    for k, chunk in chunks:
        yield k, process_chunk(chunk, cfg)


@contextlib.contextmanager
def dask_client(workers: int, scheduler: str | None):
    """A connected ``distributed.Client`` (and its LocalCluster, closed on exit)."""
    try:
        from distributed import Client, LocalCluster
    except ModuleNotFoundError as error:
        from molequi.errors import MissingDependencyError

        raise MissingDependencyError(
            f"parallel screening (--workers > 1 or a scheduler) needs Dask ({error.name} is not installed): "
            "pip install 'molequi[search]'"
        ) from error

    if scheduler is not None:
        with Client(scheduler) as client:
            yield client
        return
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
            Client(cluster) as client:
        yield client


def _run_on_dask(client, chunks: Iterator[tuple[int, list[Candidate]]], cfg: StageConfig,
                 max_in_flight: int) -> Iterator[ChunkResult]:
    """Submit chunks with back-pressure; yield results as they complete (any order)."""
    from distributed import as_completed

    futures = as_completed(with_results=False)
    index_of = {}

    def submit_next() -> bool:
        item = next(chunks, None)
        if item is None:
            return False
        k, chunk = item
        # plain tuples: cheaper to pickle than NamedTuples
        future = client.submit(process_chunk, [tuple(c) for c in chunk], cfg,
                               key=f"molequi-chunk-{k}-{id(chunks)}", pure=False)
        index_of[future.key] = k
        futures.add(future)
        return True

    for _ in range(max_in_flight):
        if not submit_next():
            break
    for future in futures:
        rows = future.result()
        k = index_of.pop(future.key)
        future.release()
        submit_next()
        yield k, rows


@contextlib.contextmanager
def chunk_runner(cfg: StageConfig, workers: int, scheduler: str | None
                 ) -> Iterator[Callable[[Iterator[tuple[int, list[Candidate]]]], Iterator[ChunkResult]]]:
    """Context giving ``run(chunks) -> iterator of (k, rows)`` for the chosen backend."""
    if scheduler == "synchronous" or (scheduler is None and workers == 1):
        yield lambda chunks: _run_in_process(chunks, cfg)
        return
    with dask_client(workers, scheduler) as client:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})) or workers)
        yield lambda chunks: _run_on_dask(client, chunks, cfg, 2 * n_workers)
