"""The review page in a real headless browser (Debian's chromium + chromium-driver, driven by Selenium)
against a real `tagger review` process and the real broker: keyboard only, then the feedback topic
must hold exactly the decisions made."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.review_process import review_page
from tests.review_samples import review_item

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)",
)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the dev extra) is not installed")

from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

HOSTILE = 'Crafted <img src=x onerror="window.pwned=1"> <script>window.pwned=2</script> title'


@pytest.fixture
def browser() -> Iterator[Any]:
    opts = Options()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=opts)  # a local driver: nothing downloaded
    try:
        yield driver
    finally:
        driver.quit()


def _keys(driver: Any, *keys: str) -> None:
    ActionChains(driver).send_keys(*keys).perform()


def _focused(driver: Any) -> dict[str, str | None]:
    el = driver.switch_to.active_element
    return {"id": el.get_attribute("id"), "tag": el.get_attribute("data-tag"), "state": el.get_attribute("data-state")}


def _status(driver: Any, text: str) -> None:
    WebDriverWait(driver, 30).until(lambda d: text in d.find_element(By.ID, "status").text)


def test_reject_and_add_tags_with_the_keyboard(browser: Any, broker: str, unique: str, tmp_path: Path) -> None:
    items = [review_item("p-1"), review_item("p-2", title=HOSTILE, description=None)]
    items[1]["tags"] = items[1]["candidates"] = []
    with review_page(broker, unique, tmp_path, items) as page:
        browser.get(page.url + "/?p=p-1")
        WebDriverWait(browser, 10).until(lambda d: _focused(d)["tag"] == "brand:Nike")  # first tag focused on load

        _keys(browser, "j")  # category:Shoes: its evidence lights up, CJK and Latin, title and description
        assert _focused(browser)["tag"] == "category:Shoes"
        lit = [m.text for m in browser.find_elements(By.CSS_SELECTOR, "mark.ev.hl")]
        assert lit == ["跑步鞋", "running shoe", "慢跑"]

        _keys(browser, Keys.ARROW_DOWN, "r")  # color:Black, reject: no reviewer yet -> an error, nothing sent
        _status(browser, "Enter a reviewer name first.")
        assert _focused(browser)["id"] == "reviewer"
        _keys(browser, "ana", Keys.ESCAPE)  # back to the focused tag
        assert _focused(browser)["tag"] == "color:Black"
        _keys(browser, "r")
        _status(browser, "Saved: rejected color:Black (ana)")
        assert _focused(browser)["state"] == "reject"

        _keys(browser, "i")  # the add field
        assert _focused(browser)["id"] == "add-tag"
        _keys(browser, " style : Sporty ", Keys.ENTER)
        _status(browser, "Saved: added style:Sporty (ana)")
        assert _focused(browser) == {"id": "", "tag": "style:Sporty", "state": "add"}

        _keys(browser, "k", "a")  # up to the candidate material:Mesh; `a` on a candidate adds it
        _status(browser, "Saved: added material:Mesh (ana)")

        events = page.feedback(lambda got: len(got) >= 3)
        assert [(k, e.product_id, e.action, e.tag, e.reviewer) for k, e in events] == [
            (b"p-1", "p-1", "reject", "color:Black", "ana"),
            (b"p-1", "p-1", "add", "style:Sporty", "ana"),
            (b"p-1", "p-1", "add", "material:Mesh", "ana"),
        ]

        _keys(browser, "p")  # the other item (routed later, listed first): its markup is shown as text
        WebDriverWait(browser, 10).until(lambda d: "p=p-2" in d.current_url)
        assert browser.find_element(By.ID, "item-title").text == HOSTILE
        assert browser.execute_script("return window.pwned === undefined")
        assert browser.find_elements(By.CSS_SELECTOR, "#detail img") == []
