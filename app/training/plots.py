"""PNG figures for the artifact and the evaluation report (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt  # noqa: E402


def plot_training_curves(curves: dict[str, list[float]], path: Path) -> None:
    """Train/validation loss and validation accuracy per epoch."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = curves["epoch"]
    loss_ax.plot(epochs, curves["train_loss"], marker="o", label="train")
    loss_ax.plot(epochs, curves["val_loss"], marker="o", label="validation")
    loss_ax.set(xlabel="epoch", ylabel="Bradley-Terry loss", title="loss")
    loss_ax.legend()
    acc_ax.plot(epochs, curves["val_accuracy"], marker="o", color="tab:green")
    acc_ax.axhline(0.5, color="grey", linestyle=":", label="chance")
    acc_ax.set(xlabel="epoch", ylabel="pair accuracy", title="validation accuracy", ylim=(0.0, 1.0))
    acc_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_evaluation(groups: dict[str, dict], path: Path) -> None:
    """Per group: accuracies next to the best length rule, and calibration (accuracy vs sigmoid(gap))."""
    names = list(groups)
    fig, (acc_ax, cal_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    series = (
        "model",
        "heuristic",
        "hybrid",
        "best_length_rule",
        "length_matched",
        "chosen_shorter",
        "beats_empty",
    )
    width = 0.8 / len(series)
    for i, key in enumerate(series):
        values = [groups[n]["accuracy"].get(key) or 0.0 for n in names]
        acc_ax.bar([x + i * width for x in range(len(names))], values, width, label=key)
    acc_ax.axhline(0.5, color="grey", linestyle=":")
    acc_ax.set_xticks(
        [x + 0.4 - width / 2 for x in range(len(names))], names, rotation=20, ha="right", fontsize=8
    )
    acc_ax.set(ylabel="pair accuracy", ylim=(0.0, 1.0), title="accuracy by group")
    acc_ax.legend(fontsize=7)
    cal_ax.plot([0.5, 1.0], [0.5, 1.0], color="grey", linestyle=":", label="perfect")
    for name in names:
        buckets = [b for b in groups[name]["calibration"] if b["n"]]
        cal_ax.plot(
            [b["predicted"] for b in buckets], [b["accuracy"] for b in buckets], marker="o", label=name
        )
    cal_ax.set(
        xlabel="sigmoid(|score gap|)", ylabel="accuracy", title="calibration", xlim=(0.5, 1.0), ylim=(0, 1)
    )
    cal_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
