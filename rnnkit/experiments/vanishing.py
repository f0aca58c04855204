"""Vanishing gradients: ||dJ^(i)/dh^(j)|| against the lag i - j, and its geometric decay rate.

For each cell (simple, LSTM, GRU, and the LSTM's full state [h, c]),
`rnnkit.diagnostics.gradient_flow` measures the norm at initialization and after a short run
on the adding problem. A straight line through
log ||.|| against the lag (lags >= 1 with a non-zero norm) gives the per-step factor
rho = exp(slope): a geometric decay has rho < 1 and R^2 near 1, and the norm falls tenfold
every -1 / log10(rho) steps.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from rnnkit.experiments.runner import Report, format_table

CELLS = ("simple", "lstm", "gru")
SHOWN_LAGS = (1, 10, 50, 100)


def decay_fit(norms: np.ndarray) -> dict:
    """Least-squares line through ln(norm) against lag, over lags >= 1 with norm > 0.

    Returns ``{"rate": rho = exp(slope), "r2": R^2 of the fit, "lags_per_decade": steps per
    tenfold fall (None when the norm does not fall), "fitted_lags": how many lags were used}``.
    """
    norms = np.asarray(norms, dtype="float64")
    lags = np.arange(len(norms))
    keep = (lags >= 1) & (norms > 0) & np.isfinite(norms)
    if keep.sum() < 2:
        raise ValueError(f"decay_fit: needs at least 2 positive norms at lags >= 1, got {int(keep.sum())}.")
    x, y = lags[keep], np.log(norms[keep])
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    spread = np.sum((y - y.mean()) ** 2)
    r2 = 1.0 - np.sum(residual**2) / spread if spread > 0 else 1.0
    return {
        "rate": float(np.exp(slope)),
        "r2": float(r2),
        "lags_per_decade": float(-np.log(10) / slope) if slope < 0 else None,
        "fitted_lags": int(keep.sum()),
    }


def run_vanishing(quick: bool = False, seed: int = 0, out_dir: str | os.PathLike = "bench/out/vanishing") -> dict:
    """Gradient norm against lag for simple/LSTM/GRU, at init and after training; fitted decay rates."""
    from rnnkit.diagnostics import gradient_flow, plot_gradient_flow

    config = {
        "length": 40 if quick else 128,
        "units": 32,
        "batch": 16,
        "train_epochs": 1 if quick else 5,
        "train_examples": 128 if quick else 512,
        "learning_rate": 1e-2,
        "train_task": "adding (same length), Adam, global_clipnorm 1.0",
    }
    report = Report("vanishing", quick=quick, seed=seed, out_dir=out_dir, config=config)
    flows = [
        gradient_flow(
            cell,
            config["length"],
            units=config["units"],
            batch=config["batch"],
            seed=seed,
            train_epochs=config["train_epochs"],
            train_examples=config["train_examples"],
            learning_rate=config["learning_rate"],
        )
        for cell in CELLS
    ]
    # The LSTM's claimed gradient highway is its cell state c: also perturb the full state [h, c].
    full = gradient_flow(
        "lstm",
        config["length"],
        units=config["units"],
        batch=config["batch"],
        seed=seed,
        state="full",
        train_epochs=config["train_epochs"],
        train_examples=config["train_examples"],
        learning_rate=config["learning_rate"],
    )
    flows.append(dataclasses.replace(full, cell="lstm[h,c]"))
    lags = [lag for lag in SHOWN_LAGS if lag < config["length"]]
    rows, results = [], {}
    for flow in flows:
        for stage, norms in (("init", flow.norms), ("trained", flow.trained_norms)):
            fit = decay_fit(norms)
            key = f"{flow.cell}_{stage}"
            results[key] = {**fit, "norms": {str(lag): float(norms[lag]) for lag in lags}}
            rows.append(
                [flow.cell, stage, *(float(norms[lag]) for lag in lags), fit["rate"], fit["r2"], fit["lags_per_decade"]]
            )
        results[f"{flow.cell}_train_loss"] = flow.train_loss
    headers = ["cell", "stage", *(f"lag {lag}" for lag in lags), "rho/step", "R^2", "steps/decade"]
    table = format_table(headers, rows)
    report.out_dir.mkdir(parents=True, exist_ok=True)
    plot_gradient_flow(flows, report.plot_path)
    simple_rate = results["simple_init"]["rate"]
    notes = [
        f"mean ||dJ^(i)/dh^(j)|| (T={config['length']}, units={config['units']}, batch {config['batch']}); "
        "rho = exp(slope of ln norm vs lag); trained = after "
        f"{config['train_epochs']} epochs on the adding problem.",
        f"vanilla RNN at init: rho = {simple_rate:.3f} per step, R^2 = {results['simple_init']['r2']:.3f} "
        f"(geometric decay {'holds' if simple_rate < 1 and results['simple_init']['r2'] > 0.9 else 'does not hold'}).",
    ]
    return report.finish(table, None, results, notes)
