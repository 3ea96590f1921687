"""A Dask cluster on SLURM GPU nodes for ``pgpig-data extract`` / ``pair``, through dask-jobqueue.

    pip install dask-jobqueue
    python slurm_dask.py --nodes 4 --gpus-per-node 8 --partition gpu -- \\
        pgpig-data extract /data/raw --out /data/keypoints

Submits ``--nodes`` jobs, each running one single-threaded worker process per GPU (``--gpus-per-node``), waits for
the workers, then runs the given command with ``--scheduler`` set to the cluster's address, and shuts the jobs
down when it ends. The raw folder and the output must be on a file system every node sees.
"""

from __future__ import annotations

import argparse
import subprocess
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--cores-per-node", type=int, default=64)
    parser.add_argument("--memory-per-node", default="400GB")
    parser.add_argument("--partition", default=None, help="SLURM partition (queue)")
    parser.add_argument("--walltime", default="04:00:00")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the pgpig-data command, after --")
    args = parser.parse_args()
    command = [c for c in args.command if c != "--"]
    if not command:
        parser.error("give the command to run after --, e.g. -- pgpig-data extract /data/raw")

    from dask_jobqueue import SLURMCluster
    from distributed import Client

    cluster = SLURMCluster(
        queue=args.partition, cores=args.cores_per_node, memory=args.memory_per_node, walltime=args.walltime,
        processes=args.gpus_per_node,  # one worker process per GPU ...
        job_extra_directives=[f"--gres=gpu:{args.gpus_per_node}"],
        # ... each pinned to its GPU by its local rank within the job
        job_script_prologue=["export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON='{}'"],
        worker_extra_args=["--nthreads", "1"],
    )
    try:
        cluster.scale(jobs=args.nodes)
        client = Client(cluster)
        client.wait_for_workers(args.nodes * args.gpus_per_node)
        return subprocess.call([*command, "--scheduler", cluster.scheduler_address])
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
