"""The real Airflow UI in headless Chromium: the trigger form of the refresh DAG shows its Params
with titles and descriptions. Saves a screenshot (path printed; ``CJA_SCREENSHOT_DIR`` to keep it)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from headless_chromium import CHROMIUM, Browser

# CI installs chromium (.ci/run), so there a missing browser fails instead of skipping.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.services,
    pytest.mark.skipif(
        CHROMIUM is None and os.environ.get("CI") != "true",
        reason="Debian's chromium is not installed (apt-get install chromium); "
        "the UI API checks do not need it",
    ),
]


def test_trigger_form_shows_the_params(dep, tmp_path):
    from airflow_cja_audiences.dag_factory import _params

    cluster = dep.cluster
    with Browser() as browser:
        browser.call("Network.enable")
        # The UI keeps the API token the login page would set in this cookie.
        browser.call("Network.setCookie", name="_token", value=cluster.token(), url=cluster.base_url)
        browser.goto(f"{cluster.base_url}/dags/{dep.dag_id}")
        browser.wait_for_text("Trigger", timeout=60)
        browser.click_text("Trigger")
        text = browser.wait_for_text(_params()["force_replace"].schema["title"], timeout=30)
        browser.wait_until(
            "[...document.querySelectorAll('[data-scope=dialog]')]"  # the dialog has faded in
            ".every(e => getComputedStyle(e).opacity === '1')"
        )
        shot = browser.screenshot(tmp_path / "trigger-form.png")
    for name, param in _params().items():
        assert param.schema["title"] in text, f"{name}: title missing from the trigger form"
        assert param.description and param.description.split(".")[0] in text, f"{name}: description missing"
    keep = os.environ.get("CJA_SCREENSHOT_DIR")
    if keep:
        shot = Path(shutil.copy(shot, Path(keep) / shot.name))
    print(f"\n[distributed] trigger form screenshot: {shot}")
