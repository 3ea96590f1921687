"""Promise 3, worker loss: a Dask worker process dies (SIGKILL) in the middle of ``extract``; the run completes with
every image exactly once.

The run uses a local cluster of two single-threaded worker processes under nannies (``pipeline.extract`` reaches it
through ``scheduler=``, the same ``_Workers.run`` path as its own ``local_cluster``). One worker is told, through
``client.run``, to kill itself inside a task right after its part file is renamed into place and before the task
returns: the hardest moment, since the scheduler sees the task lost although its output exists. The scheduler
re-runs it on a worker that lives (or on the nanny's restarted one) and the part is written again under the same
name, so nothing is doubled.
"""

from __future__ import annotations

import os
import signal
import sys

import cloudpickle

from pipeline.extract import ExtractConfig, run_extract
from pipeline.keypoints import read_keypoints


def quiet(*_args, **_kwargs) -> None:
    pass


def _arm(marker: str, die: bool) -> int:
    """Runs inside one worker. ``die``: its next part write kills the process (SIGKILL, no clean-up) once the part is
    in place; otherwise each of its part writes takes 0.2 s longer, so the doomed worker is sure to get a task (the
    annotation tasks take milliseconds, and one worker could take them all)."""
    import time

    import pipeline.extract as extract

    real_write = extract.write_table

    def write_then_die(table, path, kind):
        real_write(table, path, kind)
        with open(marker, "w") as f:
            f.write(f"{os.getpid()} {path}\n")
        os.kill(os.getpid(), signal.SIGKILL)

    def write_slowly(table, path, kind):
        real_write(table, path, kind)
        time.sleep(0.2)

    extract.write_table = write_then_die if die else write_slowly
    return os.getpid()


def test_a_worker_killed_mid_extract_loses_and_doubles_nothing(market_tree, tmp_path):
    from distributed import Client, LocalCluster

    root, summary = market_tree
    partition_size = 3  # 14 tasks over 2 workers
    marker = tmp_path / "killed.txt"
    csvs = (root / "market-annotation-train.csv", root / "market-annotation-test.csv")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        # this client only arms the worker; run_extract opens its own (one client at a time, as a user's run has)
        with Client(cluster) as client:
            first, second = sorted(client.scheduler_info()["workers"])
            # the workers cannot import this test module: send the function itself
            cloudpickle.register_pickle_by_value(sys.modules[__name__])
            doomed = client.run(_arm, str(marker), True, workers=[first])[first]
            client.run(_arm, str(marker), False, workers=[second])
        cfg = ExtractConfig(raw=root, out=tmp_path / "kp", run_file=tmp_path / "extract.json", annotations=csvs,
                            scheduler=cluster.scheduler_address, partition_size=partition_size)
        record = run_extract(cfg, log=quiet)
        with Client(cluster) as client:
            survivors = set(client.run(os.getpid).values())
    assert marker.is_file(), "the doomed worker never wrote a part: the test proved nothing"
    assert str(doomed) == marker.read_text().split()[0] and doomed not in survivors  # it really died
    images = read_keypoints(cfg.out)["image"].to_pylist()
    assert len(images) == len(set(images)) == summary["images"] == record["rows"]
    parts = sorted(cfg.out.glob("part-*.parquet"))
    assert len(parts) == -(-summary["images"] // partition_size)
    assert record["complete"] and sum(record["statuses"].values()) == summary["images"]
