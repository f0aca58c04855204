"""What a server was started with, as the landing page (``GET /``) shows it: a plain, frozen record.

The server layer (:func:`rnnkit_serving.server.model_server.server_info`) builds it from its options and
hands it to the REST front, which only reads it: the page can show the flags without the front
importing the server, and nothing on the page can change them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Setting:
    """One line of the page: a group ("Ports", "Limits"...), what it is, its value, the flag that sets it."""

    group: str
    name: str
    value: str
    flag: str = ""


@dataclass(frozen=True)
class ServerInfo:
    """The server's version and the settings that matter to a client or an operator, in page order."""

    version: str
    settings: tuple[Setting, ...] = ()

    def value(self, name: str) -> str | None:
        """The value of the setting called `name`, or None."""
        for setting in self.settings:
            if setting.name == name:
                return setting.value
        return None
