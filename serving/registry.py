"""The models a server serves: name -> versions -> :class:`Predictor`, and how requests find them.

Which versions serve follows each model's version policy (TF Serving's ``model_version_policy``;
default: the newest one). :meth:`ModelRegistry.poll` rescans the base paths (a thread repeats it
every ``--file_system_poll_wait_seconds``): new version directories are loaded, and a version
the policy no longer wants, or whose directory is gone, is retired. A version that fails to load
is reported as ``END`` with its error, as TF Serving does, and is skipped by the policy, so the
previous version keeps serving. Hidden (``.rnnkit-tmp-*``) and non-integer directories are
ignored, and export publishes versions by an atomic rename, so half-written versions are never
seen.

Requests hold a :meth:`ModelRegistry.lease` on the version they resolved to: a retired version
is closed only when its last request in flight has finished, so requests finish on the version
they started with while new requests already go to the new one. Requests without a version go
to the newest served one, ``/versions/N`` (gRPC ``version``) to N, ``/labels/L``
(``version_label``) to the version the config file gives that label. Lookup failures carry TF
Serving's texts and codes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType

from rnnkit_serving.config.model_config import ModelConfig, VersionPolicy
from rnnkit_serving.core.status import AVAILABLE, END, LOADING, VersionStatus
from rnnkit_serving.errors import Code, ServingError, invalid_argument, not_found, wire_error
from rnnkit_serving.runtime.predictor import Predictor, RepositoryUnreadableError, version_dirs

log = logging.getLogger("rnnkit.serving")

LATEST_ONE = VersionPolicy()


@dataclass
class ServedModel:
    name: str
    base_path: str = ""
    version_labels: Mapping[str, int] = field(default_factory=dict)
    predictors: dict[int, Predictor] = field(default_factory=dict)
    failures: dict[int, tuple[Code, str]] = field(default_factory=dict)
    policy: VersionPolicy = LATEST_ONE
    loading: set[int] = field(default_factory=set)
    retired: set[int] = field(default_factory=set)  # versions served before, reported END
    warned_empty: bool = False
    # why the last scan of base_path failed (EMFILE, EIO...); the versions seen before keep serving
    unreadable: str | None = None

    def latest(self) -> Predictor | None:
        return self.predictors[max(self.predictors)] if self.predictors else None


class Lease:
    """A request's hold on one version: ``with registry.lease(name) as predictor: ...``."""

    def __init__(self, registry: ModelRegistry, predictor: Predictor) -> None:
        self._registry = registry
        self.predictor = predictor
        self._released = False

    def __enter__(self) -> Predictor:
        return self.predictor

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._registry._release(self.predictor)


