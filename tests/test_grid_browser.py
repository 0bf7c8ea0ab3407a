"""The grid as a photo browser, in a real browser (headless chromium) at phone and desktop size.

A phone is emulated as a 390 x 844 screen with 3 device pixels per CSS pixel and touch; a
desktop is a 1366 x 900 window. Screenshots of each page at both sizes go to test-artifacts/.
"""
from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tagger.engine.classify import Classifier

from test_browser import ARTIFACTS, WAIT_SECONDS, need, serving

PHONE = (390, 844, 3.0)
DESKTOP = (1366, 900, 1.0)
PAGE_SIZE = 24
LONG_NAME = "a-very-long-file-name-from-a-camera-export-" + "x" * 70 + ".jpg"  # 120 characters
MONTHS = ((2024, 5), (2024, 1), (2023, 8))


@pytest.fixture(scope="module")
def library_address(
    tmp_path_factory: pytest.TempPathFactory, views: list[Path], sample_jpegs: list[Path], lite0: Classifier,
    weights_dir: Path,
) -> Iterator[str]:
    """34 distinct photos, the 5 shipped ones (one of them three times over, one under a 120-character
    name) and a 4:1 panorama, their dates spread over three months; pages of 24."""
    library = tmp_path_factory.mktemp("grid") / "library"
    (library / "trips" / "2024").mkdir(parents=True)
    photos = [*views, *sample_jpegs]
    for i, src in enumerate(photos):
        folder = library / "trips" / "2024" if i % 3 == 0 else library
        shutil.copy(src, folder / src.name)
    cat = next(p for p in sample_jpegs if p.stem == "chelsea")
    for copy in ("chelsea-copy-1.jpg", "chelsea-copy-2.jpg"):
        shutil.copy(cat, library / copy)
    with Image.open(next(p for p in sample_jpegs if p.stem == "coffee")) as coffee:
        coffee.save(library / LONG_NAME, quality=80)  # its own content, not a copy of coffee.jpg
    with Image.open(next(p for p in sample_jpegs if p.stem == "rocket")) as rocket:
        strip = rocket.convert("RGB").crop((0, 0, rocket.width, rocket.width // 4))
        strip.resize((1600, 400)).save(library / "panorama.jpg", quality=90)
    for i, path in enumerate(sorted(p for p in library.rglob("*.jpg"))):
        year, month = MONTHS[i % len(MONTHS)]
        stamp = time.mktime((year, month, 10 + i % 15, 12, 0, 0, 0, 0, -1))
        os.utime(path, (stamp, stamp))
    with serving(library, lite0, weights_dir, page_size=PAGE_SIZE) as address:
        yield address


@contextmanager
def chromium(tmp_path: Path, size: tuple[int, int, float]) -> Iterator[Any]:
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = need("chromium")
    width, height, ratio = size
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
        "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / f'profile-{width}'}", f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    if ratio != 1.0:
        options.add_experimental_option("mobileEmulation", {"deviceMetrics": {"width": width, "height": height, "pixelRatio": ratio, "touch": True}})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=need("chromedriver")))
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, condition: Any) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_SECONDS).until(condition)


def loaded_tiles(driver: Any) -> None:
    """Every tile in view has its picture."""
    wait_for(driver, lambda d: d.execute_script(
        "return [...document.querySelectorAll('#grid .card img')].filter(i => i.getBoundingClientRect().top < innerHeight)"
        ".every(i => i.complete && i.naturalWidth > 0)"))


