"""The MLflow UI, in a real browser, shows a pipeline run with its params, charts, evaluation and
artifacts, and the experiment's Models view lists the run's checkpoints with their metrics."""

import os

import pytest

from conftest import PROJECT, only_run, start_mlflow_server, stop
from pipeline.browser import CHROMIUM_ARGS, chromium
from pipeline.task import run

pytestmark = pytest.mark.slow

CHROMIUM = chromium(None) or "/usr/bin/chromium"
SCREENSHOTS = PROJECT / "outputs" / "test-artifacts"  # kept after the test, git-ignored


@pytest.fixture
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip("needs Debian's chromium (apt-get install chromium), as .ci/run installs it")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_run_page_and_models_view(browser, make_cfg, client, tmp_path):
    run(make_cfg("data=digits", "data.train_size=256", "data.test_size=64", "training.epochs=3", "save=[keras,h5,savedmodel]", "tracking.run_name=ui-check"))
    logged = only_run(client)
    server, url = start_mlflow_server(client.tracking_uri, tmp_path / "proxied")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(f"{url}/#/experiments/{logged.info.experiment_id}/runs")  # the "Training runs" table
        page.get_by_text("ui-check").first.wait_for()
        page.screenshot(path=str(SCREENSHOTS / "mlflow-ui-experiment.png"))

        page.get_by_text("ui-check").first.click()
        page.get_by_text("About this run").wait_for()
        for key in ("architecture", "checkpoint_policy", "save_formats", "model._target_", "checkpoint.policy", "training.epochs"):
            assert page.get_by_text(key, exact=True).first.is_visible(), key
        for value in ("every_epoch", "keras,h5,savedmodel"):  # shown as "tag: value"
            assert page.get_by_text(value).first.is_visible(), value
        page.screenshot(path=str(SCREENSHOTS / "mlflow-ui-run.png"), full_page=True)

        page.get_by_text("Model metrics", exact=True).click()
        page.get_by_placeholder("Search metric charts").fill("val_loss")
        page.get_by_text("val_loss", exact=True).first.wait_for()
        page.locator(".js-plotly-plot").first.wait_for()  # the chart itself, drawn by plotly
        page.screenshot(path=str(SCREENSHOTS / "mlflow-ui-metrics.png"))

        page.get_by_text("Artifacts", exact=True).click()
        page.get_by_text("evaluation", exact=True).first.click()
        page.get_by_text("confusion_matrix.png", exact=True).first.click()
        image = page.locator("img[src^='blob:']").first  # the picture itself, fetched from the artifact store
        image.wait_for()
        assert page.wait_for_function("img => img.complete && img.naturalWidth", arg=image.element_handle()).json_value() == 700  # the PNG's width
        page.screenshot(path=str(SCREENSHOTS / "mlflow-ui-confusion-matrix.png"))
        for folder, inside in (("saved", "savedmodel"), ("reports", "verify.json")):
            page.get_by_text(folder, exact=True).first.click()
            page.get_by_text(inside, exact=True).first.wait_for()
        for fmt in ("keras", "h5", "savedmodel"):
            assert page.get_by_text(fmt, exact=True).first.is_visible(), fmt
        page.get_by_text("verify.md", exact=True).first.click()
        page.get_by_text("Reload-verify report").first.wait_for()
        page.screenshot(path=str(SCREENSHOTS / "mlflow-ui-artifacts.png"))

        # The experiment's Models view: every checkpoint a LoggedModel, with the metrics measured on it.
        page.set_viewport_size({"width": 2600, "height": 900})  # room for the metric columns
        page.get_by_text("Model training", exact=True).first.click()  # the UI opens in its GenAI mode
        page.goto(f"{url}/#/experiments/{logged.info.experiment_id}/models")
        page.get_by_role("heading", name="Models").wait_for()
        if page.get_by_role("button", name="Close").count():  # the MLflow Assistant's panel, which covers the columns
            page.get_by_role("button", name="Close").first.click()
        for name in ("checkpoint-epoch-0001", "checkpoint-epoch-0002", "checkpoint-epoch-0003", "model"):
            page.get_by_text(name, exact=True).first.wait_for()
        page.get_by_text("val_accuracy", exact=True).first.wait_for()  # a metric column
        models = {m.name: m for m in client.search_logged_models([logged.info.experiment_id])}
        for name in ("checkpoint-epoch-0001", "checkpoint-epoch-0003"):
            value = next(m.value for m in models[name].metrics if m.key == "val_loss")
            assert page.get_by_text(repr(value), exact=True).first.is_visible(), (name, value)  # the table shows full precision
        page.screenshot(path=str(SCREENSHOTS / "mlflow-ui-models.png"), full_page=True)
    finally:
        stop(server)
    with pytest.raises(ProcessLookupError):
        os.killpg(server.pid, 0)  # no process of the server's group is left
