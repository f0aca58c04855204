"""rnnkit.experiments: one experiment end to end in quick mode (CLI, table, JSON, PNG), and the
helper logic the experiments' conclusions rest on (parameter matching, thresholds, spans, fits)."""

import json
import math

import numpy as np
import pytest

from rnnkit.experiments import EXPERIMENTS, experiment_names
from rnnkit.experiments.clipping import StepRecorder
from rnnkit.experiments.counting import (
    accepted,
    anbn_prediction_batch,
    counts_to,
    encode_anbn,
    next_symbol_targets,
)
from rnnkit.experiments.depth import build_classifier
from rnnkit.experiments.fresh_batches import EVAL_STREAM, FreshBatches, evaluate, train_fresh
from rnnkit.experiments.memory_span import (
    ADDING_BASELINE_MSE,
    ADDING_SOLVED_MSE,
    is_solved,
    span,
    task_generator,
)
from rnnkit.experiments.parameters import budget_mismatch, count_parameters, match_units
from rnnkit.experiments.runner import format_table, jsonable
from rnnkit.experiments.vanishing import decay_fit
from rnnkit.tasks import make_task
from rnnkit.training import ModelSpec
from rnnkit_cli import build_parser, main


def test_bench_vanishing_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "vanishing"
    assert main(["bench", "vanishing", "--quick", "--seed", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "rho/step" in printed and "lstm[h,c]" in printed and "trained" in printed  # the table
    png = (out / "vanishing.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    payload = json.loads((out / "vanishing.json").read_text())
    assert payload["experiment"] == "vanishing" and payload["quick"] is True and payload["seed"] == 0
    results = payload["results"]
    for key in ("simple_init", "simple_trained", "lstm_init", "gru_trained", "lstm[h,c]_init"):
        assert 0 < results[key]["rate"] < 1.5 and -1 <= results[key]["r2"] <= 1
    assert results["seconds"] < 60


def test_bench_parser_knows_every_experiment():
    parser = build_parser()
    for name in (*experiment_names(), "all"):
        args = parser.parse_args(["bench", name, "--quick"])
        assert args.name == name and args.quick and args.func
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "nope"])
    for experiment in EXPERIMENTS.values():
        assert callable(experiment.load())


# -- parameter budgets -----------------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["simple", "gru", "lstm"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_count_parameters_equals_keras(cell, bidirectional):
    task = make_task("copy", train_examples=2, val_examples=2, lag=3)
    model = ModelSpec(cell=cell, units=7, layers=1, connection="none", bidirectional=bidirectional).build(task)
    expected = count_parameters(cell, 7, task.features, task.num_classes, bidirectional=bidirectional)
    assert model.count_params() == expected


def test_match_units_gives_the_closest_count():
    budget = count_parameters("lstm", 32, 10, 8)  # the memory-span budget
    for cell in ("simple", "gru", "lstm"):
        units = match_units(lambda u, cell=cell: count_parameters(cell, u, 10, 8), budget)
        count = count_parameters(cell, units, 10, 8)
        assert budget_mismatch(count, budget) < 0.03
        for neighbour in (units - 1, units + 1):
            assert abs(count_parameters(cell, neighbour, 10, 8) - budget) >= abs(count - budget)
    assert match_units(lambda u: count_parameters("lstm", u, 10, 8), budget) == 32
    with pytest.raises(ValueError, match="budget"):
        match_units(lambda u: 100 * u, 10)
    with pytest.raises(ValueError, match="cell"):
        count_parameters("rnn", 4, 2, 2)


# -- span criterion and spans ------------------------------------------------------------------------
def test_span_criterion():
    assert ADDING_SOLVED_MSE == pytest.approx(0.1 / 6)
    assert is_solved("adding", {"mse": 0.0166}) and not is_solved("adding", {"mse": 0.0167})
    assert is_solved("copy", {"accuracy": 0.99}) and not is_solved("copy", {"accuracy": 0.989})
    with pytest.raises(ValueError, match="task"):
        is_solved("parity", {"accuracy": 1.0})


def test_adding_baseline_is_the_mse_of_predicting_one():
    _, y = task_generator("adding", 30)(200_000, 3)
    assert np.mean((y - 1.0) ** 2) == pytest.approx(ADDING_BASELINE_MSE, rel=0.01)


def test_span_stops_at_the_first_unsolved_lag():
    lags = [10, 25, 50, 100, 200]
    assert span(lags, [True] * 5) == 200
    assert span(lags, [True, True, False, True, True]) == 25  # a later pass does not count
    assert span(lags, [True, True, None, None, None]) == 25  # not run counts as unsolved
    assert span(lags, [False, True, True, True, True]) == 0
    assert span([50, 10, 25], [False, True, True]) == 25  # order of the lists does not matter
    with pytest.raises(ValueError, match="lags"):
        span([5, 10], [True])


def test_task_generators_shapes_and_lag():
    x, y = task_generator("adding", 7)(5, 0)
    assert x.shape == (5, 7, 2) and y.shape == (5,)
    assert (x[:, :, 1].sum(axis=1) == 2).all()  # two markers per sequence
    x, y = task_generator("copy", 9)(5, 0)
    assert x.shape == (5, 10, 10) and (x[np.arange(5), 0, y] == 1).all() and (x[:, 9, 9] == 1).all()
    with pytest.raises(ValueError, match="task"):
        task_generator("parity", 3)


# -- fresh batches -----------------------------------------------------------------------------------
def test_fresh_batches_differ_every_step_and_repeat_per_seed():
    batches = FreshBatches(task_generator("adding", 12), 8, seed=4)
    first, second = batches.batch(0), batches.batch(1)
    assert not np.array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[0], FreshBatches(task_generator("adding", 12), 8, seed=4).batch(0)[0])
    assert not np.array_equal(first[0], FreshBatches(task_generator("adding", 12), 8, seed=5).batch(0)[0])
    x_eval, _ = batches.evaluation(8)
    assert all(not np.array_equal(x_eval, batches.batch(k)[0]) for k in range(20))
    with pytest.raises(ValueError, match="step"):
        batches.batch(EVAL_STREAM)


