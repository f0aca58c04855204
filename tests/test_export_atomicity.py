"""What a failed or killed export leaves behind: configs inside the failure boundary, fsync before
the publishing rename, stale staging cleanup, the parity shape check, and a quiet CLI."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import onnxruntime
import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from rnnkit import layers as rk
from rnnkit_export import ExportError, export_model
from rnnkit_export.repository import publish as repository
from rnnkit_export.verify.parity import GraphKind, ParityFailure, ParityResult

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((None, 2), name="x")
    y = rk.LSTM(3, return_sequences=True, name="l")(inp)
    return keras.Model(inp, keras.layers.Dense(1, name="d")(y))


def snapshot(base):
    """Every entry under `base` -> file bytes (None for directories)."""
    found = {}
    for root, dirs, files in os.walk(base):
        for d in dirs:
            found[os.path.relpath(os.path.join(root, d), base)] = None
        for f in files:
            with open(os.path.join(root, f), "rb") as handle:
                found[os.path.relpath(os.path.join(root, f), base)] = handle.read()
    return found


def hidden_entries(base):
    return sorted(
        os.path.relpath(os.path.join(root, name), base)
        for root, dirs, files in os.walk(base)
        for name in dirs + files
        if name.startswith(repository.TMP_PREFIX)
    )


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A repository with version 1 of a streamable model (SavedModel + ONNX + step)."""
    base = tmp_path_factory.mktemp("models")
    export_model(tiny_model(), str(base), "m")
    return base


def copy_repo(published, tmp_path):
    import shutil

    base = tmp_path / "models"
    shutil.copytree(published, base)
    # the copy's models.config must point at the copy
    (base / "models.config").write_text((base / "models.config").read_text().replace(str(published), str(base)))
    return base


# --- 1. configs inside the failure boundary -------------------------------------------------------


@pytest.mark.parametrize("writer", ["models_config", "triton_config", "triton_step_config"])
def test_config_writer_failure_publishes_nothing(published, tmp_path, monkeypatch, writer):
    base = copy_repo(published, tmp_path)
    before = snapshot(base)

    def explode(*args, **kwargs):
        raise OSError(f"{writer} failed (injected)")

    monkeypatch.setattr(repository, writer, explode)
    with pytest.raises(
        ExportError, match=rf"^export of 'm' version 2 failed, nothing was published: {writer} failed \(injected\)$"
    ):
        export_model(tiny_model(), str(base), "m", verify=False)
    assert snapshot(base) == before  # no version 2, no m_step/2, configs byte-identical, no staging left


def test_config_writer_failure_for_a_new_model_leaves_no_configs(tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise OSError("no space left on device (injected)")

    monkeypatch.setattr(repository, "triton_config", explode)
    with pytest.raises(ExportError, match=r"nothing was published: no space left on device \(injected\)"):
        export_model(tiny_model(), str(tmp_path), "fresh", verify=False)
    assert snapshot(tmp_path) == {"fresh": None}


@pytest.mark.parametrize("failing", ["config.pbtxt", "models.config"])
def test_failure_while_publishing_takes_the_version_back(published, tmp_path, monkeypatch, failing):
    """The version is renamed into place, then replacing a config fails: the commit removes the
    version again and restores every config it had already replaced."""
    base = copy_repo(published, tmp_path)
    before = snapshot(base)
    real_replace, real_rename = os.replace, os.rename
    renamed = []

    def replace(src, dst, *args, **kwargs):
        if os.path.basename(dst) == failing and os.path.basename(src).startswith(repository.TMP_PREFIX):
            assert os.path.isdir(base / "m" / "2")  # the version was visible at this point
            raise OSError(f"replacing {failing} failed (injected)")
        return real_replace(src, dst, *args, **kwargs)

    def rename(src, dst, *args, **kwargs):
        renamed.append(os.path.relpath(dst, base))
        return real_rename(src, dst, *args, **kwargs)

    def arm(staging):
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "rename", rename)

    with pytest.raises(ExportError, match=rf"nothing was published: replacing {failing} failed \(injected\)$"):
        export_model(tiny_model(), str(base), "m", verify=False, _before_publish=arm)
    assert renamed[:2] == ["m/2", "m_step/2"]
    assert snapshot(base) == before


# --- 2. fsync before the publishing rename --------------------------------------------------------


