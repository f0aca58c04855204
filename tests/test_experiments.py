"""rnnkit.experiments: one experiment end to end in quick mode (CLI, table, JSON, PNG), and the
helper logic the experiments' conclusions rest on (parameter matching, thresholds, spans, fits)."""

import json
import math

import numpy as np
import pytest

from rnnkit.cli import build_parser, main
from rnnkit.experiments import EXPERIMENTS, experiment_names
from rnnkit.experiments.clipping import StepRecorder
from rnnkit.experiments.counting import counts_to, is_member, off_by_one_strings
from rnnkit.experiments.memory_span import accuracy_threshold, usable_span
from rnnkit.experiments.parameters import budget_mismatch, count_parameters, match_units
from rnnkit.experiments.runner import format_table, jsonable
from rnnkit.experiments.vanishing import decay_fit
from rnnkit.tasks import make_task
from rnnkit.training import ModelSpec


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


# -- thresholds and spans -----------------------------------------------------------------------------
def test_accuracy_threshold():
    assert accuracy_threshold(1 / 8) == pytest.approx(0.9125)
    assert accuracy_threshold(0.5, 0.5) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="chance"):
        accuracy_threshold(1.0)
    with pytest.raises(ValueError, match="fraction"):
        accuracy_threshold(0.1, 0.0)


def test_usable_span_stops_at_the_first_failure():
    lags = [5, 10, 20, 50, 100]
    assert usable_span(lags, [1, 1, 1, 1, 1], 0.9) == 100
    assert usable_span(lags, [1, 0.95, 0.5, 1, 1], 0.9) == 10  # a later pass does not count
    assert usable_span(lags, [0.2, 1, 1, 1, 1], 0.9) == 0
    assert usable_span([20, 5, 10], [0.1, 1, 1], 0.9) == 10  # order of the lists does not matter
    assert usable_span([5], [0.9], 0.9) == 5  # the threshold itself passes
    with pytest.raises(ValueError, match="lags"):
        usable_span([5, 10], [1.0], 0.9)


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


# -- counting test sets -----------------------------------------------------------------------------
def test_off_by_one_strings_and_counts_to():
    strings, ns = off_by_one_strings(3)
    assert strings == ["ab", "abb", "aabb", "aab", "aabbb", "aaabbb", "aaabb", "aaabbbb"]
    assert list(ns) == [1, 1, 2, 2, 2, 3, 3, 3]
    assert [is_member(s) for s in strings] == [True, False, True, False, False, True, False, False]
    assert not is_member("") and not is_member("ba") and not is_member("abab")
    right = np.ones(len(strings), dtype=bool)
    assert counts_to(ns, right) == 3
    right[4] = False  # one n = 2 string wrong
    assert counts_to(ns, right) == 1
    right[0] = False
    assert counts_to(ns, right) == 0


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
