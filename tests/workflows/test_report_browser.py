"""``report.html`` in a real headless browser (Debian's chromium driven by playwright): it loads without
console errors or requests, its plots are drawn, and its top table sorts on a click.

Skips with the reason when chromium or playwright is missing (.ci/run installs chromium where apt works).
``ACP_REPORT_SCREENSHOT=docs/report.png pytest tests/workflows/test_report_browser.py`` also keeps the
screenshot there (the one in docs/ is made so); otherwise it goes to the test's temporary folder.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import TINY_SEARCH_CONFIG

from acp.core.architecture import ModelIdentity
from acp.core.budget import Budget
from acp.prune import build_space
from acp.search.study import Study
from acp.search.synthetic import SyntheticEvaluator
from acp.settings import SearchSettings
from acp.workflows.report import write_html_report

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
IDENTITY = ModelIdentity("resnet8_cifar", 10, (3, 16, 16), {})


def browser_or_skip():
    if not CHROMIUM.is_file():
        pytest.skip(f"no chromium at {CHROMIUM}: apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed: pip install -e '.[dev]'")
    return sync_playwright


@contextmanager
def opened_in_browser(report: Path):
    """The page of ``report`` loaded in headless chromium (1280 x 800); on leaving, it had no console
    errors, no page errors and made no request beyond its own file and inline data."""
    sync_playwright = browser_or_skip()
    problems, requests = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("console", lambda message: message.type == "error" and problems.append(message.text))
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(report.as_uri(), wait_until="load")
            yield page
        finally:
            browser.close()
    assert problems == []
    assert [url for url in requests if not url.startswith(("file:", "data:"))] == []


def column_values(page, column: int) -> list[float]:
    """The sort values of the top table's ``column`` (1-based), top to bottom."""
    cells = page.locator(f"#top-table tbody tr td:nth-child({column})")
    return [float(value) for value in cells.evaluate_all("tds => tds.map(td => td.dataset.value)")]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    space = build_space(IDENTITY, {})[1]
    run_dir = tmp_path_factory.mktemp("browser") / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(TINY_SEARCH_CONFIG, encoding="utf-8")
    settings = SearchSettings(particles=12, iterations=10, seed=1)
    budget = Budget(space, flops=0.5)
    evaluator = SyntheticEvaluator(space, identity=IDENTITY, fail_when=lambda widths: widths.sum() % 9 == 0)
    Study(space, evaluator, budget, settings, run_dir, proposal_widths=space.uniform_widths(0.6)).run()
    return write_html_report(run_dir, space=space, budget=budget, search_settings=settings)


def test_the_report_in_a_headless_browser(report, tmp_path):
    screenshot = Path(os.environ.get("ACP_REPORT_SCREENSHOT") or tmp_path / "report.png")
    with opened_in_browser(report) as page:
        images = page.locator("img")
        assert images.count() == 3
        for index in range(images.count()):
            image = images.nth(index)
            box = image.bounding_box()
            assert box is not None and box["width"] > 800 and box["height"] > 200, box
            assert image.evaluate("img => img.complete && img.naturalWidth > 0")  # the SVG decoded

        def column(name: str) -> list[float]:
            return column_values(page, page.locator("#top-table thead th").all_inner_texts().index(name) + 1)

        by_score = column("score")
        assert by_score == sorted(by_score, reverse=True) and len(by_score) == 30
        before = column("MACs %")
        page.locator("#top-table thead th", has_text="MACs %").click()
        after = column("MACs %")
        assert after == sorted(before) and after != before
        assert (
            page.locator("#top-table thead th", has_text="MACs %").get_attribute("aria-sort") == "ascending"
        )
        page.locator("#top-table thead th", has_text="MACs %").click()
        assert column("MACs %") == sorted(before, reverse=True)
        page.locator("#top-table thead th", has_text="#").click()  # back to rank order for the picture

        bottom = page.locator("#widths").evaluate("node => node.getBoundingClientRect().bottom + scrollY")
        page.screenshot(
            path=str(screenshot), full_page=True, clip={"x": 0, "y": 0, "width": 1280, "height": bottom + 20}
        )
    assert screenshot.stat().st_size > 20_000
    with screenshot.open("rb") as stream:
        assert stream.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def multi_budget_report(tmp_path_factory) -> Path:
    """A multi-budget run's page (one Study per budget on a shared history), its last budget not started."""
    from acp.search import store

    space = build_space(IDENTITY, {})[1]
    run_dir = tmp_path_factory.mktemp("browser") / "multi"
    run_dir.mkdir()
    config = TINY_SEARCH_CONFIG.replace("flops = 0.5", "flops = [0.7, 0.5, 0.3]")
    (run_dir / "config.toml").write_text(config, encoding="utf-8")
    settings = SearchSettings(particles=8, iterations=4, seed=1)
    budgets = {label: Budget(space, flops=ratio) for label, ratio in (("flops0.7", 0.7), ("flops0.5", 0.5))}
    evaluator = SyntheticEvaluator(space, identity=IDENTITY, fail_when=lambda widths: widths.sum() % 9 == 0)
    for label, budget in budgets.items():
        study = Study(
            space,
            evaluator,
            budget,
            settings,
            run_dir / label,
            proposal_widths=space.uniform_widths(0.6),
            history=run_dir / store.HISTORY_FILE,
            budget_label=label,
        )
        study.run()
    budgets["flops0.3"] = Budget(space, flops=0.3)
    return write_html_report(
        run_dir, status="running", space=space, budgets=budgets, search_settings=settings
    )


def test_a_multi_budget_report_in_a_headless_browser(multi_budget_report):
    with opened_in_browser(multi_budget_report) as page:
        images = page.locator("img")
        assert images.count() == 3
        for index in range(images.count()):
            assert images.nth(index).evaluate("img => img.complete && img.naturalWidth > 0")
        statuses = page.locator("#budgets-table tr td:nth-child(3)").all_inner_texts()
        assert [text.split(":")[0] for text in statuses] == ["finished", "finished", "waiting"]
        header = page.locator("#top-table thead th").all_inner_texts()
        assert header[1].strip() == "budget"
        page.locator("#top-table thead th", has_text="budget").click()
        order = column_values(page, 2)
        assert order == sorted(order) and set(order) == {0.0, 1.0}