def test_evaluate_sequence_crossentropy_by_hand():
    class Fixed:
        def __call__(self, x, training=False):
            probs = np.array([[[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]]] * 2, dtype="float32")
            return {"probs": probs}

    y = np.array([[0, 1, -1], [0, 2, 2]])  # row 0: padded last step, all right; row 1: step 1 wrong
    metrics = evaluate(Fixed(), None, y, "sequence_crossentropy")
    assert metrics["accuracy"] == 0.5
    expected = -(np.log(0.8) + np.log(0.7) + np.log(0.8) + np.log(0.1) + np.log(0.4)) / 5
    assert metrics["loss"] == pytest.approx(expected, rel=1e-5)


def test_train_fresh_smoke_curve_and_early_stop():
    task = make_task("copy", train_examples=2, val_examples=2, lag=2)
    model = ModelSpec(cell="gru", units=4, layers=1, connection="none").build(task)
    batches = FreshBatches(task_generator("copy", 2), 8, seed=0)
    run = train_fresh(model, batches, steps=7, loss="crossentropy", eval_every=3, eval_examples=16, jit_compile=False)
    assert run["curve"]["step"] == [3, 6, 7] and run["steps"] == 7 and run["solved_at"] is None
    assert len(run["curve"]["accuracy"]) == len(run["curve"]["train_loss"]) == 3
    run = train_fresh(
        model,
        batches,
        steps=50,
        loss="crossentropy",
        eval_every=2,
        eval_examples=16,
        solved=lambda m: True,
        probe=lambda model: {"extra": 1.0},
        jit_compile=False,
    )
    assert run["solved_at"] == 2 and run["steps"] == 2 and run["curve"]["extra"] == [1.0]
    with pytest.raises(ValueError, match="loss"):
        train_fresh(model, batches, steps=1, loss="hinge", eval_every=1, eval_examples=4)


