"""The loss-curve PNG a training run writes next to its `metrics.json`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def plot_loss_curve(
    train_loss: Sequence[Sequence[float]],
    evals: Sequence[dict[str, float]],
    path: Path,
    title: str = "",
) -> Path:
    """Train loss per optimizer step (and a moving average when there are many steps), dev loss at each evaluation."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        if train_loss:
            steps = [s for s, _ in train_loss]
            values = [v for _, v in train_loss]
            ax.plot(steps, values, color="tab:blue", alpha=0.35 if len(values) > 50 else 1.0, label="train")
            window = max(1, len(values) // 50)
            if window > 1:
                smooth = [
                    sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
                    for i in range(len(values))
                ]
                ax.plot(steps, smooth, color="tab:blue", label=f"train ({window}-step mean)")
        dev = [(e["step"], e["dev_loss"]) for e in evals if "dev_loss" in e]
        if dev:
            ax.plot(*zip(*dev, strict=True), "o-", color="tab:orange", label="dev")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("cross-entropy loss")
        if title:
            ax.set_title(title)
        ax.grid(alpha=0.3)
        if train_loss or dev:
            ax.legend()
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
