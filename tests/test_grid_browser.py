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
    shutil.copy(next(p for p in sample_jpegs if p.stem == "coffee"), library / LONG_NAME)
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
