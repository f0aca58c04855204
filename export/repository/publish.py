"""The model repository on disk: atomic publication of version directories and server configs.

Layout (ARCHITECTURE.md, contract 3)::

    <base>/models.config              TF Serving --model_config_file (every model under <base>)
    <base>/<name>/config.pbtxt        Triton, platform onnxruntime_onnx, dynamic batching
    <base>/<name>/<version>/          saved_model.pb, variables/, assets.extra/, model.onnx, step.onnx, rnnkit.json
    <base>/<name>_step/config.pbtxt   Triton sequence-batched step model with implicit state
    <base>/<name>_step/<version>/step.onnx
    <base>/<name>_encoder/config.pbtxt         encoder-decoder models: Triton model over encoder.onnx
    <base>/<name>_encoder/<version>/encoder.onnx
    <base>/<name>_decoder_step/config.pbtxt    Triton sequence-batched decoder step, implicit state
    <base>/<name>_decoder_step/<version>/decoder_step.onnx   seeded from the encoder (``triton_seed``)

Everything one export makes visible is staged first (`Publication`): each version directory
under a hidden ``.rnnkit-tmp-*`` name beside its final place, each config file as a hidden
temporary file beside the one it replaces. Staged files and directories are fsynced, then
`Publication.commit` renames the versions into place and replaces the configs. A failure
before the commit removes what was staged; a failure during it also takes back what it had
already made visible, so a failed export never leaves a new version (or a changed config)
behind. A server polling <base> never sees half a version. The configs' text is rendered by
``configs`` (pure functions); this module decides where it goes and publishes it.

Staging names carry their owner, ``.rnnkit-tmp-<host>-<pid>-…``; an export killed with
SIGKILL leaves its staging behind, and the next export under the same base removes it
(`remove_stale_staging`: the owner is a process of this host that no longer exists, or, for a
name without an owner of this host, it is older than `STALE_AFTER_SECONDS`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator

from rnnkit_export.analysis.model_io import TensorInfo
from rnnkit_export.repository import RepositoryError
from rnnkit_export.repository.configs import (
    models_config,
    triton_config,
    triton_decoder_step_config,
    triton_step_config,
)
from rnnkit_export.repository.triton_seed import write_seeded_decoder_step
from rnnkit_export.streaming.step import StreamingPlan
from rnnkit_serving.core.repository_format import (
    DECODER_STEP_FILE,
    ENCODER_FILE,
    MODELS_CONFIG_FILE,
    ONNX_FORMAT,
    SAVED_MODEL_FILE,
    SAVEDMODEL_FORMAT,
    STEP_FILE,
    TRITON_CONFIG_FILE,
)

__all__ = [  # the renderers are re-exported: `stage_server_configs` calls them through this module
    "Publication",
    "RepositoryError",
    "check_base_path",
    "check_name",
    "check_serving_base_path",
    "inventory",
    "models_config",
    "next_version",
    "publication",
    "remove_stale_staging",
    "stage_server_configs",
    "triton_config",
    "triton_decoder_step_config",
    "triton_step_config",
]

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
TMP_PREFIX = ".rnnkit-tmp-"
STALE_AFTER_SECONDS = 24 * 3600  # for staging names without an owner on this host
OWNER = re.compile(r"^" + re.escape(TMP_PREFIX) + r"(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-")
# the Triton models beside <name> for its streaming graphs
STEP_SUFFIX = "_step"
ENCODER_SUFFIX = "_encoder"
DECODER_STEP_SUFFIX = "_decoder_step"


def check_name(name: str) -> str:
    if not isinstance(name, str) or not MODEL_NAME.match(name):
        raise RepositoryError(
            f"argument `model_name` must match {MODEL_NAME.pattern} (letters, digits, '_', '.', '-'). "
            f"Received: model_name={name!r}"
        )
    return name


def versions(model_dir: str) -> list[int]:
    """Published version numbers under a model directory (TF Serving's rule: integer names)."""
    if not os.path.isdir(model_dir):
        return []
    return sorted(int(entry) for entry in os.listdir(model_dir) if entry.isdigit())


def next_version(model_dir: str) -> int:
    return (versions(model_dir) or [0])[-1] + 1


def check_base_path(base_path: str) -> str:
    base = os.path.abspath(base_path)
    try:
        os.makedirs(base, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=base, prefix=staging_prefix()):
            pass
    except OSError as error:
        raise RepositoryError(f"model_base_path {base!r} is not a writable directory: {error}") from error
    return base


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def staging_prefix(label: str = "") -> str:
    """``.rnnkit-tmp-<host>-<pid>-<label>``: the owner of a staging entry is in its name."""
    return f"{TMP_PREFIX}{_host_tag()}-{os.getpid()}-{label}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def is_stale(path: str) -> bool:
    """Whether a ``.rnnkit-tmp-*`` entry belongs to no running export (see the module docstring)."""
    match = OWNER.match(os.path.basename(path))
    if match and match["host"] == _host_tag():
        pid = int(match["pid"])
        return pid != os.getpid() and not _pid_alive(pid)
    try:
        age = time.time() - os.lstat(path).st_mtime
    except FileNotFoundError:
        return False
    return age > STALE_AFTER_SECONDS


def remove_stale_staging(base: str) -> list[str]:
    """Remove stale staging entries in `base` and in each model directory under it; return them."""
    removed: list[str] = []
    try:
        directories = [base] + [
            os.path.join(base, e) for e in sorted(os.listdir(base)) if os.path.isdir(os.path.join(base, e))
        ]
    except FileNotFoundError:
        return removed
    for directory in directories:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for entry in sorted(os.listdir(directory)):
                path = os.path.join(directory, entry)
                if not entry.startswith(TMP_PREFIX) or not is_stale(path):
                    continue
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                if not os.path.lexists(path):
                    removed.append(path)
    return removed


def fsync_path(path: str) -> None:
    """fsync one file or directory (directories: their entries, i.e. names created or renamed)."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if os.path.isdir(path) else 0)
    handle = os.open(path, flags)
    try:
        os.fsync(handle)
    except OSError as error:  # some filesystems cannot fsync a directory
        if error.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(handle)


def fsync_tree(root: str) -> None:
    """fsync every file under `root`, then every directory bottom-up, `root` last."""
    for directory, _, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                fsync_path(path)
        fsync_path(directory)


def inventory(directory: str) -> dict[str, int]:
    """Relative path -> size in bytes of every file under `directory` (``rnnkit.json``'s ``files``:
    a reader can check that a version is whole)."""
    return {
        os.path.relpath(os.path.join(root, name), directory).replace(os.sep, "/"): os.path.getsize(
            os.path.join(root, name)
        )
        for root, _, names in sorted(os.walk(directory))
        for name in sorted(names)
    }


def _umasked(mode: int) -> int:
    """`mode` less the process umask (mkdtemp/mkstemp create 0700/0600; published entries should
    be readable by a server running as another user, as a plain mkdir/open would make them)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return mode & ~umask


def _write_synced(path: str, text: str) -> None:
    with open(path, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())


class Publication:
    """Everything one export makes visible, staged hidden and made visible by `commit`.

    `stage_version` gives a hidden directory to fill for a final version directory;
    `stage_text` writes a config file's new text beside it. `commit` fsyncs what was staged,
    renames the versions into place (the publishing step) and then replaces the configs; if any
    of that fails it takes back what it had done (renamed versions removed, replaced configs
    restored) and re-raises. `abort` removes everything staged.
    """

    def __init__(self) -> None:
        self.versions: list[tuple[str, str]] = []  # (staging directory, final directory)
        self.texts: list[tuple[str, str]] = []  # (staged file, final file)
        self._lock: int | None = None  # the repository's lock, held from staging its configs to the end

    def lock(self, base: str) -> None:
        """Hold the repository `base` exclusively until this publication ends (committed or not): two
        exports into one repository at once would each render ``models.config`` from what they saw,
        and the second rename would drop the first model. The lock is an advisory ``flock`` on the
        directory itself, so no lock file appears in the repository; it ends with the process."""
        if self._lock is None:
            fd = os.open(base, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock = fd

    def stage_version(self, final: str) -> str:
        if os.path.exists(final):
            raise RepositoryError(f"{final!r} already exists; published versions are never overwritten")
        parent = os.path.dirname(final)
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=staging_prefix(os.path.basename(final) + "-"), dir=parent)
        self.versions.append((staging, final))
        os.chmod(staging, _umasked(0o777))
        return staging

    def stage_text(self, path: str, text: str) -> None:
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        handle, staged = tempfile.mkstemp(prefix=staging_prefix(), dir=directory)
        os.close(handle)
        self.texts.append((staged, path))
        os.chmod(staged, _umasked(0o666))
        _write_synced(staged, text)

    def commit(self) -> None:
        for staging, _ in self.versions:
            fsync_tree(staging)
        published: list[str] = []
        replaced: list[tuple[str, bytes | None]] = []
        try:
            for staging, final in self.versions:
                if os.path.exists(final):
                    raise RepositoryError(f"{final!r} already exists; published versions are never overwritten")
                os.rename(staging, final)  # atomic on one filesystem
                published.append(final)
            for staged, path in self.texts:
                try:
                    with open(path, "rb") as old:
                        previous: bytes | None = old.read()
                except FileNotFoundError:
                    previous = None
                os.replace(staged, path)
                replaced.append((path, previous))
            for directory in dict.fromkeys(os.path.dirname(p) for p in published + [p for _, p in self.texts]):
                fsync_path(directory)
        except BaseException:
            self._take_back(published, replaced)
            raise

    def _take_back(self, published: list[str], replaced: list[tuple[str, bytes | None]]) -> None:
        for path, previous in reversed(replaced):
            with contextlib.suppress(OSError):
                if previous is None:
                    os.unlink(path)
                else:
                    handle, staged = tempfile.mkstemp(prefix=staging_prefix(), dir=os.path.dirname(path))
                    with os.fdopen(handle, "wb") as out:
                        out.write(previous)
                    os.replace(staged, path)
        for final in reversed(published):
            hidden = os.path.join(os.path.dirname(final), staging_prefix(os.path.basename(final) + "-undo"))
            with contextlib.suppress(OSError):
                os.rename(final, hidden)
                shutil.rmtree(hidden, ignore_errors=True)

    def _unlock(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            os.close(self._lock)
            self._lock = None

    def abort(self) -> None:
        for staging, _ in self.versions:
            shutil.rmtree(staging, ignore_errors=True)
        for staged, _ in self.texts:
            with contextlib.suppress(OSError):
                os.unlink(staged)
        self._unlock()


@contextlib.contextmanager
def publication(final: str) -> Iterator[tuple[Publication, str]]:
    """Stage version directory `final` (yielded with the publication) and commit on success;
    on any failure nothing staged stays behind. Stale staging under the repository (two levels
    above `final`) is removed first. An existing `final` is never touched."""
    remove_stale_staging(os.path.dirname(os.path.dirname(final)))
    pending = Publication()
    try:
        staging = pending.stage_version(final)
        yield pending, staging
        pending.commit()
    finally:
        pending.abort()  # after a commit only what it did not consume (nothing) is left


def tf_serving_models(base: str) -> list[str]:
    """Model directories under `base` with at least one SavedModel version."""
    found = []
    for entry in sorted(os.listdir(base)):
        model_dir = os.path.join(base, entry)
        if any(os.path.isfile(os.path.join(model_dir, str(v), SAVED_MODEL_FILE)) for v in versions(model_dir)):
            found.append(entry)
    return found


def check_serving_base_path(path: str) -> str:
    """Where the repository will be mounted for serving: an absolute POSIX path (``/models``) or a
    URI (``gs://bucket/models``), without a trailing slash."""
    if not (path.startswith("/") or "://" in path) or any(c in path for c in '"\\\n'):
        raise RepositoryError(
            f"serving_base_path must be an absolute path or a URI where the repository is mounted for "
            f"serving (e.g. /models); received {path!r}"
        )
    return path.rstrip("/") or "/"


def _link(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def stage_server_configs(
    pending: Publication,
    base: str,
    name: str,
    version: int,
    formats: list[str],
    inputs: list[TensorInfo],
    outputs: list[TensorInfo],
    plan: StreamingPlan,
    step_variants: list[str] | None = None,
    serving_base: str | None = None,
) -> None:
    """Stage what a new version of `name` changes beside its directory: ``models.config``
    (SavedModel; base paths under `serving_base` when given), the Triton ``config.pbtxt`` (which
    holds no paths: Triton takes the repository from ``--model-repository``) and, for streamable
    models, the ``<name>_step`` version (``step.onnx`` and the published `step_variants` such as
    ``step.int8.onnx``, hard-linked from the staged version when possible) and its config; for
    encoder-decoder models the ``<name>_encoder`` (``encoder.onnx`` hard-linked) and
    ``<name>_decoder_step`` (the seeded decoder step) versions and their configs."""
    staging, _ = pending.versions[0]
    pending.lock(base)  # from reading what the repository holds to renaming into it: one export at a time
    if SAVEDMODEL_FORMAT in formats:  # every SavedModel model of the tree, `name` included from now on
        pending.stage_text(
            os.path.join(base, MODELS_CONFIG_FILE), models_config([*tf_serving_models(base), name], base, serving_base)
        )
    if ONNX_FORMAT not in formats:
        return
    pending.stage_text(os.path.join(base, name, TRITON_CONFIG_FILE), triton_config(name, inputs, outputs))
    if plan.reason is None:
        step_name = name + STEP_SUFFIX
        step_staging = pending.stage_version(os.path.join(base, step_name, str(version)))
        for file in [STEP_FILE, *(step_variants or [])]:
            _link(os.path.join(staging, file), os.path.join(step_staging, file))
        pending.stage_text(
            os.path.join(base, step_name, TRITON_CONFIG_FILE), triton_step_config(step_name, inputs, outputs, plan)
        )
    pair = plan.encoder_decoder
    if pair is not None:
        encoder_name, decoder_name = name + ENCODER_SUFFIX, name + DECODER_STEP_SUFFIX
        encoder_staging = pending.stage_version(os.path.join(base, encoder_name, str(version)))
        _link(os.path.join(staging, ENCODER_FILE), os.path.join(encoder_staging, ENCODER_FILE))
        pending.stage_text(
            os.path.join(base, encoder_name, TRITON_CONFIG_FILE),
            triton_config(encoder_name, list(pair.source), pair.encoder_outputs(), ENCODER_FILE),
        )
        decoder_staging = pending.stage_version(os.path.join(base, decoder_name, str(version)))
        write_seeded_decoder_step(
            os.path.join(staging, DECODER_STEP_FILE),
            os.path.join(decoder_staging, DECODER_STEP_FILE),
            [t.name for t in pair.plan.state_inputs()],
        )
        pending.stage_text(
            os.path.join(base, decoder_name, TRITON_CONFIG_FILE), triton_decoder_step_config(decoder_name, pair)
        )