def test_every_staged_file_and_directory_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    synced, checked = set(), []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        synced.add(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    def rename(src, dst, *args, **kwargs):
        if os.path.basename(src).startswith(repository.TMP_PREFIX):
            entries = [src] + [os.path.join(r, n) for r, ds, fs in os.walk(src) for n in ds + fs]
            missing = [os.path.relpath(e, src) for e in entries if e not in synced]
            checked.append((os.path.relpath(dst, tmp_path), len(entries), missing))
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    export_model(tiny_model(), str(tmp_path), "m", verify=False)
    assert [c[0] for c in checked] == ["m/1", "m_step/1"]
    assert checked[0][1] > 8  # saved_model.pb, variables/*, assets.extra/*, model.onnx, step.onnx, rnnkit.json
    assert [c[2] for c in checked] == [[], []]
    for published in ("m", "m_step", "."):  # the renames and replaced configs themselves
        assert os.path.normpath(str(tmp_path / published)) in synced


# --- 3. stale staging ----------------------------------------------------------------------------


def test_stale_staging_rule(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = repository.staging_prefix()[len(repository.TMP_PREFIX) :].split("-")[0]
        names = {
            "dead": f"{repository.TMP_PREFIX}{host}-{dead_pid()}-3-abc",
            "live": f"{repository.TMP_PREFIX}{host}-{live.pid}-3-abc",
            "mine": repository.staging_prefix("3-abc"),
            "other_host_old": f"{repository.TMP_PREFIX}0badf00d-{live.pid}-3-abc",
            "other_host_new": f"{repository.TMP_PREFIX}0badf00d-{live.pid}-4-abc",
            "legacy_old": f"{repository.TMP_PREFIX}3-k2j4h1",
            "legacy_new": f"{repository.TMP_PREFIX}4-k2j4h1",
        }
        model = tmp_path / "m"
        model.mkdir()
        for name in names.values():
            (model / name).mkdir()
            (model / name / "model.onnx").write_bytes(b"partial")
        dead_file = tmp_path / f"{repository.TMP_PREFIX}{host}-{dead_pid()}-x1y2"  # a staged config
        dead_file.write_text("model_config_list {")
        old = os.stat(model).st_mtime - repository.STALE_AFTER_SECONDS - 60
        for key in ("other_host_old", "legacy_old"):
            os.utime(model / names[key], (old, old))
        removed = repository.remove_stale_staging(str(tmp_path))
        assert sorted(os.path.basename(p) for p in removed) == sorted(
            [names["dead"], names["other_host_old"], names["legacy_old"], dead_file.name]
        )
        assert sorted(os.listdir(model)) == sorted(names[k] for k in ("live", "mine", "other_host_new", "legacy_new"))
    finally:
        live.kill()
        live.wait()


def test_next_export_removes_stale_staging(published, tmp_path):
    base = copy_repo(published, tmp_path)
    host = repository.staging_prefix()[len(repository.TMP_PREFIX) :].split("-")[0]
    stale = [
        base / "m" / f"{repository.TMP_PREFIX}{host}-{dead_pid()}-2-abc",
        base / "m_step" / f"{repository.TMP_PREFIX}{host}-{dead_pid()}-2-abc",
        base / "other" / f"{repository.TMP_PREFIX}{host}-{dead_pid()}-1-abc",
        base / f"{repository.TMP_PREFIX}{host}-{dead_pid()}-cfg",
    ]
    for path in stale:
        path.parent.mkdir(exist_ok=True)
        path.mkdir()
        (path / "saved_model.pb").write_bytes(b"half")
    export_model(tiny_model(), str(base), "m", formats="onnx", verify=False)
    assert hidden_entries(base) == []
    assert sorted(e for e in os.listdir(base / "m") if e.isdigit()) == ["1", "2"]


# --- 4. parity: shapes before values -------------------------------------------------------------


def test_parity_record_compares_shapes_first():
    result = ParityResult(1e-5)
    result.cases.append([3, 11])
    with pytest.raises(
        ExportError,
        match=r"^parity check failed for output 'd' \(batch 3, 11 steps\): Keras gives shape \(3, 11, 1\) but "
        r"model\.onnx \(ONNX Runtime\) gives shape \(3, 11\); the shapes must be equal$",
    ):
        result.record("onnx/d", np.zeros((3, 11, 1)), np.zeros((3, 11)))  # would broadcast to (3, 11, 11)
    result.record("onnx/d", np.zeros((3, 11, 1)), np.full((3, 11, 1), 0.5))
    assert result.max_abs_diff == {"onnx/d": 0.5}


def test_parity_failure_names_the_kind_of_graph():
    result = ParityResult(1e-5)
    result.record("onnx/d", np.zeros(3), np.full(3, 1e-6))
    result.record("onnx_step/d", np.zeros(3), np.full(3, 0.5), GraphKind.STREAMING)
    assert result.failure == ParityFailure("onnx_step/d", 0.5, GraphKind.STREAMING)
    result.record("onnx/d", np.zeros(3), np.full(3, 0.75))  # now the full model is the worst
    assert result.failure == ParityFailure("onnx/d", 0.75, GraphKind.FULL)
    assert ParityResult(1e-5).failure is None
    assert "graphs" not in result.to_json()  # rnnkit.json's parity entry is unchanged


def test_parity_shape_mismatch_fails_the_export(tmp_path, monkeypatch):
    real = onnxruntime.InferenceSession

    class ExtraAxis(real):  # answers with a trailing axis: (b, t, 1) -> (b, t, 1, 1)
        def run(self, names, feed, *args, **kwargs):
            return [np.expand_dims(a, -1) for a in super().run(names, feed, *args, **kwargs)]

    monkeypatch.setattr(onnxruntime, "InferenceSession", ExtraAxis)
    with pytest.raises(
        ExportError,
        match=r"^parity check failed for output 'd' \(batch 1, 5 steps\): Keras gives shape \(1, 5, 1\) but "
        r"model\.onnx \(ONNX Runtime\) gives shape \(1, 5, 1, 1\); the shapes must be equal$",
    ):
        export_model(tiny_model(), str(tmp_path), "m", formats="onnx")
    assert snapshot(tmp_path) == {"m": None}


# --- the manifest lists the files -----------------------------------------------------------------


def test_manifest_lists_every_file_with_its_size(published):
    version = published / "m" / "1"
    manifest = json.loads((version / "rnnkit.json").read_text())
    on_disk = {
        os.path.relpath(os.path.join(r, f), version): os.path.getsize(os.path.join(r, f))
        for r, _, fs in os.walk(version)
        for f in fs
        if f != "rnnkit.json"
    }
    assert manifest["files"] == on_disk
    assert {"saved_model.pb", "model.onnx", "step.onnx", "assets.extra/tf_serving_warmup_requests"} <= set(on_disk)


# --- 6. a quiet command line ---------------------------------------------------------------------


def test_cli_prints_only_its_own_lines_unless_verbose(tmp_path):
    path = tmp_path / "tiny.keras"
    tiny_model().save(path)
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    runs = {}
    for flags in ([], ["--verbose"]):
        command = [sys.executable, "-m", "rnnkit_cli", "export", str(path), "--model_base_path", str(tmp_path / "repo")]
        done = subprocess.run(command + ["--model_name", "t", *flags], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        runs[bool(flags)] = done
    quiet, verbose = runs[False], runs[True]
    assert quiet.stderr == ""
    assert quiet.stdout.startswith("exported t version 1 ->") and "parity ok" in quiet.stdout
    assert verbose.stdout.startswith("exported t version 2 ->")
    assert "WARNING tf2onnx" in verbose.stderr  # tf2onnx's shape-inference warnings
    assert "absl::InitializeLog" in verbose.stderr  # TensorFlow/absl start-up lines


def test_cli_errors_still_reach_stderr(published, tmp_path, capsys):
    from rnnkit_cli import main

    path = tmp_path / "tiny.keras"
    tiny_model().save(path)
    args = ["export", str(path), "--model_base_path", str(published), "--model_name", "m", "--version", "1"]
    assert main(args) == 1
    assert (
        capsys.readouterr().err
        == f"rnnkit export: {str(published / 'm' / '1')!r} already exists; published versions are never overwritten\n"
    )


def test_models_config_after_failures_still_parses(published):
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse((published / "models.config").read_text(), config)
    assert [c.name for c in config.model_config_list.config] == ["m"]


def test_two_exports_into_one_repository_take_turns_on_its_configs(tmp_path):
    """Issue 21: two exports of different models into one base at once could each render
    models.config from what they saw; the second rename dropped the first model. A publication now
    holds the repository's lock from staging its configs until it ends."""
    import threading
    import time

    base = str(tmp_path)
    first = repository.Publication()
    staging = first.stage_version(os.path.join(base, "a", "1"))
    open(os.path.join(staging, "saved_model.pb"), "wb").close()
    first.lock(base)
    first.stage_text(os.path.join(base, "models.config"), "a")
    seen = []

    def second_export():
        second = repository.Publication()
        second.lock(base)  # waits for the first publication to end
        seen.append(repository.tf_serving_models(base))
        second.abort()

    thread = threading.Thread(target=second_export)
    thread.start()
    time.sleep(0.3)
    assert seen == []  # still waiting
    first.commit()
    first.abort()
    thread.join(10)
    assert seen == [["a"]]  # it renders its configs from a repository that holds the first model