class ModelRegistry:
    def __init__(self, models: Iterable[ServedModel] = (), loader: Callable[[str], Predictor] | None = None) -> None:
        self._models = {m.name: m for m in models}
        self._loader = loader
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._in_flight: dict[int, int] = {}  # id(predictor) -> leases held
        self._retired: dict[int, Predictor] = {}  # retired, closed when their last lease ends
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    @classmethod
    def load(
        cls,
        configs: Iterable[ModelConfig],
        loader: Callable[[str], Predictor],
        default_policy: VersionPolicy = LATEST_ONE,
    ) -> ModelRegistry:
        """Serve `configs`: load the versions each policy wants with `loader(version_dir)`."""
        models = [
            ServedModel(c.name, c.base_path, dict(c.version_labels), policy=c.version_policy or default_policy)
            for c in configs
        ]
        registry = cls(models, loader)
        registry.poll()
        return registry

    @classmethod
    def of(cls, predictors: Iterable[Predictor]) -> ModelRegistry:
        """A registry over already-built predictors (tests, embedding); nothing is polled."""
        models: dict[str, ServedModel] = {}
        for predictor in predictors:
            models.setdefault(predictor.name, ServedModel(predictor.name)).predictors[predictor.version] = predictor
        return cls(models.values())

    # --------------------------------------------------------------------------- hot reload

    def poll(self) -> None:
        """Rescan every base path once: load what the policies want, retire what they no longer do."""
        if self._loader is None:
            return
        with self._poll_lock:
            for model in list(self._models.values()):
                if model.base_path:
                    self._poll_model(model, self._loader)

    def _poll_model(self, model: ServedModel, loader: Callable[[str], Predictor]) -> None:
        try:
            on_disk = version_dirs(model.base_path)
        except RepositoryUnreadableError as error:
            # a resource failure says nothing about what is published: keep serving the last good view
            if model.unreadable != str(error):
                log.error("model %s: %s; keeping the versions already serving", model.name, error)
            with self._lock:
                model.unreadable = str(error)
            return
        if model.unreadable is not None:
            log.info("model %s: base path %s readable again", model.name, model.base_path)
            with self._lock:
                model.unreadable = None
        if not on_disk and not model.warned_empty:
            log.warning("No versions of servable %s found under base path %s", model.name, model.base_path)
        model.warned_empty = not on_disk
        with self._lock:
            loaded = dict(model.predictors)
            failed = set(model.failures)
        wanted = model.policy.wanted()
        chosen: dict[int, Predictor] = {}
        for version in model.policy.candidates([v for v in on_disk if v not in failed]):
            if wanted is not None and len(chosen) >= wanted:
                break
            if version in loaded:
                chosen[version] = loaded[version]
                continue
            with self._lock:
                model.loading.add(version)
            try:
                predictor = loader(on_disk[version])
                # one key everywhere: the served name (the config's), not the name inside the manifest,
                # labels replies, sessions, pins and metrics (two entries may serve one export)
                predictor.name = model.name
                chosen[version] = predictor
                log.info("model %s version %d loaded (%s)", model.name, version, chosen[version].variant)
            except Exception as error:  # a broken version must not stop the others
                code, message, _ = wire_error(error if isinstance(error, ServingError) else _load_error(error))
                log.error("model %s version %d failed to load: %s", model.name, version, message)
                with self._lock:
                    model.failures[version] = (code, message)
            finally:
                with self._lock:
                    model.loading.discard(version)
        retired = [p for v, p in loaded.items() if v not in chosen]
        with self._lock:  # one step: new versions in, old ones out; requests never see neither
            model.predictors = dict(sorted(chosen.items()))
            model.retired.difference_update(chosen)
            model.retired.update(v for v in loaded if v not in chosen)
        for predictor in retired:
            log.info("model %s version %d retired", model.name, predictor.version)
            self._retire(predictor)

    def start_polling(self, interval_seconds: float) -> None:
        """Poll the base paths every `interval_seconds` in a background thread (until :meth:`close`)."""
        if interval_seconds <= 0 or self._poller is not None or self._loader is None:
            return

        def loop() -> None:
            while not self._stop.wait(interval_seconds):
                try:
                    self.poll()
                except Exception:  # keep polling; the error is in the log
                    log.exception("polling the model base paths failed")

        self._poller = threading.Thread(target=loop, name="rnnkit-poll", daemon=True)
        self._poller.start()

    # ------------------------------------------------------------------------------ leases

    def lease(self, name: str, version: int | None = None, label: str | None = None) -> Lease:
        """Resolve the version a request names and hold it until the lease is released."""
        with self._lock:
            predictor = self._resolve(name, version, label)
            self._in_flight[id(predictor)] = self._in_flight.get(id(predictor), 0) + 1
        return Lease(self, predictor)

    def _release(self, predictor: Predictor) -> None:
        with self._lock:
            left = self._in_flight.get(id(predictor), 1) - 1
            if left > 0:
                self._in_flight[id(predictor)] = left
                return
            self._in_flight.pop(id(predictor), None)
            closing = self._retired.pop(id(predictor), None)
        if closing is not None:
            closing.close()

    def _retire(self, predictor: Predictor) -> None:
        with self._lock:
            if self._in_flight.get(id(predictor), 0) > 0:
                self._retired[id(predictor)] = predictor
                return
        predictor.close()

    # ------------------------------------------------------------------------------ lookups

    @property
    def names(self) -> list[str]:
        return sorted(self._models)

    def model(self, name: str) -> ServedModel | None:
        return self._models.get(name)

    def available(self) -> bool:
        with self._lock:
            return any(m.predictors for m in self._models.values())

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Predictor:
        """The predictor a request names, without a lease (it may be retired at any time)."""
        with self._lock:
            return self._resolve(name, version, label)

    def _resolve(self, name: str, version: int | None, label: str | None) -> Predictor:
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

    def versions(self, name: str) -> list[int]:
        """Versions of `name` serving now, newest first."""
        with self._lock:
            model = self._models.get(name)
            return sorted(model.predictors, reverse=True) if model is not None else []

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """Version states, newest first (GetModelStatus)."""
        with self._lock:
            model = self._models.get(name)
            entries: dict[int, VersionStatus] = {}
            if model is not None:
                entries.update({v: VersionStatus(v, END) for v in model.retired})
                entries.update({v: VersionStatus(v, LOADING) for v in model.loading})
                entries.update({v: VersionStatus(v, END, c.name, m) for v, (c, m) in model.failures.items()})
                if model.unreadable is None:
                    entries.update({v: VersionStatus(v, AVAILABLE) for v in model.predictors})
                else:  # still serving, but the poller cannot see the base path: say so
                    note = f"serving the versions loaded before the base path became unreadable: {model.unreadable}"
                    entries.update({v: VersionStatus(v, AVAILABLE, "UNAVAILABLE", note) for v in model.predictors})
        if not entries:
            raise not_found(f"Could not find any versions of model {name}")
        if version is not None:
            if version not in entries:
                raise not_found(f"Could not find version {version} of model {name}")
            return [entries[version]]
        return [entries[v] for v in sorted(entries, reverse=True)]

    def loaded_versions(self) -> dict[str, int]:
        """How many versions of each model are serving (for the metrics)."""
        with self._lock:
            return {name: len(m.predictors) for name, m in self._models.items()}

    def close(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(30)
        with self._poll_lock, self._lock:
            closing = [p for m in self._models.values() for p in m.predictors.values()]
            closing += list(self._retired.values())
            for model in self._models.values():
                model.predictors = {}
            self._retired.clear()
        for predictor in closing:
            predictor.close()


def _load_error(error: Exception) -> ServingError:
    return ServingError(Code.UNKNOWN, f"{type(error).__name__}: {error}")