def sideways(driver: Any) -> int:
    """How far the page scrolls sideways, in CSS pixels (0: it does not)."""
    return int(driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth"))


def columns(driver: Any) -> int:
    return int(driver.execute_script(
        "const tops = [...document.querySelectorAll('#grid .card')].map(c => c.getBoundingClientRect().top);"
        "return tops.filter(t => Math.abs(t - tops[0]) < 2).length"))


def axe_violations(driver: Any) -> list[str]:
    """axe-core's violations on the page as it is now (the copy bundled in axe-selenium-python)."""
    import axe_selenium_python

    source = Path(axe_selenium_python.__file__).parent / "node_modules" / "axe-core" / "axe.min.js"
    driver.execute_script(source.read_text())
    result = driver.execute_async_script("const done = arguments[0]; axe.run(document).then(done, e => done({error: String(e)}));")
    assert "error" not in result, result
    return [f"{v['id']}: {v['help']} ({len(v['nodes'])}: {v['nodes'][0]['target']})" for v in result["violations"]]


@pytest.mark.parametrize("size", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_the_grid_fills_the_screen_with_sharp_tiles_and_no_sideways_scroll(
    library_address: str, tmp_path: Path, size: tuple[int, int, float]
) -> None:
    with chromium(tmp_path, size) as driver:
        driver.get(library_address + "/")
        loaded_tiles(driver)
        found = columns(driver)
        assert (found >= 3) if size == PHONE else (5 <= found <= 8), found
        assert sideways(driver) <= 0
        first = driver.execute_script("return document.querySelector('#grid .card').getBoundingClientRect().top")
        assert first < size[1] / 2, "the first photo starts below the fold: filters are in the way"
        # every tile's picture has at least as many pixels as the screen shows of it (or all it has)
        tiles = driver.execute_async_script(  # the pixels of the file chosen (naturalWidth is scaled by srcset)
            "const done = arguments[0];"
            "Promise.all([...document.querySelectorAll('#grid .card img')].slice(0, 12).map(async i => {"
            "  const bitmap = await createImageBitmap(await (await fetch(i.currentSrc)).blob());"
            "  return [i.currentSrc, Math.min(bitmap.width, bitmap.height), i.getBoundingClientRect().width]; })).then(done)")
        for source, short_side, shown in tiles:
            needed = shown * size[2]
            assert short_side >= min(needed, 300) - 1, (source, short_side, needed)
            if size == PHONE:
                assert source.endswith("/720"), source  # 120 CSS px at 3 device pixels: the large tile
        headings = driver.execute_script("return [...document.querySelectorAll('#grid .month-heading')].map(h => h.textContent.trim())")
        assert headings[:1] == ["May 2024"], headings
        driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")  # the next page joins in
        wait_for(driver, lambda d: not d.find_elements("css selector", ".more"))
        copies = driver.execute_script(
            "return [...document.querySelectorAll('#grid .card')].filter(c => /^chelsea(-copy-.)?[.]jpg$/.test(c.dataset.name))"
            ".map(c => c.querySelector('.copies') && c.querySelector('.copies').textContent)")
        assert copies == ["×3 copies"], copies  # one tile for the three copies of the cat, on any page
        problems = axe_violations(driver)
        assert problems == [], "\n".join(problems)
        name = "phone" if size == PHONE else "desktop"
        ARTIFACTS.mkdir(exist_ok=True)
        driver.execute_script("window.scrollTo(0, 0)")
        loaded_tiles(driver)
        driver.save_screenshot(str(ARTIFACTS / f"{name}-grid.png"))
        driver.find_element("css selector", ".timeline summary").click()
        driver.find_element("css selector", '.timeline a[aria-label^="August 2023"]').click()
        wait_for(driver, lambda d: "after=" in d.current_url)
        loaded_tiles(driver)
        assert driver.execute_script("return document.querySelector('#grid .month-heading').textContent.trim()") == "August 2023"
        assert sideways(driver) <= 0
        driver.save_screenshot(str(ARTIFACTS / f"{name}-grid-timeline.png"))


def card_names(driver: Any) -> list[str]:
    return list(driver.execute_script("return [...document.querySelectorAll('#grid .card')].map(c => c.dataset.name)"))


def active_card(driver: Any) -> str | None:
    name: str | None = driver.execute_script(
        "const card = document.activeElement.closest('.card'); return card && card.dataset.name")
    return name


def test_keyboard_moves_through_the_grid_and_the_viewer_steps_zooms_and_returns(library_address: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    with chromium(tmp_path, DESKTOP) as driver:
        driver.get(library_address + "/")
        loaded_tiles(driver)
        names = card_names(driver)
        per_row = columns(driver)
        # one tab stop for the whole grid, and none for the checkboxes
        assert driver.execute_script("return document.querySelectorAll('#grid [tabindex=\"0\"]').length") == 1
        assert driver.execute_script("return [...document.querySelectorAll('#grid .select input')].every(i => i.tabIndex === -1)")
        driver.execute_script("document.querySelector('#grid .card > a').focus()")
        actions = ActionChains(driver)
        actions.send_keys(Keys.ARROW_RIGHT).perform()
        assert active_card(driver) == names[1]
        actions.send_keys(Keys.ARROW_DOWN).perform()
        assert active_card(driver) == names[1 + per_row]
        actions.send_keys(Keys.SPACE).perform()  # selects, without scrolling or opening
        assert driver.find_element("id", "selected-count").text == "1 image selected"
        assert driver.find_element("id", "selection-bar").is_displayed()
        actions.send_keys(Keys.SPACE).perform()
        assert not driver.find_element("id", "selection-bar").is_displayed()

        actions.send_keys(Keys.ENTER).perform()  # opens the viewer on that photo
        dialog = driver.find_element("id", "lightbox")
        wait_for(driver, lambda d: dialog.is_displayed())
        assert "/image/" in driver.current_url
        length = driver.execute_script("return history.length")
        assert driver.find_element("id", "lb-title").text.startswith(names[1 + per_row])
        image = driver.find_element("id", "lb-image")
        wait_for(driver, lambda d: d.execute_script("return arguments[0].src.includes('/preview/')", image))
        ActionChains(driver).send_keys(Keys.ARROW_RIGHT).perform()
        wait_for(driver, lambda d: d.find_element("id", "lb-title").text.startswith(names[2 + per_row]))
        assert driver.execute_script("return history.length") == length  # no history entry per photo
        assert names[2 + per_row].replace(".jpg", "") in driver.current_url
        ActionChains(driver).double_click(image).perform()  # zoom in where clicked
        assert "scale(2.5)" in image.get_attribute("style")
        ActionChains(driver).send_keys("0").perform()
        assert "scale" not in (image.get_attribute("style") or "")
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "desktop-viewer.png"))
        problems = axe_violations(driver)
        assert problems == [], "\n".join(problems)

        ActionChains(driver).send_keys(Keys.ESCAPE).perform()  # back to the grid, on the last photo seen
        wait_for(driver, lambda d: not dialog.is_displayed())
        wait_for(driver, lambda d: d.current_url.rstrip("/") == library_address)
        assert active_card(driver) == names[2 + per_row]


def test_a_swipe_steps_through_the_photos_on_a_phone(library_address: str, tmp_path: Path) -> None:
    with chromium(tmp_path, PHONE) as driver:
        driver.get(library_address + "/")
        loaded_tiles(driver)
        names = card_names(driver)
        driver.find_elements("css selector", "#grid .card > a")[0].click()
        dialog = driver.find_element("id", "lightbox")
        wait_for(driver, lambda d: dialog.is_displayed())
        assert driver.find_element("id", "lb-title").text.startswith(names[0])

        def swipe(from_x: int, to_x: int) -> None:
            y = PHONE[1] // 2
            driver.execute_cdp_cmd("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": from_x, "y": y}]})
            for step in range(1, 6):
                x = from_x + (to_x - from_x) * step // 5
                driver.execute_cdp_cmd("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
            driver.execute_cdp_cmd("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})

        swipe(300, 80)  # to the left: the next photo
        wait_for(driver, lambda d: d.find_element("id", "lb-title").text.startswith(names[1]))
        swipe(80, 300)  # to the right: back to the first
        wait_for(driver, lambda d: d.find_element("id", "lb-title").text.startswith(names[0]))
        assert sideways(driver) <= 0
        driver.save_screenshot(str(ARTIFACTS / "phone-viewer.png"))
        driver.back()  # a phone's Back closes the viewer, and leaves the grid's page where it was
        wait_for(driver, lambda d: not d.execute_script("return document.getElementById('lightbox').open"))
        assert driver.current_url.rstrip("/") == library_address


def test_back_from_an_image_returns_to_the_same_place_in_a_long_grid(library_address: str, tmp_path: Path) -> None:
    with chromium(tmp_path, DESKTOP) as driver:
        driver.get(library_address + "/")
        loaded_tiles(driver)
        driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")  # the second page joins in
        wait_for(driver, lambda d: not d.find_elements("css selector", ".more"))
        cards = len(card_names(driver))
        assert cards > PAGE_SIZE - 3
        last = driver.find_elements("css selector", "#grid .card > a")[-1]
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'}); window.marker = 'still here'", last)
        scrolled = driver.execute_script("return window.scrollY")
        assert scrolled > 200
        last.click()  # the viewer, then its "Details" link: the image's own page
        wait_for(driver, lambda d: d.find_element("id", "lightbox").is_displayed())
        driver.find_element("id", "lb-details").click()
        wait_for(driver, lambda d: d.find_elements("css selector", ".bars"))
        driver.find_element("css selector", "a.back").click()  # "Back to the list"
        wait_for(driver, lambda d: d.find_elements("id", "grid"))
        wait_for(driver, lambda d: abs(d.execute_script("return window.scrollY") - scrolled) < 5)
        assert len(card_names(driver)) == cards  # the pages loaded in place are still there
        assert driver.execute_script("return window.marker") == "still here"  # the page itself, kept for Back
        assert driver.current_url.rstrip("/") == library_address
        assert not driver.find_element("id", "lightbox").is_displayed()


def test_bulk_keywords_for_a_shift_click_range(library_address: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    with chromium(tmp_path, DESKTOP) as driver:
        driver.get(library_address + "/")
        loaded_tiles(driver)
        names = card_names(driver)
        corners = driver.find_elements("css selector", "#grid .card .select")
        corners[0].click()
        ActionChains(driver).key_down(Keys.SHIFT).click(corners[3]).key_up(Keys.SHIFT).perform()  # a range of four
        assert driver.find_element("id", "selected-count").text == "4 images selected"
        assert len(driver.find_elements("css selector", "#grid .card.selected")) == 4
        bar = driver.find_element("id", "selection-bar")
        bar.find_element("name", "keywords").send_keys("holiday-bulk, 海边")
        bar.find_element("css selector", 'button[value="add"]').click()
        wait_for(driver, lambda d: d.find_element("id", "bar-message").text.startswith("Added"))
        assert "to 4 images" in driver.find_element("id", "bar-message").text
        driver.save_screenshot(str(ARTIFACTS / "desktop-bulk.png"))
        driver.get(library_address + "/?q=tag:holiday-bulk")
        loaded_tiles(driver)
        found = card_names(driver)
        assert sorted(found) == sorted(names[:4])
        driver.find_element("css selector", "#grid .card .select").click()
        driver.find_element("id", "select-all").click()
        assert driver.find_element("id", "selected-count").text == "4 images selected"
        bar = driver.find_element("id", "selection-bar")
        bar.find_element("name", "keywords").send_keys("holiday-bulk")
        bar.find_element("css selector", 'button[value="remove"]').click()
        wait_for(driver, lambda d: d.find_element("id", "bar-message").text.startswith("Removed"))
        driver.get(library_address + "/?q=tag:holiday-bulk")
        assert not driver.find_elements("css selector", "#grid .card")
        driver.get(library_address + "/")
        loaded_tiles(driver)
        corners = driver.find_elements("css selector", "#grid .card .select")
        corners[2].click()
        corners[5].click()
        driver.find_element("css selector", '#selection-bar button[value="search"]').click()  # the selection as a search
        wait_for(driver, lambda d: "q=sha" in d.current_url)
        loaded_tiles(driver)
        assert sorted(card_names(driver)) == sorted([names[2], names[5]])


PAGES = {
    "grid": "/",
    "search": "/?q=tag:cat",
    "tags": "/tags",
    "learned": "/learned",
    "duplicates": "/duplicates",
    "check": "/check",
    "image": None,  # the coffee under a 120-character name
    "error": "/image/no/such/photo.jpg",
}


@pytest.mark.parametrize("size", [(320, 700, 2.0), PHONE, DESKTOP], ids=["narrow", "phone", "desktop"])
def test_every_page_fits_the_screen_and_passes_axe(library_address: str, tmp_path: Path, size: tuple[int, int, float]) -> None:
    name = {320: "narrow", 390: "phone", 1366: "desktop"}[size[0]]
    with chromium(tmp_path, size) as driver:
        for page, path in PAGES.items():
            if path is None:
                driver.get(library_address + "/")
                driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")  # every page joins in
                wait_for(driver, lambda d: not d.find_elements("css selector", ".more"))
                link = driver.execute_script(
                    "return [...document.querySelectorAll('#grid .card')].find(c => c.dataset.name.length > 100)"
                    " .querySelector('a').href")
                driver.get(link)
            else:
                driver.get(library_address + path)
            wait_for(driver, lambda d: d.execute_script("return document.readyState") == "complete")
            if driver.find_elements("css selector", "#grid .card img"):
                loaded_tiles(driver)
            assert sideways(driver) <= 0, f"{page} scrolls sideways at {size[0]} px"
            problems = axe_violations(driver)
            assert problems == [], f"{page} at {size[0]} px:\n" + "\n".join(problems)
            if name != "narrow":
                driver.save_screenshot(str(ARTIFACTS / f"sweep-{name}-{page}.png"))


def test_the_sign_in_page_fits_and_passes_axe(tmp_path: Path, sample_jpegs: list[Path], lite0: Classifier, weights_dir: Path) -> None:
    library = tmp_path / "library"
    library.mkdir()
    shutil.copy(sample_jpegs[0], library / sample_jpegs[0].name)
    with serving(library, lite0, weights_dir, token="s" * 32) as address:
        for size in (PHONE, DESKTOP):
            with chromium(tmp_path, size) as driver:
                driver.get(address + "/")
                wait_for(driver, lambda d: d.find_elements("id", "token"))
                assert sideways(driver) <= 0
                problems = axe_violations(driver)
                assert problems == [], "\n".join(problems)
                driver.find_element("id", "token").send_keys("s" * 32 + "\n")
                wait_for(driver, lambda d: d.find_elements("css selector", "#grid .card"))
                driver.find_element("css selector", ".sign-out button").click()  # and out again
                wait_for(driver, lambda d: d.find_elements("id", "token"))


def test_teaching_a_tag_from_the_selection_keeps_what_was_typed(library_address: str, tmp_path: Path) -> None:
    with chromium(tmp_path, PHONE) as driver:
        driver.get(library_address + "/?q=tag:cat")
        loaded_tiles(driver)
        driver.find_element("css selector", "#grid .card .select").click()
        bar = driver.find_element("id", "selection-bar")
        bar.find_element("css selector", 'button[name="side"][value="yes"]').click()  # no name typed yet
        assert driver.find_element("id", "bar-message").text == "Type the name of the tag to teach first."
        assert "/learned/" not in driver.current_url
        bar.find_element("name", "name").send_keys("mycat")
        bar.find_element("css selector", 'button[name="side"][value="yes"]').click()
        wait_for(driver, lambda d: d.current_url.endswith("/learned/mycat"))
        assert sideways(driver) <= 0
