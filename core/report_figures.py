"""The figures of ``qgf diagnose`` (``core.report`` computes them): one matplotlib figure per
analysis, and ``write_report``, which writes them with ``diagnose.json``.

- ``figure_noise_sensitivity`` (Fig. 3): cosine of G(s, a_t) and G(s, a_t + eps) per step.
- ``figure_q`` (Fig. 4): Q of each estimator's final action, and the oracle's Q against N.
- ``figure_distance`` (Fig. 17): distance to the oracle's action and to the data.
- ``figure_weights``: Q gap, distance to the data and off-manifold share against the weight.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from core.files import atomic_write, write_json
from core.report import DATA, ORACLE, DiagnoseReport

_SPECIAL_COLOURS = {ORACLE: "black", DATA: "0.55"}


def _colours(names: Sequence[str]) -> dict[str, str]:
    palette = [f"C{i}" for i in range(10)]
    out, i = {}, 0
    for name in names:
        if name in _SPECIAL_COLOURS:
            out[name] = _SPECIAL_COLOURS[name]
        else:
            out[name] = palette[i % len(palette)]
            i += 1
    return out


def _save(fig: Figure, path: Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))


def _title(report: DiagnoseReport) -> str:
    return (
        f"{report.env}: {report.states} states, w = {report.weight:g}, T = {report.steps}, "
        f"best-of-{report.best_of} oracle"
    )


def figure_noise_sensitivity(report: DiagnoseReport) -> Figure:
    """Fig. 3: cosine similarity of G(s, a_t) and G(s, a_t + eps) along denoising.

    Left: per denoising step, mean with its 95% CI band. Right: the mean over every step.
    """
    shown = [r for r in report.results if len(r.noise_sensitivity)]
    colours = _colours([r.name for r in report.results])
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax, ax_bar = fig.subplots(1, 2, width_ratios=(2, 1))
    for r in shown:
        k = np.arange(len(r.noise_sensitivity))
        mean, half = r.noise_sensitivity, r.noise_sensitivity_ci
        ax.plot(k, mean, "o-", color=colours[r.name], label=r.name)
        # A cosine lies in [-1, 1]: the normal-approximation band is cut to that range.
        lo, hi = np.clip(mean - half, -1.0, 1.0), np.clip(mean + half, -1.0, 1.0)
        ax.fill_between(k, lo, hi, color=colours[r.name], alpha=0.2)
    ax.set_xlabel("denoising step k (t = k / T)")
    ax.set_ylabel("cos(G(s, a_t), G(s, a_t + eps)), mean (95% CI)")
    low = min(float(np.min(r.noise_sensitivity - r.noise_sensitivity_ci)) for r in shown)
    low = max(low, -1.0)
    # Cosines of a trained critic's gradients sit close to 1; zoom to them, bands whole.
    ax.set_ylim(low - 0.05 * (1.0 - low) - 1e-3, 1.0 + 0.05 * (1.0 - low) + 1e-3)
    ax.axhline(1.0, color="0.6", lw=0.8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(
        f"eps = {report.eps:g}, {report.perturbations} perturbations per state and step, "
        "probed along the unguided path",
        fontsize=9,
    )
    # 1 - cos on a log axis separates estimators whose cosines all round to 0.99.
    turn = [max(1.0 - float(np.mean(r.noise_sensitivity)), 1e-9) for r in shown]
    ax_bar.scatter(np.arange(len(shown)), turn, c=[colours[r.name] for r in shown], s=60)
    ax_bar.set_xticks(np.arange(len(shown)), [r.name for r in shown], rotation=30, ha="right")
    ax_bar.set_xlim(-0.6, len(shown) - 0.4)
    ax_bar.set_yscale("log")
    ax_bar.set_ylabel("1 - cos, mean over steps")
    ax_bar.grid(alpha=0.3, which="both")
    ax_bar.set_title("lower = less sensitive to noise", fontsize=9)
    fig.suptitle(_title(report), fontsize=9)
    return fig


def figure_q(report: DiagnoseReport) -> Figure:
    """Fig. 4: Q of final actions per estimator against the best-of-N oracle.

    Left: ``Q(est) - Q(oracle)`` per state, mean with a paired 95% CI (Q varies far more
    between states than between estimators, so unpaired means hide the differences).
    Right: the oracle's mean Q when it keeps the best of n candidates, with each estimator's
    mean Q (one guided sample) as a horizontal line.
    """
    colours = _colours([r.name for r in report.results])
    results = [r for r in report.results if r.name != ORACLE and np.isfinite(r.q_final).all()]
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_gap, ax_n = fig.subplots(1, 2)
    for i, r in enumerate(results):
        gap = report.q_gap(r.name)
        ax_gap.errorbar(
            i, gap["mean"], yerr=gap["ci95"], fmt="o", color=colours[r.name], capsize=4, ms=7
        )
    ax_gap.axhline(0.0, color="black", ls="--", label=f"best-of-{report.best_of} oracle")
    ax_gap.set_xticks(np.arange(len(results)), [r.name for r in results], rotation=30, ha="right")
    ax_gap.set_xlim(-0.6, len(results) - 0.4)
    ax_gap.set_ylabel("Q(action) - Q(oracle action), paired 95% CI")
    ax_gap.grid(axis="y", alpha=0.3)
    ax_gap.legend(fontsize=8)
    ax_gap.set_title("Q of final actions against the oracle", fontsize=10)

    n = np.arange(1, len(report.oracle_q_by_n) + 1)
    ax_n.plot(n, report.oracle_q_by_n, "o-", color="black", label="best-of-n (unguided)")
    for r in results:
        if r.name != DATA:
            ax_n.axhline(np.mean(r.q_final), color=colours[r.name], ls="--", label=r.name)
    ax_n.set_xscale("log", base=2)
    ax_n.set_xlabel("n candidates (oracle keeps argmax Q)")
    ax_n.set_ylabel("mean Q over states")
    ax_n.grid(alpha=0.3)
    ax_n.legend(fontsize=8)
    ax_n.set_title("One guided sample against best-of-n", fontsize=10)
    fig.suptitle(_title(report), fontsize=9)
    return fig


def figure_distance(report: DiagnoseReport) -> Figure:
    """Fig. 17: distance to the oracle's action and to the data, per estimator."""
    colours = _colours([r.name for r in report.results])
    names = [r.name for r in report.results]
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    ax_o, ax_d = fig.subplots(1, 2)
    panels = [(ax_o, "distance_to_oracle", "distance to the best-of-N action")]
    if report.manifold.get("available", True):
        panels.append((ax_d, "distance", "distance to the data (nearest dataset action)"))
    else:
        _unavailable(ax_d)
    for ax, key, label in panels:
        rows = [r for r in report.results if not (key == "distance_to_oracle" and r.name == ORACLE)]
        parts = ax.boxplot(
            [getattr(r, key) for r in rows],
            patch_artist=True,
            # Every point beyond the whiskers is drawn: the ones far off the data are the
            # point of this figure.
            showfliers=True,
            flierprops={"marker": ".", "markersize": 3, "alpha": 0.5},
            medianprops={"color": "black"},
        )
        for patch, r in zip(parts["boxes"], rows, strict=True):
            patch.set_facecolor(colours[r.name])
            patch.set_alpha(0.6)
        ax.plot(
            np.arange(1, len(rows) + 1),
            [np.mean(getattr(r, key)) for r in rows],
            "D",
            color="white",
            markeredgecolor="black",
            label="mean",
        )
        ax.set_xticks(np.arange(1, len(rows) + 1), [r.name for r in rows], rotation=30, ha="right")
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    ax_o.set_title("distance to the oracle's action", fontsize=10, pad=14)
    fig.suptitle(_title(report), fontsize=9)
    if not report.manifold.get("available", True):
        return fig
    threshold = report.manifold["threshold"]
    ax_d.axhline(threshold, color="red", ls="--", label=f"off-manifold threshold {threshold:.3g}")
    top = ax_d.get_ylim()[1]
    for i, name in enumerate(n for n in names):
        frac = report.result(name).summary()["off_manifold_fraction"]
        ax_d.text(i + 1, top, f"{100 * frac:.0f}%", ha="center", va="bottom", fontsize=8)
    ax_d.set_title("distance to data (% above threshold on top)", fontsize=10, pad=14)
    # Beside the plot, not over the whiskers.
    ax_d.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _unavailable(ax) -> None:
    """An axis that says the distance to the data is unavailable, and how to have it."""
    ax.text(0.5, 0.5, "distance to the data:\nunavailable\n\n(no dataset sample;\n"
            "qgf import --data adds one)", ha="center", va="center", fontsize=9,
            transform=ax.transAxes)  # fmt: skip
    ax.set_xticks([])
    ax.set_yticks([])


