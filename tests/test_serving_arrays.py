"""rnnkit_serving.scheduling.arrays: the batcher's pad / merge / split as pure functions, checked against
hand-written arrays (no threads, no runtime)."""

import numpy as np

from rnnkit_serving.scheduling.arrays import merge_rows, pad_steps, split_rows


def seq(*lengths, value=1.0):
    """One request per length: (1, length, 1) arrays whose steps count up from `value`."""
    return [np.arange(value, value + n, dtype=np.float32).reshape(1, n, 1) for n in lengths]


def test_pad_steps_appends_zero_steps_only_on_the_time_axis():
    a = np.array([[[1.0, 2.0], [3.0, 4.0]]], np.float32)  # 1 x 2 steps x 2 features
    padded = pad_steps(a, 4)
    assert padded.tolist() == [[[1.0, 2.0], [3.0, 4.0], [0.0, 0.0], [0.0, 0.0]]] and padded.dtype == np.float32
    assert pad_steps(a, 2) is a  # long enough already: untouched


def test_merge_rows_concatenates_in_request_order_and_pads_only_timed_inputs():
    a, b = seq(2, 3)
    ids = [np.array([7], np.int64), np.array([8], np.int64)]
    merged = merge_rows([{"x": a, "n": ids[0]}, {"x": b, "n": ids[1]}], timed={"x"}, steps=3)
    assert merged["x"].tolist() == [[[1.0], [2.0], [0.0]], [[1.0], [2.0], [3.0]]]
    assert merged["n"].tolist() == [7, 8] and merged["n"].dtype == np.int64


def test_merge_rows_fills_to_an_allowed_batch_size_with_zero_rows():
    a, b = seq(2, 2, value=5.0)
    merged = merge_rows([{"x": a}, {"x": b}], rows=4)
    assert merged["x"].shape == (4, 2, 1)
    assert merged["x"][:, :, 0].tolist() == [[5.0, 6.0], [5.0, 6.0], [0.0, 0.0], [0.0, 0.0]]


def test_split_rows_cuts_back_rows_and_each_requests_own_length():
    outputs = {
        "seq": np.arange(4 * 3, dtype=np.float32).reshape(4, 3, 1),  # a sequence output, padded to 3 steps
        "last": np.array([[10.0], [11.0], [12.0], [13.0]], np.float32),  # one value per row
    }
    parts = split_rows(outputs, rows=[1, 2], steps=[2, 3], sequences={"seq"})
    assert [p["seq"].shape for p in parts] == [(1, 2, 1), (2, 3, 1)]  # row 4 (filler) dropped
    assert parts[0]["seq"][0, :, 0].tolist() == [0.0, 1.0]  # first request: its own 2 steps
    assert parts[1]["seq"][:, :, 0].tolist() == [[3.0, 4.0, 5.0], [6.0, 7.0, 8.0]]
    assert [p["last"].tolist() for p in parts] == [[[10.0]], [[11.0], [12.0]]]


def test_split_rows_without_padding_only_cuts_rows():
    outputs = {"y": np.arange(6, dtype=np.float32).reshape(3, 2)}
    parts = split_rows(outputs, rows=[2, 1])
    assert [p["y"].tolist() for p in parts] == [[[0.0, 1.0], [2.0, 3.0]], [[4.0, 5.0]]]


def test_merge_then_split_round_trips_each_request():
    requests = [{"x": r} for r in seq(1, 3, 2, value=2.0)]
    merged = merge_rows(requests, timed={"x"}, steps=3, rows=4)
    parts = split_rows({"x": merged["x"]}, rows=[1, 1, 1], steps=[1, 3, 2], sequences={"x"})
    for request, part in zip(requests, parts):
        np.testing.assert_array_equal(part["x"], request["x"])
