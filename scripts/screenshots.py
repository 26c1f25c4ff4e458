"""Screenshots of the relevance page for the README, from a running Serve app, in Debian's
headless Chromium (what the browser tests drive).

    python scripts/screenshots.py --url http://127.0.0.1:8000 --out docs/img

Shows a signed-in search compared across the two releases serving (live and an experiment
arm, when there is one) with a score breakdown open, a geo-filtered search, the JYMBII tab and
the knowledge-base tab (when the ESCO corpus is built).
"""

from __future__ import annotations

from pathlib import Path

import typer

from tests.browser import chromium


def main(
    url: str = "http://127.0.0.1:8000",
    out: Path = Path("docs/img"),
    query: str = "registerd nurse",
    member_index: int = 5,
    place: str = "London, GB",
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    out.mkdir(parents=True, exist_ok=True)
    d = chromium(1400, 1300)
    wait = WebDriverWait(d, 60)

    def fill(field: str, value: str) -> None:
        d.find_element(By.ID, field).clear()
        d.find_element(By.ID, field).send_keys(value)

    def go(columns: int = 1) -> None:
        d.execute_script("document.querySelector('#columns').replaceChildren()")
        d.find_element(By.ID, "go").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "section.column")) >= columns
                   or d.find_element(By.ID, "error").is_displayed())  # fmt: skip

    try:
        d.get(url + "/")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#member option")) > 1)
        fill("query", query)
        Select(d.find_element(By.ID, "member")).select_by_index(member_index)
        releases = d.find_elements(By.CSS_SELECTOR, "#release-b option")
        if len(releases) > 2:  # two serving: the arm without the ranker first, then live
            Select(d.find_element(By.ID, "release-a")).select_by_index(2)
            Select(d.find_element(By.ID, "release-b")).select_by_index(1)
        go(2 if len(releases) > 2 else 1)
        first = d.find_elements(By.CSS_SELECTOR, "section.column")[-1]
        first.find_element(By.CSS_SELECTOR, "details.why summary").click()
        first.find_element(By.CSS_SELECTOR, ".judge .yes").click()
        wait.until(lambda d: "NDCG@10" in d.find_element(By.ID, "ndcg").text)
        d.save_screenshot(str(out / "page-compare.png"))
        Select(d.find_element(By.ID, "release-b")).select_by_index(0)
        fill("query", "software developer")
        fill("km", "50")
        fill("place", place)
        go()
        d.save_screenshot(str(out / "page-geo.png"))
        d.find_element(By.ID, "tab-feed").click()
        go()
        d.save_screenshot(str(out / "page-jymbii.png"))
        d.find_element(By.ID, "tab-kb").click()
        fill("query", "someone who fixes boilers")
        go()
        d.save_screenshot(str(out / "page-knowledge-base.png"))
    finally:
        d.quit()
    print(sorted(p.name for p in out.glob("page-*.png")))


if __name__ == "__main__":
    typer.run(main)