def test_bench_memory_span_quick_end_to_end(tmp_path):
    out = tmp_path / "memory_span"
    assert main(["bench", "memory_span", "--quick", "--out", str(out)]) == 0
    assert (out / "memory_span.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "memory_span_curves.png").read_bytes().startswith(b"\x89PNG")
    results = json.loads((out / "memory_span.json").read_text())["results"]
    for task in ("adding", "copy"):
        for cell in ("simple", "gru", "lstm"):
            record = results["tasks"][task]["cells"][cell]
            assert len(record["spans"]) == 1 and record["spans"][0] in (0, 5, 10)
            first = record["runs"][0]["lags"]["5"]
            assert first["curve"]["step"][-1] == first["steps"] <= 20


def test_decay_fit_recovers_a_geometric_rate():
    norms = 0.8 ** np.arange(60)
    fit = decay_fit(norms)
    assert fit["rate"] == pytest.approx(0.8) and fit["r2"] == pytest.approx(1.0)
    assert fit["lags_per_decade"] == pytest.approx(math.log(10) / -math.log(0.8))
    norms[40:] = 0.0  # float32 underflow: left out of the fit
    assert decay_fit(norms)["fitted_lags"] == 39 and decay_fit(norms)["rate"] == pytest.approx(0.8)
    assert decay_fit(np.ones(10))["lags_per_decade"] is None
    with pytest.raises(ValueError, match="positive norms"):
        decay_fit(np.array([1.0, 0.0, 0.0]))


# -- counting --------------------------------------------------------------------------------------
def test_next_symbol_targets_and_encoding():
    assert list(next_symbol_targets(1)) == [0, 2]
    assert list(next_symbol_targets(3)) == [0, 0, 0, 1, 1, 2]  # a|b after each a, b until the last, then end
    with pytest.raises(ValueError, match="n"):
        next_symbol_targets(0)
    x, targets = encode_anbn([2, 1], 5)
    np.testing.assert_array_equal(x[0, :, 0], [1, 1, 0, 0, 0])  # a channel
    np.testing.assert_array_equal(x[0, :, 1], [0, 0, 1, 1, 0])  # b channel, then all-zero padding
    np.testing.assert_array_equal(targets, [[0, 0, 1, 2, -1], [0, 2, -1, -1, -1]])
    with pytest.raises(ValueError, match="length"):
        encode_anbn([3], 5)
    x, targets = anbn_prediction_batch(64, [1, 2], max_n=7)
    assert x.shape == (64, 14, 2) and targets.shape == (64, 14)
    ns = x[:, :, 0].sum(axis=1)
    assert ns.min() >= 1 and ns.max() <= 7 and (x[:, :, 1].sum(axis=1) == ns).all()


class _Counter:
    """A stand-in model that counts exactly up to ``limit`` and says "end" one step late beyond it."""

    def __init__(self, limit):
        self.limit = limit

    def predict(self, x, batch_size=None, verbose=0):
        probs = np.zeros((*x.shape[:2], 3), dtype="float32")
        for row in range(len(x)):
            n = int(x[row, :, 0].sum())
            classes = [0] * n + [1] * (n - 1) + [2]
            if n > self.limit:
                classes = [0] * n + [1] * n  # misses the end
            probs[row, np.arange(len(classes)), classes] = 1.0
        return {"probs": probs}


def test_accepted_and_counts_to():
    ns = np.arange(1, 11)
    right = accepted(_Counter(limit=6), ns, 20)
    np.testing.assert_array_equal(right, ns <= 6)
    assert counts_to(ns, right) == 6
    right[2] = False  # n = 3 wrong
    assert counts_to(ns, right) == 2
    right[0] = False
    assert counts_to(ns, right) == 0


# -- depth -------------------------------------------------------------------------------------------
def test_depth_classifier_puts_a_skip_on_the_top_layer():
    """return_sequences=True inside: at 2 layers residual and none differ (they are equal when the
    top layer returns its summary, which is why the old 2-layer rows were identical)."""
    import keras

    x = np.random.default_rng(0).normal(size=(3, 5, 4)).astype("float32")
    keras.utils.set_random_seed(0)
    plain = build_classifier(2, "none", 6, 4, 2)
    residual = build_classifier(2, "residual", 6, 4, 2)
    residual.set_weights(plain.get_weights())  # same widths: no projection, the same weights
    assert not np.allclose(plain(x)["probs"], residual(x)["probs"], atol=1e-6)
    stack = residual.get_layer("encoder")
    assert stack.return_sequences and stack._has_skip(1)


# -- the clipping run's per-step record ------------------------------------------------------------
def test_step_recorder_recovers_step_losses_and_counts_skipped_steps():
    recorder = StepRecorder()
    step_losses = [4.0, 2.0, 6.0]
    recorder.on_epoch_begin(0)
    total = 0.0
    for k, loss in enumerate(step_losses, start=1):
        recorder.on_train_batch_begin(k - 1)
        total += loss
        recorder.on_train_batch_end(k - 1, {"loss": total / k, "grad_norm": 10.0 * k})
    recorder.on_train_batch_begin(3)  # non-finite: the trainer reports it, the recorder skips it
    recorder.on_train_batch_end(3, {"loss": math.nan, "grad_norm": math.nan})
    recorder.on_epoch_begin(1)
    recorder.on_train_batch_begin(0)
    recorder.on_train_batch_end(0, {"loss": 1.5, "grad_norm": 1.0})
    np.testing.assert_allclose(recorder.losses, [4.0, 2.0, 6.0, 1.5])
    assert recorder.grad_norms == [10.0, 20.0, 30.0, 1.0]
    assert recorder.attempted == 5 and recorder.non_finite == 1


def test_table_and_json_values():
    table = format_table(["a", "value"], [["x", 0.123456], ["y", None], ["z", math.inf]])
    assert table.splitlines()[2].split("|")[1].strip() == "0.1235"
    assert "-" in table.splitlines()[3] and "inf" in table.splitlines()[4]
    assert jsonable({"a": np.float32(1.5), "b": [math.nan, np.int64(3)], "c": np.array([1.0, math.inf])}) == {
        "a": 1.5,
        "b": [None, 3],
        "c": [1.0, None],
    }
