"""The viewer in a real browser (Debian's chromium, headless), against `tagger serve` itself.

Opens the grid, searches a tag, opens an image, checks an uploaded image and sees its top 3.
A screenshot of each step is kept in test-artifacts/.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tagger.engine.classify import Classifier

from test_web import scanned_config

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
TAGGER = str(Path(sys.executable).parent / "tagger")
WAIT_SECONDS = 30


def need(tool: str) -> str:
    """CI installs chromium and chromedriver (make test does); a developer may lack them."""
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed, and CI must install it (scripts/install-system-deps.sh)")
        pytest.skip(f"{tool} is not installed here (scripts/install-system-deps.sh installs it)")
    return path


@contextmanager
def serving(library: Path, classifier: Classifier, weights_dir: Path, **web: Any) -> Iterator[str]:
    """`library` scanned, then `tagger serve` on a free port of 127.0.0.1 (with `web` settings); yields its address."""
    config_file = scanned_config(library, classifier, weights_dir, web={"port": 0, **web})
    server = subprocess.Popen(
        [TAGGER, "--config", str(config_file), "serve"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = server.stdout.readline() if server.stdout else ""
        assert "http://127.0.0.1:" in line, f"tagger serve did not start: {line}"
        yield line.split(" at ", 1)[1].split()[0].rstrip("/")
    finally:
        server.terminate()
        server.communicate(timeout=20)


@pytest.fixture
def served(tmp_path: Path, sample_jpegs: list[Path], lite0: Classifier, weights_dir: Path) -> Iterator[str]:
    """A tagged library and `tagger serve` on a free port of 127.0.0.1; yields its address."""
    library = tmp_path / "library"
    library.mkdir()
    for photo in sample_jpegs:
        shutil.copy(photo, library / photo.name)
    with serving(library, lite0, weights_dir) as address:
        yield address


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    chromium, chromedriver = need("chromium"), need("chromedriver")
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
        "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=chromedriver))
    try:
        yield driver
    finally:
        driver.quit()


def test_browse_search_open_and_check_an_image(served: str, browser: Any, sample_jpegs: list[Path]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT_SECONDS)
    ARTIFACTS.mkdir(exist_ok=True)

    browser.get(served + "/")
    cards = wait.until(ready.presence_of_all_elements_located((By.CSS_SELECTOR, "#grid .card img")))
    assert len(cards) == len(sample_jpegs)
    wait.until(lambda b: all(b.execute_script("return arguments[0].naturalWidth", img) > 0 for img in cards))
    browser.save_screenshot(str(ARTIFACTS / "browser-1-grid.png"))

    search = browser.find_element(By.ID, "search")
    search.send_keys("espresso", Keys.ENTER)
    wait.until(ready.url_contains("q=espresso"))
    results = wait.until(ready.presence_of_all_elements_located((By.CSS_SELECTOR, "#grid .card a")))
    assert "coffee.jpg" in results[0].text and "意式浓缩咖啡" in results[0].text
    browser.save_screenshot(str(ARTIFACTS / "browser-2-search.png"))

    results[0].click()  # the photo viewer; its "Details" is the image's page
    wait.until(ready.visibility_of_element_located((By.ID, "lightbox")))
    browser.find_element(By.ID, "lb-details").click()
    wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, ".bars meter")))
    assert browser.find_element(By.CSS_SELECTOR, ".file-name").text == "coffee.jpg"
    assert "espresso" in browser.find_element(By.CSS_SELECTOR, ".bars").text
    picture = browser.find_element(By.CSS_SELECTOR, ".picture img")
    wait.until(lambda b: b.execute_script("return arguments[0].naturalWidth", picture) > 0)
    browser.save_screenshot(str(ARTIFACTS / "browser-3-image.png"))

    why = browser.find_element(By.CSS_SELECTOR, ".bars a.why")  # espresso's heatmap over the photo
    why.click()
    heat = wait.until(ready.visibility_of_element_located((By.CSS_SELECTOR, ".heat-frame img.heat")))
    wait.until(lambda b: b.execute_script("return arguments[0].naturalWidth", heat) > 0)
    assert why.get_attribute("aria-pressed") == "true"
    assert "espresso" in browser.find_element(By.ID, "explain-caption").text
    frame = browser.find_element(By.CSS_SELECTOR, ".heat-frame").rect
    shown = picture.rect
    assert abs(frame["width"] - shown["width"]) <= 2 and abs(frame["height"] - shown["height"]) <= 2
    seen = browser.find_element(By.CSS_SELECTOR, ".heat-frame .seen").rect
    # 600 x 400: resized to 384 x 256, of which the model sees the centre 224 x 224
    assert abs(seen["width"] / frame["width"] - 224 / 384) < 0.02 and abs(seen["height"] / frame["height"] - 224 / 256) < 0.02
    slider = browser.find_element(By.ID, "heat-opacity")
    browser.execute_script("arguments[0].value = '0.3'; arguments[0].dispatchEvent(new Event('input'))", slider)
    assert heat.value_of_css_property("opacity") == "0.3"
    browser.save_screenshot(str(ARTIFACTS / "browser-3b-why.png"))
    why.click()
    wait.until(ready.invisibility_of_element_located((By.CSS_SELECTOR, ".heat-frame")))

    browser.find_element(By.LINK_TEXT, "Check an image").click()
    chooser = wait.until(ready.presence_of_element_located((By.ID, "check-files")))
    chooser.send_keys(str(next(p for p in sample_jpegs if p.stem == "coffee")))
    result = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#check-results .result.done")))
    bars = result.find_elements(By.CSS_SELECTOR, ".bar")
    assert len(bars) == 3 and "espresso" in bars[0].text and "意式浓缩咖啡" in bars[0].text
    preview = result.find_element(By.CSS_SELECTOR, "img.preview")
    assert browser.execute_script("return arguments[0].naturalWidth", preview) > 0
    browser.save_screenshot(str(ARTIFACTS / "browser-4-check.png"))


@pytest.fixture
def served_clip(tmp_path: Path, lite0: Classifier, weights_dir: Path) -> Iterator[str]:
    """`tagger serve` over a library of one VP9 clip: the cat for 5 s, then the espresso for 5 s."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from sample_video import photo, write_clip

    library = tmp_path / "library"
    library.mkdir()
    write_clip(library / "cat-then-coffee.webm", [photo("chelsea"), photo("coffee")], 10, size=(640, 426),
               codec="vp9", gop=10)
    with serving(library, lite0, weights_dir) as address:
        yield address


