"""The models a server serves: name -> versions -> :class:`Predictor`, and how requests find them.

Every version on disk under a model's base path is loaded at start; requests without a version
go to the newest available one, ``/versions/N`` (gRPC ``version``) to N, ``/labels/L``
(``version_label``) to the version the config file gives that label. A version that fails to
load is reported as ``END`` with its error, as TF Serving does, and the others still serve.
Lookup failures carry TF Serving's texts and codes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from serving.errors import Code, ServingError, invalid_argument, not_found, wire_error
from serving.model_config import ModelConfig
from serving.predictor import Predictor, version_dirs

log = logging.getLogger("rnnkit.serving")

AVAILABLE = "AVAILABLE"
END = "END"


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str
    error_code: str = "OK"
    error_message: str = ""


@dataclass
class ServedModel:
    name: str
    base_path: str = ""
    version_labels: Mapping[str, int] = field(default_factory=dict)
    predictors: dict[int, Predictor] = field(default_factory=dict)
    failures: dict[int, tuple[Code, str]] = field(default_factory=dict)

    def latest(self) -> Predictor | None:
        return self.predictors[max(self.predictors)] if self.predictors else None


class ModelRegistry:
    def __init__(self, models: Iterable[ServedModel] = ()) -> None:
        self._models = {m.name: m for m in models}

    @classmethod
    def load(cls, configs: Iterable[ModelConfig], loader: Callable[[str], Predictor]) -> ModelRegistry:
        """Load every version directory of every configured model with `loader(version_dir)`."""
        models = []
        for config in configs:
            model = ServedModel(config.name, config.base_path, dict(config.version_labels))
            found = version_dirs(config.base_path)
            if not found:
                log.warning("No versions of servable %s found under base path %s", config.name, config.base_path)
            for version, path in sorted(found.items()):
                try:
                    model.predictors[version] = loader(path)
                except Exception as error:  # a broken version must not stop the others
                    code, message, _ = wire_error(error if isinstance(error, ServingError) else _load_error(error))
                    log.error("model %s version %d failed to load: %s", config.name, version, message)
                    model.failures[version] = (code, message)
            models.append(model)
        return cls(models)

    @classmethod
    def of(cls, predictors: Iterable[Predictor]) -> ModelRegistry:
        """A registry over already-built predictors (tests, embedding)."""
        models: dict[str, ServedModel] = {}
        for predictor in predictors:
            models.setdefault(predictor.name, ServedModel(predictor.name)).predictors[predictor.version] = predictor
        return cls(models.values())

    @property
    def names(self) -> list[str]:
        return sorted(self._models)

    def model(self, name: str) -> ServedModel | None:
        return self._models.get(name)

    def available(self) -> bool:
        return any(m.predictors for m in self._models.values())

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Predictor:
        """The predictor a request names; TF Serving's errors when there is none."""
        model = self._models.get(name)
        if label is not None:
            if model is None or label not in model.version_labels:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = model.version_labels[label]
        if version is None:
            latest = model.latest() if model is not None else None
            if latest is None:
                raise not_found(f"Servable not found for request: Latest({name})")
            return latest
        predictor = model.predictors.get(version) if model is not None else None
        if predictor is None:
            raise not_found(f"Servable not found for request: Specific({name}, {version})")
        return predictor

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """Version states, newest first (GetModelStatus)."""
        model = self._models.get(name)
        if model is None or not (model.predictors or model.failures):
            raise not_found(f"Could not find any versions of model {name}")
        entries = [VersionStatus(v, AVAILABLE) for v in model.predictors]
        entries += [VersionStatus(v, END, code.name, message) for v, (code, message) in model.failures.items()]
        if version is not None:
            entries = [e for e in entries if e.version == version]
            if not entries:
                raise not_found(f"Could not find version {version} of model {name}")
        return sorted(entries, key=lambda e: -e.version)

    def predictors(self) -> list[Predictor]:
        return [p for m in self._models.values() for p in m.predictors.values()]

    def close(self) -> None:
        for predictor in self.predictors():
            predictor.close()


def _load_error(error: Exception) -> ServingError:
    return ServingError(Code.UNKNOWN, f"{type(error).__name__}: {error}")
