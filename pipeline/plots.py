"""Training curves as a PNG: what people look at first in a run's artifacts."""

from pathlib import Path


def plot_training_curves(history: dict[str, list[float]], path: Path, title: str) -> Path:
    """Loss and every other metric, each training curve beside its validation curve.

    Drawn on a bare Figure, not pyplot's global state, so it can run on the tracking
    thread; matplotlib is imported here, where it costs that thread, not the job, its half second.
    """
    from matplotlib.figure import Figure

    names = [k for k in history if not k.startswith("val_") and k != "learning_rate"]
    fig = Figure(figsize=(5 * len(names), 4))
    axes = fig.subplots(1, len(names), squeeze=False)
    epochs = range(1, len(history[names[0]]) + 1)
    for ax, name in zip(axes[0], names):
        ax.plot(epochs, history[name], marker="o", label="train")
        if f"val_{name}" in history:
            ax.plot(epochs, history[f"val_{name}"], marker="o", label="validation")
        ax.set(xlabel="epoch", ylabel=name, title=name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
