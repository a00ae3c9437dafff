"""Stage 6: what a person looks at to judge the trained model on the test set.

A confusion matrix, precision, recall and F1 for each class (as metrics and as a table),
and a gallery of the examples the model got most confidently wrong. They go to the run's
`evaluation/` artifacts and onto the trained model's LoggedModel; the summary metrics are
linked to that model and to the test set by `model_id`, as MLflow's own evaluator links them.
"""

import csv
import logging
from dataclasses import dataclass

import keras
import numpy as np

from pipeline.context import RunContext
from pipeline.formats.base import predict_logits
from pipeline.markdown import markdown_table
from pipeline.plots import plot_confusion_matrix, plot_misclassified
from pipeline.stages.data import Dataset

log = logging.getLogger(__name__)

GALLERY = 24  # misclassified examples drawn, most confident first


@dataclass
class Evaluation:
    accuracy: float
    confusion: np.ndarray  # [true class, predicted class] -> count
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray  # test examples of each class

    def metrics(self) -> dict[str, float]:
        values = {"test/accuracy": self.accuracy}
        for name in ("precision", "recall", "f1"):
            per_class = getattr(self, name)
            values[f"test/macro_{name}"] = float(per_class.mean())
            values.update({f"test/class_{c}/{name}": float(v) for c, v in enumerate(per_class)})
        return values


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where nothing was counted (scikit-learn's zero_division=0)."""
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)


def scores(confusion: np.ndarray) -> Evaluation:
    hits = np.diag(confusion).astype(float)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    precision, recall = _ratio(hits, predicted), _ratio(hits, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return Evaluation(float(hits.sum() / max(1, confusion.sum())), confusion, precision, recall, f1, support)


def confidences(outputs: np.ndarray) -> np.ndarray:
    """Class probabilities: the outputs themselves if they already are, else their softmax."""
    if np.all(outputs >= 0) and np.allclose(outputs.sum(axis=1), 1.0, atol=1e-3):
        return outputs
    shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _table(result: Evaluation) -> str:
    rows = [[str(c), f"{p:.3f}", f"{r:.3f}", f"{f:.3f}", str(s)] for c, (p, r, f, s) in enumerate(zip(result.precision, result.recall, result.f1, result.support))]
    rows.append(["macro", f"{result.precision.mean():.3f}", f"{result.recall.mean():.3f}", f"{result.f1.mean():.3f}", str(result.support.sum())])
    return markdown_table(["class", "precision", "recall", "f1", "support"], rows)


def evaluate(model: keras.Model, data: Dataset, ctx: RunContext) -> Evaluation:
    """Score the trained model on the test set and draw what a person checks first."""
    paths, tracker = ctx.paths, ctx.tracker
    folder = paths.evaluation
    folder.mkdir(parents=True, exist_ok=True)
    outputs = predict_logits(model, data.x_test)
    predicted = outputs.argmax(axis=1)
    confusion = np.zeros((data.num_classes, data.num_classes), dtype=np.int64)
    np.add.at(confusion, (data.y_test, predicted), 1)
    result = scores(confusion)

    with (folder / "per_class.csv").open("w", newline="") as table:
        writer = csv.writer(table)
        writer.writerow(["class", "precision", "recall", "f1", "support"])
        writer.writerows([c, p, r, f, s] for c, (p, r, f, s) in enumerate(zip(result.precision, result.recall, result.f1, result.support)))
    (folder / "evaluation.md").write_text(
        f"# Evaluation on the test set\n\n{len(data.y_test)} examples of {data.name}; accuracy {result.accuracy:.2%}.\n\n"
        f"![confusion matrix](confusion_matrix.png)\n\n{_table(result)}\n\n![misclassified examples](misclassified.png)\n"
    )
    wrong = np.flatnonzero(predicted != data.y_test)
    confidence = confidences(outputs)[np.arange(len(predicted)), predicted]  # in the predicted class
    worst = wrong[np.argsort(-confidence[wrong], kind="stable")][:GALLERY]
    images = data.x_test[worst].reshape(len(worst), *data.image_shape) if data.image_shape else None
    title = f"{model.name} on {data.name}"

    def draw_and_upload():
        tracker.aside(plot_confusion_matrix, confusion, folder / "confusion_matrix.png", f"{title}: {result.accuracy:.1%} accurate")
        if images is not None:  # not image data: nothing to draw an example as
            shown = f"{len(worst)} of {len(wrong)} misclassified, most confident first"
            tracker.aside(plot_misclassified, images, data.y_test[worst], predicted[worst], confidence[worst], folder / "misclassified.png", shown)
        tracker.log_folder(folder)
        if tracker.model is not None:
            model_id = tracker.model.model_id
            tracker.remote("attaching the evaluation to the model", lambda: tracker.client.log_model_artifacts(model_id, str(folder), "evaluation"))

    tracker.background(draw_and_upload)
    # The summary is linked to the model; per class, a column each in the Models view would bury the
    # checkpoints' metrics, so those stay the run's (and the model's per_class.csv).
    metrics = result.metrics()
    summary = {k: metrics.pop(k) for k in [k for k in metrics if "/class_" not in k]}
    tracker.log_metrics(summary, model=lambda: tracker.model.model_id if tracker.model else None, dataset="evaluation")
    tracker.log_metrics(metrics)
    log.info(
        "eval    | test accuracy %.1f%%, macro F1 %.3f, %d misclassified; confusion matrix and gallery in %s",
        100 * result.accuracy,
        result.f1.mean(),
        len(wrong),
        folder,
    )
    return result
