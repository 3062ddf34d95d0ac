"""Where the stages' independent pieces of work run: here, or as tasks on a Dask cluster.

The frequency tiles, the smoothing strips (with the sums of the global fit and the passes of
the exact median) and the zonal batches are each a plain function of one picklable job. The
same functions run in this process (:class:`LocalExecutor`) or on the workers of a
``dask.distributed`` scheduler (:class:`DaskExecutor`), and the caller combines their results
in the same order either way, so the outputs are bit for bit the same.

Workers need ``cloud_probability.core`` and its numeric dependencies, never QGIS: install the
wheel built from this repository on them, or hand the package over with
``Client.upload_file``. They read the inputs the jobs name (rasters, COGs over HTTP), so raster
paths must be on a file system the workers share (as on an HPC cluster). The scheduler needs
the package too: recent ``distributed`` unpickles the task graph on the scheduler, and every
task fails there ("Error during deserialization of the task graph") where ``cloud_probability``
cannot be imported; :class:`DaskExecutor` says so in a sentence.
"""
from __future__ import annotations

import pickle
from collections import deque
from typing import Any, Callable, Iterable, Iterator

from .progress import Cancelled, NullProgress, Progress, check_cancel


class LocalExecutor:
    """Jobs in this process; ``fn`` gets the caller's progress (Cancel reaches inside a job).

    ``threads`` > 1 runs that many jobs at once on threads (for work that releases the GIL,
    such as SciPy's filters and NumPy's arithmetic), at most ``threads`` in flight, results
    still given in the jobs' order."""

    def __init__(self, threads: int = 1):
        self.workers = max(1, int(threads))

    def map(self, fn: Callable, jobs: Iterable[Any], progress: Progress | None = None,
            ordered: bool = True) -> Iterator[tuple[int, Any]]:
        """(index, result) per job, in the jobs' order."""
        progress = progress or NullProgress()
        if self.workers == 1:
            for index, job in enumerate(jobs):
                check_cancel(progress)
                yield index, fn(job, progress)
            return
        import concurrent.futures as cf

        with cf.ThreadPoolExecutor(self.workers, thread_name_prefix="cloudprob-job") as pool:
            flight: deque = deque()
            try:
                for index, job in enumerate(jobs):
                    check_cancel(progress)
                    flight.append((index, pool.submit(fn, job, progress)))
                    if len(flight) >= self.workers:
                        done, future = flight.popleft()
                        yield done, future.result()
                while flight:
                    done, future = flight.popleft()
                    yield done, future.result()
            finally:
                for _, future in flight:
                    future.cancel()

    def close(self) -> None:  # noqa: D102
        pass


# what distributed's scheduler says when it cannot unpickle a task (a module it cannot import)
GRAPH_ERROR = "Error during deserialization of the task graph"


class DaskExecutor:
    """Jobs as tasks on a ``dask.distributed`` scheduler.

    At most ``window`` tasks are in flight (twice the workers' threads by default), so neither
    the client nor the cluster holds more results than it uses. Cancel cancels the futures
    within about half a second. A task lost with its worker is run again by the scheduler.
    ``bytes_sent`` / ``bytes_received`` count the pickled jobs and results.
    """

    def __init__(self, scheduler, window: int | None = None):
        from distributed import Client

        self._own = not isinstance(scheduler, Client)
        self.client = Client(scheduler, timeout="30s") if self._own else scheduler
        threads = sum(self.client.nthreads().values()) or 1
        self.workers = threads
        self.window = window or 2 * threads
        self.bytes_sent = 0
        self.bytes_received = 0
        self.tasks = 0

    def map(self, fn: Callable, jobs: Iterable[Any], progress: Progress | None = None,
            ordered: bool = True) -> Iterator[tuple[int, Any]]:
        """(index, result) per job: in the jobs' order with ``ordered``, else as they finish."""
        from distributed import wait

        progress = progress or NullProgress()
        pending = iter(enumerate(jobs))
        flight: deque = deque()
        done_early: dict[int, Any] = {}
        next_index = 0
        exhausted = False
        try:
            while True:
                while not exhausted and len(flight) < self.window:
                    try:
                        index, job = next(pending)
                    except StopIteration:
                        exhausted = True
                        break
                    self.bytes_sent += len(pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL))
                    self.tasks += 1
                    flight.append((index, self.client.submit(fn, job, None, pure=False)))
                if not flight:
                    return
                futures = [f for _, f in flight]
                try:
                    finished = wait(futures, timeout=0.5, return_when="FIRST_COMPLETED").done
                except TimeoutError:  # distributed raises where concurrent.futures returns
                    finished = set()
                if progress.is_canceled():
                    raise Cancelled("cancelled by the user")
                if not finished:
                    continue
                keep = deque()
                for index, future in flight:
                    if future in finished:
                        try:
                            result = future.result()  # a task's own error is raised here, as it would be locally
                        except RuntimeError as exc:
                            if GRAPH_ERROR in str(exc):
                                raise RuntimeError(self._graph_sentence()) from exc
                            raise
                        self.bytes_received += _size(result)
                        done_early[index] = result
                    else:
                        keep.append((index, future))
                flight = keep
                if ordered:
                    while next_index in done_early:
                        yield next_index, done_early.pop(next_index)
                        next_index += 1
                else:
                    for index in sorted(done_early):
                        yield index, done_early.pop(index)
        finally:
            if flight:
                self.client.cancel([f for _, f in flight])

    def _graph_sentence(self) -> str:
        try:
            address = self.client.scheduler.address
        except Exception:  # the sentence matters more than the address
            address = "given"
        return (f"The Dask scheduler at {address} could not read the tasks ({GRAPH_ERROR}): the scheduler, "
                f"like every worker, must be able to import cloud_probability. Install the wheel that 'make wheel' "
                f"builds into the Python that runs 'dask scheduler', as on the workers, and start it again.")

    def close(self) -> None:
        """Close the client if this executor opened it."""
        if self._own:
            self.client.close()


def _size(result) -> int:
    try:
        return len(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:  # sizes are reported, never a reason to fail
        return 0


def executor_for(scheduler=None, local_threads: int = 1):
    """:class:`LocalExecutor` (with ``local_threads``) for None or "", else a
    :class:`DaskExecutor` on ``scheduler`` (an address such as ``tcp://10.0.0.5:8786``, or a
    ``distributed.Client``)."""
    if scheduler is None or (isinstance(scheduler, str) and not scheduler.strip()):
        return LocalExecutor(local_threads)
    if isinstance(scheduler, (LocalExecutor, DaskExecutor)):
        return scheduler
    try:
        return DaskExecutor(scheduler.strip() if isinstance(scheduler, str) else scheduler)
    except ImportError as exc:
        raise RuntimeError(
            "A Dask scheduler was given but the Python package 'distributed' is not installed "
            "(pip install distributed, the version pinned in constraints.txt).") from exc
    except OSError as exc:
        raise RuntimeError(f"Could not reach the Dask scheduler at {scheduler}: {exc}") from exc
