"""TF Serving's ``--model_config_file``: a ``ModelServerConfig`` in protobuf text format.

Only what rnnkit's server uses is interpreted (``model_config_list { config { name base_path
model_version_policy version_labels } }``); other fields (``model_platform``, ...) are read and
ignored. The file is read by :mod:`rnnkit_serving.config.text_format`, so that no TensorFlow protos are
needed on the ONNX Runtime path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from rnnkit_serving.config.text_format import ConfigError, Message, parse_text_format
from rnnkit_serving.core import defaults

POLICIES = ("latest", "all", "specific")


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions on disk are served (TF Serving's ``ServableVersionPolicy``).

    ``latest``: the newest ``num_versions`` that load; ``all``: every version; ``specific``:
    the listed ``versions``. Versions that failed to load are skipped, so with ``latest`` the
    previous version keeps serving when a new one is broken.
    """

    kind: str = "latest"
    num_versions: int = defaults.NUM_VERSIONS  # --num_versions (a config's model_version_policy wins)
    versions: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in POLICIES:
            raise ConfigError(f"version policy must be one of {POLICIES}; received {self.kind!r}")
        if self.kind == "latest" and self.num_versions < 1:
            raise ConfigError(f"latest {{ num_versions }} must be >= 1; received {self.num_versions}")

    def candidates(self, on_disk: list[int]) -> list[int]:
        """Versions worth loading, newest first."""
        newest_first = sorted(on_disk, reverse=True)
        if self.kind == "specific":
            return [v for v in newest_first if v in self.versions]
        return newest_first

    def wanted(self) -> int | None:
        """How many of the candidates to serve (None = all of them)."""
        return self.num_versions if self.kind == "latest" else None


@dataclass(frozen=True)
class ModelConfig:
    name: str
    base_path: str
    version_labels: dict[str, int] = field(default_factory=dict)
    version_policy: VersionPolicy | None = None  # None: the server's default (--num_versions)


def _one(fields: Message, name: str, kind: type, where: str) -> object:
    values = fields.get(name, [])
    if len(values) != 1 or not isinstance(values[0], kind):
        raise ConfigError(f"{where}: expected exactly one `{name}` ({kind.__name__}), found {values!r}")
    return values[0]


def _policy(entry: Message, where: str) -> VersionPolicy | None:
    blocks = entry.get("model_version_policy", [])
    if not blocks:
        return None
    if len(blocks) != 1 or not isinstance(blocks[0], dict) or len(blocks[0]) != 1:
        raise ConfigError(f"{where}: `model_version_policy` must hold one of latest {{}}, all {{}}, specific {{}}")
    ((kind, values),) = blocks[0].items()
    body = values[0] if len(values) == 1 else None
    if kind not in POLICIES or not isinstance(body, dict):
        raise ConfigError(f"{where}: `model_version_policy` must hold one of {POLICIES} as a block; received {kind!r}")
    if kind == "latest":
        count = body.get("num_versions", [1])
        if len(count) != 1 or not isinstance(count[0], int):
            raise ConfigError(f"{where}: latest {{ num_versions: N }} needs one integer; received {count!r}")
        return VersionPolicy("latest", int(count[0]))
    if kind == "specific":
        versions = body.get("versions", [])
        if not versions or not all(isinstance(v, int) for v in versions):
            raise ConfigError(f"{where}: specific {{ versions: N ... }} needs integers; received {versions!r}")
        return VersionPolicy("specific", versions=tuple(int(str(v)) for v in versions))
    return VersionPolicy("all")


def parse_model_config(text: str, source: str = "<config>") -> list[ModelConfig]:
    root = parse_text_format(text, source)
    lists = root.get("model_config_list", [])
    if len(lists) != 1 or not isinstance(lists[0], dict):
        raise ConfigError(
            f"{source}: expected one `model_config_list {{ ... }}` block (only ModelConfigList is supported)"
        )
    configs = []
    for position, entry in enumerate(lists[0].get("config", [])):
        where = f"{source}: config #{position + 1}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a `config {{ ... }}` block")
        name = str(_one(entry, "name", str, where))
        base_path = os.path.abspath(str(_one(entry, "base_path", str, where)))
        labels: dict[str, int] = {}
        for label in entry.get("version_labels", []):
            if not isinstance(label, dict):
                raise ConfigError(f"{where}: `version_labels` must be a {{ key value }} block")
            labels[str(_one(label, "key", str, where))] = int(str(_one(label, "value", int, where)))
        configs.append(ModelConfig(name, base_path, labels, _policy(entry, where)))
    names = [c.name for c in configs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{source}: model names must be unique; repeated: {duplicates}")
    if not configs:
        raise ConfigError(f"{source}: the model_config_list has no `config` entries")
    return configs


def read_model_config(path: str) -> list[ModelConfig]:
    try:
        with open(path) as handle:
            text = handle.read()
    except OSError as error:
        raise ConfigError(f"cannot read model config file {path!r}: {error}") from error
    return parse_model_config(text, path)
