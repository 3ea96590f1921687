"""Fixtures of the fault tests: a tiny trainable shard set, and a way to make one write fail like a full disk."""

from __future__ import annotations

import errno
import os
import sys

import pytest

# a generator small enough to train a few steps in seconds on 2 CPU cores (as tests/pgpig/test_train_kill.py)
TINY_TRAIN = ["--set", "ngf=8", "--set", "n_blocks=1", "--set", "d_blocks=1", "--set", "vgg_weights=null",
              "--set", "allow_random_vgg=true", "--set", "sigma=3", "--set", "sample_every=1000", "--workers", "0",
              "--batch-size", "4", "--quiet"]


@pytest.fixture(scope="session")
def tiny_train() -> list[str]:
    """``pgpig train`` options of a tiny, quick PATN run (with ``train_shards``)."""
    return list(TINY_TRAIN)


@pytest.fixture
def disk_full(monkeypatch):
    """``disk_full(lambda name: ...)``: from then on, fsync of a file whose path satisfies the test fails ENOSPC.

    ``schemas.files.atomic_path`` fsyncs every file before renaming it into place, so this is where a full disk
    (or an exceeded quota on a network file system, which often reports only here) meets every stage's writes.
    Returns the list of paths refused so far. Needs ``/proc/self/fd`` (Linux) to name the file of a descriptor.
    """
    if not sys.platform.startswith("linux"):
        pytest.skip("names an open file through /proc/self/fd")
    refused: list[str] = []
    real_fsync = os.fsync

    def arm(fails) -> list[str]:
        def fsync(fd: int) -> None:
            try:
                name = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                name = ""
            if fails(name):
                refused.append(name)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        return refused

    return arm
