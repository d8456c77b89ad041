"""`lmtune ui` in a real browser (Debian's headless chromium driven by selenium): launch the
demo config from the New run form and watch it live, compare two runs, open a report, and
chat with a tiny causal run. A screenshot is saved beside the test's tmp folder on failure."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from uikit import make_runs, ui_in_thread

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="chromium + chromium-driver not installed (make test installs them)",
)


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    base = tmp_path_factory.mktemp("uib")
    make_runs(base / "runs", base / "models")
    # The launched `lmtune train` inherits this: one thread, as the test processes use, since
    # two threads spin-waiting beside the other test worker on 2 cores are many times slower.
    mp = pytest.MonkeyPatch()
    mp.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    with ui_in_thread(base / "runs") as url:
        yield url, base / "runs"
    mp.undo()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM or ""
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER or ""), options=opts)
    yield driver
    driver.quit()


@contextlib.contextmanager
def screenshot_on_failure(driver: Any, path: Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        driver.save_screenshot(str(path))
        print(f"screenshot: {path}")
        raise


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            value = check()
            if value:
                return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_launch_the_demo_config_and_watch_it_live(ui, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select

    url, root = ui
    with screenshot_on_failure(browser, tmp_path / "launch.png"):
        browser.get(url + "/new")
        pick = wait_for(lambda: browser.find_element(By.ID, "pick"), 20, "the config picker")
        Select(pick).select_by_visible_text("demo")
        assert "builtin:minilm" in browser.find_element(By.ID, "yaml").get_attribute("value")
        over = browser.find_element(By.ID, "over")
        over.send_keys(
            "train.max_steps=8\ntrain.log_every=1\ntrain.eval_every=4\ntrain.eval_each_epoch=false"
        )
        browser.find_element(By.ID, "go").click()
        wait_for(lambda: "/run?name=demo-reviews-lora" in browser.current_url, 30, "the run page")
        log = root / ".lmtune-ui" / "demo-reviews-lora.log"

        def step() -> int:
            return int(browser.find_element(By.ID, "step").text or 0)

        def points() -> int:
            canvas = browser.find_element(By.CSS_SELECTOR, "canvas[data-name=loss]")
            return int(canvas.get_attribute("data-points"))

        try:
            first = wait_for(step, 300, "the first logged step")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; the run's console log:\n{log.read_text()[-3000:]}"
            ) from None
        seen = wait_for(points, 30, "a point on the loss curve")
        wait_for(
            lambda: step() > first and points() > seen, 120, "the step counter and curve to move"
        )
        wait_for(
            lambda: browser.find_element(By.ID, "status").text == "finished",
            120,
            "the run to finish",
        )
        assert (root / "demo-reviews-lora" / "model").is_dir()
        browser.get(url + "/")
        wait_for(
            lambda: "demo-reviews-lora" in browser.find_element(By.ID, "runs").text,
            20,
            "the runs table",
        )


def test_compare_two_runs_and_open_a_report(ui, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    url, _ = ui
    with screenshot_on_failure(browser, tmp_path / "compare.png"):
        browser.get(url + "/compare?names=cls-a,cls-b")
        diff = wait_for(lambda: browser.find_element(By.ID, "diff").text, 20, "the config diff")
        assert "train.lr" in diff and "model.name_or_path" not in diff
        canvases = browser.find_elements(By.CSS_SELECTOR, "#curves canvas")
        assert {"loss", "accuracy"} <= {c.get_attribute("data-name") for c in canvases}
        browser.get(url + "/run?name=cls-a")
        link = wait_for(
            lambda: browser.find_element(By.LINK_TEXT, "report.html"), 20, "the report link"
        )
        browser.get(link.get_attribute("href"))
        assert "cls-a" in browser.page_source and "accuracy" in browser.page_source


def test_chat_with_a_tiny_causal_run(ui, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select

    url, _ = ui
    with screenshot_on_failure(browser, tmp_path / "chat.png"):
        browser.get(url + "/playground")
        model = wait_for(lambda: browser.find_element(By.ID, "model"), 20, "the model picker")
        Select(model).select_by_value("sft/model")
        browser.find_element(By.ID, "say").send_keys("Repeat the word good.")
        browser.find_element(By.ID, "send").click()
        answer = wait_for(
            lambda: browser.find_element(By.CSS_SELECTOR, ".answer[data-finish]"),
            60,
            "the streamed answer",
        )
        assert answer.get_attribute("data-finish") in ("stop", "length")
        assert "user: Repeat the word good." in browser.find_element(By.ID, "chat").text
        # The run page shows the held-out prompts it answered before and after training.
        browser.get(url + "/run?name=sft")
        # Read in one script: the page redraws the table when it refreshes (a stale element).
        table = wait_for(
            lambda: browser.execute_script(
                "const t = document.querySelector('table.samples');"
                "return t && {heads: [...t.querySelectorAll('th')].map(h => h.innerText.trim()),"
                " text: t.innerText};"
            ),
            20,
            "the samples",
        )
        assert table["heads"] == ["prompt", "reference", "before training", "after training"]
        assert "Repeat the word" in table["text"]
