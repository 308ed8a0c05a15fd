"""The dashboard in a real headless browser (Debian's chromium, driven by Playwright) against real server and
client processes: it loads from the server alone, shows a job just submitted, then shows it Completed, and a
click shows the job's history.

`DASHBOARD_SCREENSHOT=docs/dashboard.png` saves the screenshot the README shows (`make screenshot`).
"""

import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from bench.cluster import Cluster, multipart, request

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000
AUTH = {"Authorization": "Bearer portal-one"}

pytestmark = pytest.mark.slow


@pytest.fixture
def browser(tmp_path):
    """A page of a fresh chromium (its own empty profile); everything is closed after the test."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: tests/system/install.sh installs Debian's chromium")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            args=FLAGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(TIMEOUT_MS)
        try:
            yield context.new_page()
        finally:
            context.close()


@pytest.fixture
def cluster(tmp_path):
    cluster = Cluster(tmp_path / "cluster", {"SERVICE_EXAMPLE_RUNS_PER_USER": "2"}, {})
    cluster.start()
    yield cluster
    cluster.stop()


def test_the_dashboard_shows_a_job_from_its_submission_to_its_end_and_its_history_on_click(cluster, browser, tmp_path):
    page = browser
    requests: list[str] = []
    problems: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    go = cluster.shared / "go"

    page.goto(f"{cluster.server.url}/dashboard")
    page.wait_for_selector("#services td:text-is('example')")
    failed = cluster.submit("broken", "exit 3\n", user_id=2)
    job = cluster.submit("slow", f"while [ ! -e {go} ]; do sleep 0.05; done\n", user_id=1)
    row = page.locator(f"#jobs tr[data-job='{job}']")
    row.locator("td.status:text-matches('Queued|Processing|Submitted|Running')").wait_for()
    page.locator("#failures td:text-is('Failed')").wait_for()
    row.locator("td.status:text-is('Running')").wait_for()
    page.locator("#clients td:text-is('up')").wait_for()
    held = [
        cluster.submit(f"held{n}", f"while [ ! -e {go}.never ]; do sleep 0.05; done\n", user_id=n % 2 + 3)
        for n in range(5)
    ]
    page.locator(f"#jobs tr[data-job='{held[-1]}']").wait_for()
    page.locator("#users td:text-is('3')").wait_for()
    go.touch()
    row.locator("td.status:text-is('Completed')").wait_for()

    row.click()
    page.locator("#job-title[data-status='Completed']").wait_for()
    history = page.locator("#history tbody tr td:nth-child(3)").all_inner_texts()
    assert history[0] == "Queued" and history[-1] == "Completed" and "Running" in history, history
    assert page.locator(f"#failures tr[data-job='{failed}'] td:last-child").inner_text() == "run.sh exited with code 3"
    shot = page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    assert shot.startswith(b"\x89PNG")
    if target := os.environ.get("DASHBOARD_SCREENSHOT"):
        shutil.copy(tmp_path / "dashboard.png", target)
    assert not problems
    outside = [url for url in requests if not url.startswith(cluster.server.url)]
    assert not outside, f"the page asked for something beyond the server: {outside}"


def test_a_server_with_an_api_token_asks_for_one_and_the_dashboard_then_shows_its_jobs(tmp_path, browser):
    cluster = Cluster(tmp_path / "cluster", {"API_TOKEN": "portal-one,dashboard-two"}, {})
    cluster.start()
    try:
        page = browser
        page.goto(f"{cluster.server.url}/dashboard")
        page.locator("#login").wait_for()  # the server answered 401: the page asks for a token
        assert page.locator("#problem").inner_text().endswith("need API_TOKEN")
        body, content_type = multipart({"user_id": "1", "service": "example"}, {"run.sh": b"exit 0\n"})
        code, _, answer = request(f"{cluster.server.url}/upload", body, {"Content-Type": content_type, **AUTH})
        assert code == 201, answer
        page.fill("#token", "dashboard-two")
        page.click("#login button")
        page.locator("#jobs td.status:text-is('Completed')").wait_for()
        assert page.locator("#login").is_hidden() and page.locator("#problem").is_hidden()
    finally:
        cluster.stop()
