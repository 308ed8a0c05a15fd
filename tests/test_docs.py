"""The documentation keeps up with the code: every setting is in `.env.sample` and the README."""

import re
from pathlib import Path

from dotenv import dotenv_values

from orch.config import SERVICE_SETTINGS, load, settings_variables

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_in_env_sample_and_the_readme():
    sample = (ROOT / ".env.sample").read_text()
    readme = (ROOT / "README.md").read_text()
    for variable in settings_variables():
        assert re.search(rf"^# {variable}=", sample, re.M), f"{variable} missing from .env.sample"
        assert f"| `{variable}` |" in readme, f"{variable} missing from the README's settings table"
    for setting in SERVICE_SETTINGS:
        assert f"SERVICE_EXAMPLE_{setting}=" in sample
        assert f"| `SERVICE_<NAME>_{setting}` |" in readme


def test_env_sample_works_as_it_is():
    """`make run` copies .env.sample to .env: it must give a server with the example service."""
    env = {key: value for key, value in dotenv_values(ROOT / ".env.sample").items() if value is not None}
    config = load("server", env)
    assert list(config.services) == ["example"]
    assert config.services["example"].clients[0].upload_url == "http://127.0.0.1:9000/submit"
    assert load("client", env).port == 9000


def test_readme_shows_the_two_commands_and_ci_runs_the_tested_one():
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_file_the_docs_link_to_exists():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+)\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which is missing"


def test_the_readme_walks_through_the_python_client_the_dashboard_and_the_metrics():
    readme = (ROOT / "README.md").read_text()
    for must in ("from orch.portal import Orchestrator", "/dashboard", "docs/dashboard.png", "/metrics", "Procfile"):
        assert must in readme
    lines = len(readme.splitlines())
    assert 150 <= lines <= 250  # the front door, a short section per way of using it: the rest is in docs/
