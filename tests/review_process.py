"""A `tagger review` process on the real broker, for the review page's HTTP and browser tests."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.events import TagFeedback
from scripts.local_services import create_topics, env_without, free_port, http_ok, stop_process, wait_until
from scripts.worker_tools import FAST_GROUP, REPO, produce, read_all


@dataclass
class ReviewPage:
    broker: str
    port: int
    review_topic: str
    feedback_topic: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def items(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.url + "/api/items", timeout=5) as resp:
            out: list[dict[str, Any]] = json.loads(resp.read())
        return out

    def feedback(self, until: Callable[[list[Any]], bool], timeout_s: float = 30) -> list[tuple[bytes, TagFeedback]]:
        got = read_all(self.broker, self.feedback_topic, until, timeout_s)
        return [(m.key, TagFeedback.model_validate_json(m.value)) for m in got]


def review_env(broker: str, suffix: str, **extra: str) -> dict[str, str]:
    env = env_without("TAGGER_")
    env.update(FAST_GROUP)
    env.update(
        {
            "TAGGER_KAFKA__BOOTSTRAP_SERVERS": broker,
            "TAGGER_KAFKA__REVIEW_TOPIC": f"review-{suffix}",
            "TAGGER_KAFKA__FEEDBACK_TOPIC": f"feedback-{suffix}",
            "TAGGER_REVIEW_PAGE__GROUP_ID": f"page-{suffix}",
        }
    )
    env.update(extra)
    return env


@contextmanager
def review_page(
    broker: str,
    suffix: str,
    log_dir: Path,
    items: list[dict[str, Any]],
    env: dict[str, str] | None = None,
    expect: set[str] | None = None,
    reviewer: str = "",
) -> Iterator[ReviewPage]:
    """Publish `items` to the review topic (created unless `items` is empty: then a worker feeds it),
    start `tagger review` on a free port, wait until it shows them (or the products in `expect`)."""
    page = ReviewPage(broker, free_port(), f"review-{suffix}", f"feedback-{suffix}")
    if items:
        create_topics(broker, {page.review_topic: 1, page.feedback_topic: 1})
        values = [json.dumps(i).encode() for i in items]
        produce(broker, page.review_topic, values, [i["product_id"].encode() for i in items])
    with (log_dir / "review.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "review", "--port", str(page.port), "--reviewer", reviewer],
            env=env or review_env(broker, suffix),
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: http_ok(page.port, "/healthz"), 30, "the review page answering", proc)
        wanted = expect if expect is not None else {i["product_id"] for i in items}
        wait_until(
            lambda: wanted <= {i["product_id"] for i in page.items()}, 60, "the review page showing the items", proc
        )
        yield page
    finally:
        code = stop_process(proc)
        assert code == 0, f"tagger review exited {code}: {(log_dir / 'review.log').read_text()[-2000:]}"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
NO_BROWSER = "needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)"


@contextmanager
def chrome() -> Iterator[Any]:
    """Headless Debian chromium through its own chromedriver (Selenium downloads nothing)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def keys(driver: Any, *typed: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(*typed).perform()


def focused(driver: Any) -> dict[str, str | None]:
    el = driver.switch_to.active_element
    return {"id": el.get_attribute("id"), "tag": el.get_attribute("data-tag"), "state": el.get_attribute("data-state")}


def wait_status(driver: Any, text: str, timeout_s: float = 30) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout_s).until(lambda d: text in d.find_element(By.ID, "status").text)