def test_a_clip_plays_seeks_and_shows_the_frame_behind_a_tag(served_clip: str, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT_SECONDS)
    ARTIFACTS.mkdir(exist_ok=True)
    browser.get(served_clip + "/?q=type:video")
    card = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#grid .card img")))
    wait.until(lambda b: b.execute_script("return arguments[0].naturalWidth", card) > 0)  # the poster
    assert "video" in browser.find_element(By.CSS_SELECTOR, "#grid .card .badge").text
    browser.find_element(By.CSS_SELECTOR, "#grid .card a").click()  # the viewer plays it; "Details" has the tags
    wait.until(ready.visibility_of_element_located((By.ID, "lightbox")))
    browser.find_element(By.ID, "lb-details").click()
    video = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "video.clip")))
    wait.until(lambda b: b.execute_script("return arguments[0].readyState", video) >= 1)
    assert abs(browser.execute_script("return arguments[0].duration", video) - 10) < 0.5
    browser.execute_script("arguments[0].currentTime = 7", video)  # seeking needs range requests
    wait.until(lambda b: b.execute_script("return !arguments[0].seeking && arguments[0].readyState >= 2", video))
    assert abs(browser.execute_script("return arguments[0].currentTime", video) - 7) < 0.5
    shown = browser.find_element(By.CSS_SELECTOR, ".explained img.shown")
    poster = shown.get_attribute("src")
    why = next(a for a in browser.find_elements(By.CSS_SELECTOR, ".bars a.why") if a.get_attribute("data-label") == "espresso")
    espresso_ms = int(why.get_attribute("data-frame").rsplit("/", 1)[1])
    assert espresso_ms >= 5000  # the espresso was seen in the second half
    why.click()
    heat = wait.until(ready.visibility_of_element_located((By.CSS_SELECTOR, ".heat-frame img.heat")))
    wait.until(lambda b: b.execute_script("return arguments[0].naturalWidth", heat) > 0)
    caption = browser.find_element(By.ID, "explain-caption").text
    assert "espresso" in caption and "frame at 0:0" in caption, caption
    if not poster.endswith(why.get_attribute("data-frame")):
        assert shown.get_attribute("src").endswith(why.get_attribute("data-frame"))  # that tag's own frame
    browser.save_screenshot(str(ARTIFACTS / "browser-5-clip.png"))
