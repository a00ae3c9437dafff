"""A sweep's report, built from what MLflow holds: one row per job with its accuracy and,
per saved format, the verify result and what it cost, as CSV, Markdown and a figure."""

import csv
import io

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from omegaconf import DictConfig

from pipeline.formats import FORMATS
from pipeline.markdown import markdown_table
from pipeline.optuna_trial import PRUNED

PER_FORMAT = ("verified", "file_bytes", "save_seconds", "load_seconds")


def swept_keys(config: DictConfig) -> set[str]:
    """The config keys a sweep varies: comma lists and sweep functions, and an Optuna search space."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    keys = {o.key_or_group for o in overrides if o.is_sweep_override()}
    return keys | set(config.hydra.sweeper.get("params") or {})


def child_runs(client: MlflowClient, parent_id: str) -> list[Run]:
    experiment_id = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs([experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_id}'", max_results=50_000)
    return sorted(runs, key=lambda r: r.info.start_time)


def report_rows(children: list[Run]) -> list[dict]:
    """One row per job: its choices, status, accuracy and, per saved format, the verify result and costs."""
    formats = [f for f in FORMATS if any(f"{f}/verified" in c.data.metrics for c in children)]
    trials = any("optuna.trial" in c.data.tags for c in children)
    rows = []
    for child in children:
        metrics, tags = child.data.metrics, child.data.tags
        row = {
            "job": child.info.run_name,
            **({"trial": tags.get("optuna.trial", "")} if trials else {}),
            "run_id": child.info.run_id,
            "status": "PRUNED" if tags.get("status") == PRUNED else child.info.status,
            "trained_accuracy": metrics.get("trained_accuracy"),
            "untrained_accuracy": metrics.get("untrained_accuracy"),
        }
        for fmt in formats:
            for key in PER_FORMAT:
                row[f"{fmt}/{key}"] = metrics.get(f"{fmt}/{key}")
        row["error"] = tags.get("error", "")
        rows.append(row)
    return rows


def to_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def size_text(size: float) -> str:
    """Bytes as people read them: 484 kB, 4.9 MB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size:.0f} B"


def _cell(column: str, value) -> str:
    if value is None:
        return "-"
    if column.endswith("accuracy"):
        return f"{value:.1%}"
    if column.endswith("file_bytes"):
        return size_text(value)
    if column.endswith("_seconds"):
        return f"{value:.2f} s"
    if column.endswith("verified"):
        return "yes" if value == 1.0 else "NO"
    return str(value)


def to_markdown(rows: list[dict]) -> str:
    """The CSV's rows for people: sizes in kB and MB, accuracy in percent, the run id left out."""
    columns = [c for c in rows[0] if c != "run_id"]
    return "# Sweep report\n\n" + markdown_table(columns, [[_cell(c, row[c]) for c in columns] for row in rows]) + "\n"


def comparison_figure(rows: list[dict]):
    """Accuracy per job, and file size and load time per job and format."""
    import numpy as np
    from matplotlib.figure import Figure

    jobs = [r["job"] or r["run_id"][:8] for r in rows]
    formats = sorted({k.split("/")[0] for r in rows for k in r if k.endswith("/verified")}, key=list(FORMATS).index)
    fig = Figure(figsize=(18, 5 + 0.15 * len(jobs)))
    axes = fig.subplots(1, 3)
    y = np.arange(len(jobs))
    accuracy = [r["trained_accuracy"] or 0.0 for r in rows]
    colours = ["tab:blue" if r["status"] == "FINISHED" else "tab:red" for r in rows]
    axes[0].barh(y, accuracy, color=colours)
    axes[0].set(yticks=y, yticklabels=jobs, xlabel="trained accuracy (red: job failed)", xlim=(0, 1), title="accuracy")
    height = 0.8 / max(len(formats), 1)
    for ax, key, label in ((axes[1], "file_bytes", "MB on disk"), (axes[2], "load_seconds", "seconds to load")):
        for i, fmt in enumerate(formats):
            values = [(r.get(f"{fmt}/{key}") or 0.0) / (1e6 if key == "file_bytes" else 1.0) for r in rows]
            ax.barh(y + i * height - 0.4 + height / 2, values, height=height, label=fmt)
        ax.set(yticks=y, yticklabels=[], xlabel=label, title=label)
        ax.legend()
    for ax in axes:
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig
