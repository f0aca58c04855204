"""Version states as GetModelStatus reports them (TF Serving's ``ModelVersionStatus``).

A plain record shared by the registry (which fills it) and the codecs (which render it), so
neither codec needs the registry.
"""

from __future__ import annotations

from dataclasses import dataclass

LOADING = "LOADING"
AVAILABLE = "AVAILABLE"
END = "END"


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str  # LOADING, AVAILABLE or END
    error_code: str = "OK"
    error_message: str = ""
