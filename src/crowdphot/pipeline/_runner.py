"""Running tiled tasks: in this process, or on a Dask client, results in submission order.

Shared by the tiled fit, the tiled artificial-star tests and the tiled multi-exposure fit.
"""

from __future__ import annotations

__all__ = ["Runner", "close_client", "open_client"]


class Runner:
    """Run tasks in this process or on a Dask client, results in submission order."""

    def __init__(self, client, source):
        self.client = client
        self.source = source

    def share(self, obj):
        """``obj`` itself in process; on Dask, a future of it sent once to every worker.

        A PSF grid is tens of MB: inside every task's arguments it would travel with each
        task and Dask warns of a large graph; scattered once, tasks only hold its key.
        """
        if self.client is None:
            return obj
        return self.client.scatter(obj, broadcast=True, hash=False)

    def map(self, func, boxes, arg_tuples, *, progress=False, desc=""):
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(arg_tuples), desc=desc)
        try:
            if self.client is None:
                out = []
                for args in arg_tuples:
                    out.append(func(self.source, *args))
                    if bar is not None:
                        bar.update(1)
                return out
            return self._map_dask(func, boxes, arg_tuples, bar)
        finally:
            if bar is not None:
                bar.close()

    def _map_dask(self, func, boxes, arg_tuples, bar):
        from dask.distributed import as_completed

        client = self.client
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        limit = 2 * n_workers
        results = [None] * len(arg_tuples)

        def submit(i):
            src = self.source
            if hasattr(src, "sub"):  # in-memory planes (ArrayPlanes)
                # only the task's box travels, so no worker ever holds the whole image
                src = client.scatter(src.sub(boxes[i]), hash=False)
            fut = client.submit(func, src, *arg_tuples[i], pure=False)
            index[fut.key] = i
            return fut

        index = {}
        todo = iter(range(len(arg_tuples)))
        pending = as_completed([submit(i) for _, i in zip(range(limit), todo, strict=False)])
        for fut in pending:
            results[index.pop(fut.key)] = fut.result()
            fut.release()
            if bar is not None:
                bar.update(1)
            nxt = next(todo, None)
            if nxt is not None:
                pending.add(submit(nxt))
        return results


def open_client(client, workers, scheduler):
    """``(client, owned)``: the given client, one on ``scheduler``, or a local cluster."""
    if client is not None:
        if not hasattr(client, "submit"):
            raise TypeError("client must be a dask.distributed.Client")
        return client, False
    if scheduler is None and workers is None:
        return None, False
    from dask.distributed import Client, LocalCluster

    if scheduler is not None:
        if not isinstance(scheduler, str):
            raise TypeError(f"scheduler must be an address string, got {scheduler!r}")
        return Client(scheduler), True
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    new = Client(cluster)
    new.wait_for_workers(workers)
    return new, True


def close_client(client):
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()
