"""`rnnkit demo` / `make demo`: the main job on a built-in default, end to end.

1. Build a stacked residual bidirectional LSTM classifier from rnnkit layers and train it
   (global-norm clipping, non-finite guard, checkpoints) on the built-in sentiment task.
2. Measure gradient flow through time for simple/LSTM/GRU cells (table + PNG).
3. Export the trained model into a model repository (SavedModel + fused-op ONNX), parity-checked.
4. Serve the repository on 127.0.0.1 with rnnkit's server and query it over TF Serving REST and
   gRPC (when the serving package is installed), then stop the server.

Everything goes under ``demo_out/`` (replaced on each run). The demo lives in the launcher, the
composition root that may import every box: the library, the exporter and the server never
import each other's code (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

DEMO_SPEC: dict[str, Any] = {"cell": "lstm", "units": 16, "layers": 2, "connection": "residual", "bidirectional": True}
DEMO_TASK = "sentiment"
DEMO_EPOCHS = 12


def demo_batch(seed: int = 0, batch: int = 4, time: int = 12, features: int = 8) -> np.ndarray:
    """Random sequences, right-padded with zero vectors to different lengths."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, time, features)).astype("float32")
    lengths = rng.integers(time // 2, time + 1, size=batch)
    for row, length in enumerate(lengths):
        x[row, length:] = 0.0
    return x


def build_demo_model(features: int = 8, classes: int = 3, seed: int = 0) -> Any:
    """The untrained demo architecture on its own (used by tests and docs)."""
    import keras

    from rnnkit.layers import StackedRNN

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(None, features), name="features")
    masked = keras.layers.Masking(mask_value=0.0, name="padding_mask")(inputs)
    encoded = StackedRNN(16, num_layers=3, cell="lstm", bidirectional=True, connection="residual", name="encoder")(
        masked
    )
    probs = keras.layers.Dense(classes, activation="softmax", name="probs")(encoded)
    return keras.Model(inputs, {"probs": probs}, name="rnnkit_demo")


def _heading(text: str) -> None:
    print(f"\n== {text} " + "=" * max(0, 72 - len(text)), flush=True)


def run_demo(seed: int = 0, out: str | os.PathLike = "demo_out", epochs: int = DEMO_EPOCHS, serve: bool = True) -> dict:
    from rnnkit.diagnostics import gradient_flow, gradient_flow_table, plot_gradient_flow
    from rnnkit.tasks import make_task
    from rnnkit.training import ModelSpec, train

    out_dir = Path(out)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    results: dict = {}

    _heading(f"1. train a stacked residual bidirectional LSTM on '{DEMO_TASK}'")
    task = make_task(DEMO_TASK, seed=seed)
    spec = ModelSpec(**DEMO_SPEC)
    started = time.perf_counter()
    history = train(spec, task, epochs, out_dir / "run", learning_rate=1e-2, batch_size=32, seed=seed)
    import keras

    import rnnkit.layers  # noqa: F401  (registers the classes for loading)

    model = keras.saving.load_model(out_dir / "run" / "model.keras")
    model.summary()
    accuracy = float(history.history["val_accuracy"][-1])
    results["val_accuracy"] = accuracy
    print(
        f"validation accuracy {accuracy:.3f} after {epochs} epochs in {time.perf_counter() - started:.1f} s; "
        f"max pre-clip gradient norm {max(history.history['grad_norm_max']):.2f}, "
        f"clipped steps {np.mean(history.history['clipped_fraction']):.0%}"
    )

    _heading("2. gradient flow: ||dJ(i)/dh(j)|| against the lag i - j")
    flows = [gradient_flow(cell, 128, seed=seed) for cell in ("simple", "lstm", "gru")]
    print(gradient_flow_table(flows))
    plot = out_dir / "gradient_flow.png"
    plot_gradient_flow(flows, plot)
    print(f"plot: {plot}")

    try:
        from rnnkit_export import export_model
    except ModuleNotFoundError:
        print("\n(export is not installed: pip install -e '.[export]' to run the rest of the demo)")
        return results
    _heading("3. export: SavedModel + fused-op ONNX, parity-checked")
    report = export_model(model, str(out_dir / "models"), "sentiment")
    print(report.summary())
    results["export"] = report

    if serve:
        try:
            from rnnkit_serving.server import demo as serving_demo
        except ModuleNotFoundError:
            print("\n(serving is not installed yet: the demo stops after export)")
            return results
        _heading("4. serve on 127.0.0.1 and query over TF Serving REST and gRPC")
        sample = task.x_val[:4]
        want = np.asarray(model(sample)["probs"])
        results["serving"] = serving_demo.run(str(out_dir / "models"), "sentiment", {"sequences": sample}, want)
    return results
