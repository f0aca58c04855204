"""kill -9 of a real `rnnkit export` process at random points: every numbered version directory
is whole (all the files its rnnkit.json lists, with their sizes), the configs parse, and the next
export removes the staging a killed one left behind.

One fresh `python -m rnnkit export` process per trial, a tiny model, SIGKILL after a random delay:
half the delays are spread over a whole export (timed on a first, complete one), half over the
time between the export's staging directory appearing and its publication (+20 %), where the
interesting kills happen.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import keras
import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from rnnkit import layers as rk
from rnnkit_export.repository import publish as repository

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRIALS = 24
SEED = 11
REQUIRED = ("saved_model.pb", "model.onnx", "step.onnx", "assets.extra/tf_serving_warmup_requests")

pytestmark = pytest.mark.slow


def hidden_entries(base):
    return sorted(
        os.path.relpath(os.path.join(root, name), base)
        for root, dirs, files in os.walk(base)
        for name in dirs + files
        if name.startswith(repository.TMP_PREFIX)
    )


def numbered(directory):
    return sorted(int(e) for e in os.listdir(directory) if e.isdigit()) if os.path.isdir(directory) else []


def check_repository(base):
    """Every published version is whole and every config present parses; returns the versions."""
    published = numbered(base / "t")
    for version in published:
        path = base / "t" / str(version)
        manifest = json.loads((path / "rnnkit.json").read_text())
        assert manifest["version"] == version
        on_disk = {
            os.path.relpath(os.path.join(r, f), path): os.path.getsize(os.path.join(r, f))
            for r, _, fs in os.walk(path)
            for f in fs
            if f != "rnnkit.json"
        }
        assert on_disk == manifest["files"], f"version {version} differs from its rnnkit.json"
        assert set(REQUIRED) <= set(on_disk), f"version {version} lacks {set(REQUIRED) - set(on_disk)}"
    for version in numbered(base / "t_step"):
        assert version in published, f"t_step/{version} without t/{version}"
        assert os.listdir(base / "t_step" / str(version)) == ["step.onnx"]
        step_size = os.path.getsize(base / "t_step" / str(version) / "step.onnx")
        assert step_size == os.path.getsize(base / "t" / str(version) / "step.onnx")
    if (base / "models.config").exists():
        config = text_format.Parse((base / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())
        assert [c.name for c in config.model_config_list.config] == ["t"]
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    for name in ("t", "t_step"):
        if (base / name / "config.pbtxt").exists():
            text_format.Parse((base / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    return published


def export_command(model_path, base):
    return [sys.executable, "-m", "rnnkit", "export", str(model_path), "--model_base_path", str(base)] + [
        "--model_name",
        "t",
    ]


def test_kill_9_at_random_points_never_leaves_half_a_version(tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((None, 2), name="x")
    model = keras.Model(inp, keras.layers.Dense(1, name="d")(rk.LSTM(3, return_sequences=True, name="l")(inp)))
    model_path = tmp_path / "tiny.keras"
    model.save(model_path)
    base = tmp_path / "repo"
    env = {**os.environ, "PYTHONPATH": ROOT}

    # A complete export, timed: when its staging directory appears, when it ends.
    start = time.monotonic()
    process = subprocess.Popen(export_command(model_path, base), env=env, stdout=subprocess.DEVNULL)
    staged_at = published_at = None
    while process.poll() is None:
        if staged_at is None and (base / "t").is_dir() and hidden_entries(base / "t"):
            staged_at = time.monotonic() - start
        if published_at is None and (base / "t" / "1").is_dir():
            published_at = time.monotonic() - start
        time.sleep(0.005)
    total = time.monotonic() - start
    assert process.returncode == 0
    assert staged_at is not None and published_at is not None and check_repository(base) == [1]

    rng = random.Random(SEED)
    outcomes = {"killed": 0, "finished": 0, "left staging": 0, "published": 0}
    for trial in range(TRIALS):
        before = numbered(base / "t")
        process = subprocess.Popen(
            export_command(model_path, base), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if trial % 2 == 0:
            time.sleep(rng.uniform(0, total))
        else:  # a random point after this export's staging directory appeared
            delay = rng.uniform(0, 1.2 * (published_at - staged_at))
            mine = f"-{process.pid}-"
            while process.poll() is None and not any(mine in e for e in hidden_entries(base / "t")):
                time.sleep(0.01)
            time.sleep(delay)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
        outcomes["killed" if process.returncode == -signal.SIGKILL else "finished"] += 1
        after = check_repository(base)
        outcomes["published"] += len(after) > len(before)
        outcomes["left staging"] += any(str(process.pid) in entry for entry in hidden_entries(base))
    print(
        f"\n{TRIALS} trials; a full export: staging at {staged_at:.1f} s, published at {published_at:.1f} s, "
        f"exit at {total:.1f} s; {outcomes}"
    )
    assert outcomes["killed"] >= TRIALS // 2  # most trials really were killed
    assert outcomes["left staging"] >= TRIALS // 4  # many kills hit the staging window

    stale = hidden_entries(base)
    done = subprocess.run(export_command(model_path, base), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert hidden_entries(base) == [], f"stale staging left after a complete export (before it: {stale})"
    versions = check_repository(base)
    assert versions[-1] == int(done.stdout.split()[3])  # "exported t version N -> ..."
    assert numbered(base / "t_step")[-1] == versions[-1]
