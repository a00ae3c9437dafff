"""The run's pictures as PNGs: training curves, the confusion matrix, the examples the model got wrong.

Each is drawn on a bare Figure, not pyplot's global state, so it can be drawn anywhere: the
pipeline draws them in the tracking process (`Tracker.aside`), where matplotlib's import and
drawing take a core of their own, not the job's interpreter lock.
"""

from pathlib import Path

import numpy as np


def plot_training_curves(history: dict[str, list[float]], path: Path, title: str) -> Path:
    """Loss and every other metric, each training curve beside its validation curve."""
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
    return _save(fig, path)


def plot_confusion_matrix(matrix: np.ndarray, path: Path, title: str) -> Path:
    """Counts of true class (rows) against predicted class (columns), each cell labelled."""
    from matplotlib.figure import Figure

    classes = len(matrix)
    size = max(4.0, 0.5 * classes + 2)
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, column), count in np.ndenumerate(matrix):
        ax.text(column, row, str(count), ha="center", va="center", fontsize=8, color="white" if count > threshold else "black")
    ax.set(xticks=range(classes), yticks=range(classes), xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    return _save(fig, path)


def plot_misclassified(images: np.ndarray, true: np.ndarray, predicted: np.ndarray, confidence: np.ndarray, path: Path, title: str) -> Path:
    """A grid of examples the model got wrong, each captioned `true 3 → 8 (97%)`.

    One mosaic in one axes, not an axes per image: a tenth of the drawing time."""
    from matplotlib.figure import Figure

    columns = min(8, max(1, len(images)))
    rows = max(1, -(-len(images) // columns))
    height, width = images.shape[1:3] if len(images) else (1, 1)
    cell_h, cell_w = height + max(2, height // 3), width + max(1, width // 8)  # room for the caption, and a gap
    colour = len(images) and images.ndim == 4 and images.shape[-1] == 3
    if colour and images.max() > 1:  # 0-255 pixels, as image folders give them
        images = images / 255.0
    mosaic = np.full((rows * cell_h, columns * cell_w, 3) if colour else (rows * cell_h, columns * cell_w), np.nan)
    for i, image in enumerate(images):
        row, column = divmod(i, columns)
        top = row * cell_h + (cell_h - height)
        mosaic[top : top + height, column * cell_w : column * cell_w + width] = image if colour else image.reshape(height, width)
    fig = Figure(figsize=(1.6 * columns, 1.9 * rows + 0.4))
    ax = fig.subplots()
    ax.imshow(mosaic, cmap=None if colour else "gray_r", interpolation="nearest")
    ax.axis("off")
    for i, (t, p, c) in enumerate(zip(true, predicted, confidence)):
        row, column = divmod(i, columns)
        ax.text(column * cell_w + width / 2, row * cell_h + (cell_h - height) - 0.6, f"true {t} → {p} ({c:.0%})", ha="center", va="bottom", fontsize=8)
    if not len(images):
        ax.text(0, 0, "no misclassified examples", ha="center", va="center")
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
