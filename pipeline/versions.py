"""The installed versions that ``--version`` shows and that run records (``extract.json``, manifests) keep."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

__all__ = ["library_versions", "package_version"]

RECORDED = ("pgpig", "torch", "ultralytics", "dask", "distributed", "numpy", "opencv-python", "pyarrow")


def package_version(name: str = "pgpig") -> str | None:
    """The installed distribution's version, ``None`` when it is not installed (a bare source tree)."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    """Python's and each library's version that decides what a run computes."""
    return {"python": platform.python_version(), **{name: package_version(name) for name in RECORDED}}
