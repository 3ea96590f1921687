"""The Dask ``LocalCluster`` that ``pgpig-data extract`` and ``pgpig-data pair`` start when no scheduler is given."""

from __future__ import annotations


def local_cluster(workers: int, threads_per_worker: int = 1, model_threads: int | None = None):
    """A ``LocalCluster`` of ``workers`` single-process workers on this machine.

    With ``model_threads`` each worker is fit for running a model: Dask starts workers with ``OMP_NUM_THREADS=1``
    and ``MALLOC_TRIM_THRESHOLD_=65536``, the first starving torch and the second handing every large buffer back to
    the OS after each call (together they halved CPU inference in a worker), so each worker gets ``model_threads``
    threads and glibc's default trimming instead; and the workers are not daemonic, so that the fast backend's
    reader processes (``pipeline.pose.reading``) can start. Without it, Dask's own settings."""
    import dask
    from distributed import LocalCluster

    if model_threads is None:
        return LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                            dashboard_address=":0")
    threads = str(model_threads)
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {}, "distributed.worker.daemon": False}):
        return LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                            dashboard_address=":0", env=env)