def figure_weights(report: DiagnoseReport) -> Figure:
    """Q gap to the oracle, distance to the data and off-manifold share against the weight."""
    colours = _colours([r.name for r in report.results])
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    axes = fig.subplots(1, 3)
    names = list(dict.fromkeys(row["estimator"] for row in report.sweep))
    panels = (
        ("q_minus_oracle", "Q(action) - Q(oracle action), mean"),
        ("distance", "distance to the data, mean"),
        ("off_manifold_fraction", "share of actions off the manifold (%)"),
    )
    available = report.manifold.get("available", True)
    for ax, (key, label) in zip(axes, panels, strict=True):
        if key != "q_minus_oracle" and not available:
            _unavailable(ax)
            continue
        for name in names:
            rows = sorted((r for r in report.sweep if r["estimator"] == name), key=_weight)
            y = [r[key] if key == "off_manifold_fraction" else r[key]["mean"] for r in rows]
            y = [100 * v for v in y] if key == "off_manifold_fraction" else y
            ax.plot([r["weight"] for r in rows], y, "o-", color=colours[name], label=name)
        for ref in ("none", DATA):
            if ref not in colours:
                continue
            s = report.result(ref).summary()
            if key == "q_minus_oracle" and ref == DATA:
                continue
            value = {
                "q_minus_oracle": report.q_gap(ref)["mean"],
                "distance": s["distance"]["mean"],
                "off_manifold_fraction": 100 * s["off_manifold_fraction"],
            }[key]
            name = "none (unguided)" if ref == "none" else "data (dataset actions)"
            ax.axhline(value, color=colours[ref], ls=":", label=name)
        if key == "q_minus_oracle":
            ax.axhline(0.0, color="black", ls="--", label=f"best-of-{report.best_of} oracle")
        if key == "distance":
            line = ax.axhline(report.manifold["threshold"], color="red", ls="--")
            ax.legend([line], ["off-manifold threshold"], fontsize=7)
        ax.axvline(report.weight, color="0.7", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("guidance weight w")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if available:
        axes[2].legend(
            [line for line in axes[2].get_lines() if line.get_linestyle() == ":"],
            [line.get_label() for line in axes[2].get_lines() if line.get_linestyle() == ":"],
            fontsize=7,
        )
    fig.suptitle(
        f"{report.env}: {report.states} states, same noise at every weight "
        f"(grey line: the report's w = {report.weight:g})",
        fontsize=9,
    )
    return fig


def _weight(row: dict) -> float:
    return row["weight"]


def write_report(report: DiagnoseReport, out: str | os.PathLike) -> dict[str, Path]:
    """Write ``diagnose.json`` and the figures into directory ``out`` (each atomically)."""

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "diagnose.json"}
    write_json(paths["json"], report.to_json())
    if any(len(r.noise_sensitivity) for r in report.results):
        paths["noise_sensitivity"] = _save(
            figure_noise_sensitivity(report), out / "noise_sensitivity.png"
        )
    paths["q"] = _save(figure_q(report), out / "q_final.png")
    paths["distance"] = _save(figure_distance(report), out / "distance_to_data.png")
    if report.sweep:
        paths["weights"] = _save(figure_weights(report), out / "by_weight.png")
    return paths
