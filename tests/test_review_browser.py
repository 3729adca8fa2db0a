"""The review page in a real headless browser (Debian's chromium + chromium-driver, driven by Selenium)
against a real `tagger review` process and the real broker: keyboard only, then the feedback topic
must hold exactly the decisions made."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.review_process import CHROMIUM, DRIVER, NO_BROWSER, chrome, focused, keys, review_page, wait_status
from tests.review_samples import review_item

pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason=NO_BROWSER)
pytest.importorskip("selenium", reason="selenium (the dev extra) is not installed")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

HOSTILE = 'Crafted <img src=x onerror="window.pwned=1"> <script>window.pwned=2</script> title'


@pytest.fixture
def browser() -> Iterator[Any]:
    with chrome() as driver:
        yield driver


def test_reject_and_add_tags_with_the_keyboard(browser: Any, broker: str, unique: str, tmp_path: Path) -> None:
    items = [review_item("p-1"), review_item("p-2", title=HOSTILE, description=None)]
    items[1]["tags"] = items[1]["candidates"] = []
    with review_page(broker, unique, tmp_path, items) as page:
        browser.get(page.url + "/?p=p-1")
        WebDriverWait(browser, 10).until(lambda d: focused(d)["tag"] == "brand:Nike")  # first tag focused on load

        keys(browser, "j")  # category:Shoes: its evidence lights up, CJK and Latin, title and description
        assert focused(browser)["tag"] == "category:Shoes"
        lit = [m.text for m in browser.find_elements(By.CSS_SELECTOR, "mark.ev.hl")]
        assert lit == ["跑步鞋", "running shoe", "慢跑"]

        keys(browser, Keys.ARROW_DOWN, "r")  # color:Black, reject: no reviewer yet -> an error, nothing sent
        wait_status(browser, "Enter a reviewer name first.")
        assert focused(browser)["id"] == "reviewer"
        keys(browser, "ana", Keys.ESCAPE)  # back to the focused tag
        assert focused(browser)["tag"] == "color:Black"
        keys(browser, "r")
        wait_status(browser, "Saved: rejected color:Black (ana)")
        assert focused(browser)["state"] == "reject"

        keys(browser, "i")  # the add field
        assert focused(browser)["id"] == "add-tag"
        keys(browser, " style : Sporty ", Keys.ENTER)
        wait_status(browser, "Saved: added style:Sporty (ana)")
        assert focused(browser) == {"id": "", "tag": "style:Sporty", "state": "add"}

        keys(browser, "k", "a")  # up to the candidate material:Mesh; `a` on a candidate adds it
        wait_status(browser, "Saved: added material:Mesh (ana)")

        events = page.feedback(lambda got: len(got) >= 3)
        assert [(k, e.product_id, e.action, e.tag, e.reviewer) for k, e in events] == [
            (b"p-1", "p-1", "reject", "color:Black", "ana"),
            (b"p-1", "p-1", "add", "style:Sporty", "ana"),
            (b"p-1", "p-1", "add", "material:Mesh", "ana"),
        ]

        keys(browser, "p")  # the other item (routed later, listed first): its markup is shown as text
        WebDriverWait(browser, 10).until(lambda d: "p=p-2" in d.current_url)
        assert browser.find_element(By.ID, "item-title").text == HOSTILE
        assert browser.execute_script("return window.pwned === undefined")
        assert browser.find_elements(By.CSS_SELECTOR, "#detail img") == []
