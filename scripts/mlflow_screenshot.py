"""Screenshot the MLflow UI pages the README shows: an experiment's checkpoint models and, optionally,
one registered version.

    .venv/bin/pip install playwright && apt install chromium
    .venv/bin/python scripts/mlflow_screenshot.py sqlite:///$PWD/runs/mlflow.db toyworld docs/mlflow_models.png \
        toyworld/3 docs/mlflow_version.png

Serves the store with ``mlflow ui`` on a free loopback port and renders the experiment's model table in
the model-training view (``?workflowType=machine_learning``) in headless Chromium, with MLflow's
assistant panel closed, scrolled to the held-out metrics.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
    "--disable-background-networking",
    "--disable-component-update",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(store: str, port: int) -> subprocess.Popen:
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    server = subprocess.Popen(
        [mlflow, "ui", "--backend-store-uri", store, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    for _ in range(120):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("mlflow ui did not start")


def main(
    store: str,
    experiment: str,
    out: str,
    version: str | None = None,
    version_out: str | None = None,
    width: int = 2300,
    height: int = 380,
) -> None:
    from mlflow import MlflowClient
    from playwright.sync_api import sync_playwright

    experiment_id = MlflowClient(store).get_experiment_by_name(experiment).experiment_id
    port = free_port()
    server = serve(store, port)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": width, "height": height})
            page.add_init_script(
                "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
                "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
            )
            page.goto(f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/models?workflowType=machine_learning")
            page.get_by_text("eval/trained", exact=True).first.wait_for(timeout=60_000)
            # scroll the table past the model attributes (the name stays pinned) to the held-out metrics
            page.evaluate(
                "document.querySelectorAll('.ag-body-horizontal-scroll-viewport, .ag-center-cols-viewport')"
                ".forEach(e => e.scrollLeft = 700)"
            )
            page.wait_for_timeout(2000)
            page.screenshot(path=out)
            if version:  # NAME/VERSION: its tags and description, the held-out table and sample grid
                name, number = version.split("/")
                page.set_viewport_size({"width": 1100, "height": 1150})
                page.goto(f"http://127.0.0.1:{port}/#/models/{name}/versions/{number}?workflowType=machine_learning")
                page.get_by_text("Description").first.wait_for(timeout=60_000)
                page.wait_for_timeout(3000)
                page.screenshot(path=version_out)
            browser.close()
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main(*sys.argv[1:6])
