"""The installed distribution this server is part of, as the KServe v2 server metadata reports it."""

from __future__ import annotations

DISTRIBUTION = "rnnkit"


def package_version() -> str:
    """The installed ``rnnkit`` version, or ``"unknown"`` when it is not installed as a distribution."""
    try:
        from importlib.metadata import version

        return version(DISTRIBUTION)
    except Exception:  # not installed as a distribution
        return "unknown"
