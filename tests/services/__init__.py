"""Real services (schedulers, daemons) that tests start on this machine, each as a session fixture."""

import psutil

import bench.postgres
import bench.slurm


def service_processes() -> list[psutil.Process]:
    """The processes of the services running now (PostgreSQL, Slurm): tests that check that nothing else runs
    leave these out. (This package's own modules of the same names hold their fixtures.)"""
    return bench.postgres.cluster_processes() + bench.slurm.cluster_processes()
