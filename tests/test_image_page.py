"""The image page's keywords (chips, remove, undo, restore), its facts and similar strip, the learned
tag's page and the error page: through Flask's test client, then in a real browser at phone and
desktop sizes (no sideways scroll, keyboard, undo, axe-core), with screenshots in test-artifacts/.
"""
from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

import test_browser
from tagger.config import load_config
from tagger.engine.classify import Classifier
from tagger.errors import StoreError
from tagger.index import Index
from tagger.vectors.learned import cross_validated_precision
from tagger.web.context import CSRF_COOKIE, Viewer
from tagger.web.files import camera_name, exif_date, exif_facts

from test_web import make_app, scanned_config

CSRF = "c" * 32
LONG_NAME = ("Holiday_photo_from_the_mountains_" * 4)[:116] + ".jpg"  # 120 characters, no space
LONG_KEYWORD = ("Donaudampfschifffahrtsgesellschaft" * 2)[:60]  # 60 characters, no space
browser = test_browser.browser  # the headless chromium fixture


def camera_photo(source: Path, target: Path) -> None:
    """A copy of `source` whose EXIF names a camera and a moment, as a Canon writes them."""
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "Canon PowerShot S95"  # Make, Model
    exif.get_ifd(0x8769)[0x9003] = "2014:09:19 16:08:30"  # DateTimeOriginal
    with Image.open(source) as img:
        img.save(target, exif=exif.tobytes())


def make_library(root: Path, sample_jpegs: list[Path], views: list[Path]) -> None:
    root.mkdir(parents=True)
    photos = {p.stem: p for p in sample_jpegs}
    for photo in sample_jpegs:
        shutil.copy(photo, root / photo.name)
    for view in views:
        if view.name.startswith("chelsea"):
            shutil.copy(view, root / view.name)
    shutil.copy(photos["coffee"], root / LONG_NAME)
    camera_photo(photos["rocket"], root / "camera.jpg")


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, sample_jpegs: list[Path], views: list[Path],
            lite0: Classifier, weights_dir: Path) -> Path:
    """The shipped photos, views of the cat, a 120-character name and a camera's photo, scanned;
    the config file's path."""
    root = tmp_path_factory.mktemp("imagepage") / "library"
    make_library(root, sample_jpegs, views)
    return scanned_config(root, lite0, weights_dir)


@pytest.fixture
def app(library: Path, lite0: Classifier) -> Iterator[Flask]:
    app = make_app(load_config(library), lite0)
    yield app
    app.extensions["tagger"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    client = app.test_client()
    client.set_cookie(CSRF_COOKIE, CSRF)
    return client


def url_of(library: Path, name: str) -> str:
    return "/image/" + str(library.parent / "library" / name).lstrip("/")


def chips(page: str) -> dict[str, str]:
    """keyword -> its chip's source text ("yours" or the model's score)."""
    found = {}
    for chip in re.findall(r'<li class="keyword (?:model|user)">(.*?)</li>', page, re.S):
        word = re.search(r'class="kw"[^>]*>([^<]+)</a>', chip)
        source = re.search(r'class="source"[^>]*>([^<]+)<', chip)
        assert word and source, chip
        found[word.group(1)] = source.group(1)
    return found


def removed(page: str) -> list[str]:
    return re.findall(r'<input type="hidden" name="restore" value="([^"]+)">', page)


# -- keywords --------------------------------------------------------------------------------


def test_keywords_are_chips_each_with_a_remove_button(client: FlaskClient, library: Path) -> None:
    page = client.get(url_of(library, "chelsea.jpg")).get_data(as_text=True)
    shown = chips(page)
    assert "cat" in shown and shown["cat"].endswith("%")
    assert 'aria-label="Remove cat"' in page and 'class="remove-keyword"' in page
    assert 'title="animal/cat · 动物/猫"' in page  # the keyword's place, without a line of its own
    assert page.count('name="csrf"') >= len(shown) + 1  # every form carries the form token
    assert "Removed by you" not in page


def test_remove_then_restore_brings_the_models_keyword_back_as_it_was(client: FlaskClient, library: Path) -> None:
    url = url_of(library, "chelsea.jpg")
    before = chips(client.get(url).get_data(as_text=True))
    response = client.post(f"{url}/keywords", data={"csrf": CSRF, "remove": "cat"})
    assert response.status_code == 303
    page = client.get(url).get_data(as_text=True)
    assert "cat" not in chips(page) and removed(page) == ["cat"]
    assert "Removed by you" in page and 'aria-label="Restore cat"' in page

    response = client.post(f"{url}/keywords", data={"csrf": CSRF, "restore": "cat"})
    assert response.status_code == 303
    page = client.get(url).get_data(as_text=True)
    assert chips(page) == before  # the model's keyword, its score: nothing of the user's left
    assert removed(page) == [] and "Removed by you" not in page
    with Index.open(load_config(library).index, readonly=True) as store:
        record = store.file_record(str(library.parent / "library" / "chelsea.jpg"))
        assert record is not None and record.sha256 is not None
        assert store.corrections(record.sha256) == []


def test_restore_gives_back_the_users_own_keyword(client: FlaskClient, library: Path) -> None:
    url = url_of(library, "coffee.jpg")
    client.post(f"{url}/keywords", data={"csrf": CSRF, "add": "Breakfast"})
    assert chips(client.get(url).get_data(as_text=True))["Breakfast"] == "yours"
    client.post(f"{url}/keywords", data={"csrf": CSRF, "remove": "Breakfast"})
    page = client.get(url).get_data(as_text=True)
    assert "Breakfast" not in chips(page) and removed(page) == ["Breakfast"]
    client.post(f"{url}/keywords", data={"csrf": CSRF, "restore": "Breakfast"})
    page = client.get(url).get_data(as_text=True)
    assert chips(page)["Breakfast"] == "yours" and removed(page) == []
    # a restore of a word that was never removed changes nothing
    assert client.post(f"{url}/keywords", data={"csrf": CSRF, "restore": "never-removed"}).status_code == 303
    assert "never-removed" not in chips(client.get(url).get_data(as_text=True))


def test_restore_needs_the_form_token(client: FlaskClient, library: Path) -> None:
    url = url_of(library, "rocket.jpg")
    assert client.post(f"{url}/keywords", data={"restore": "x"}).status_code == 403
    assert client.post(f"{url}/keywords", data={"csrf": "forged" * 6, "restore": "x"}).status_code == 403


def test_no_text_shown_twice(client: FlaskClient, library: Path) -> None:
    """The user's own keyword has no Chinese name of its own: it was shown twice ("Chelsea Chelsea");
    the photo's alternative text repeated the file name of the heading above it; a screen reader
    read each guess's score twice (the meter's value, then the number beside it)."""
    url = url_of(library, "chelsea.jpg")
    client.post(f"{url}/keywords", data={"csrf": CSRF, "add": "Chelsea"})
    page = client.get(url).get_data(as_text=True)
    chip = re.search(r'<li class="keyword user">(.*?)</li>', page, re.S)
    assert chip is not None and '<span class="zh"' not in chip.group(1)
    assert 'alt="chelsea.jpg"' not in page and 'alt="The photo: ' in page
    cat = re.search(r'<li class="keyword model">\s*<a class="kw"[^>]*>cat</a>(.*?)</li>', page, re.S)
    assert cat is not None and '<span class="zh" lang="zh">猫</span>' in cat.group(1)  # a real translation stays
    assert page.count('<span class="bar-value" aria-hidden="true">') == page.count("<meter") == 5


# -- facts, similar images -------------------------------------------------------------------


def test_exif_dates_read_as_dates_and_the_make_is_not_repeated(client: FlaskClient, library: Path) -> None:
    assert exif_date("2014:09:19 16:08:30") == "2014-09-19 16:08"
    assert exif_date("2014:09:19") == "2014-09-19"
    assert exif_date("0000:00:00 00:00:00") is None and exif_date(" \x00") is None
    assert exif_date("sometime in 2014") == "sometime in 2014"
    assert camera_name("Canon", "Canon PowerShot S95") == "Canon PowerShot S95"
    assert camera_name("NIKON CORPORATION", "NIKON D750") == "NIKON D750"
    assert camera_name("Apple", "iPhone 6") == "Apple iPhone 6"
    assert camera_name("", "X100") == "X100"
    camera = library.parent / "library" / "camera.jpg"
    assert exif_facts(camera) == {"Taken": "2014-09-19 16:08", "Camera": "Canon PowerShot S95"}
    page = client.get(url_of(library, "camera.jpg")).get_data(as_text=True)
    assert "<dd>2014-09-19 16:08</dd>" in page and "<dd>Canon PowerShot S95</dd>" in page
    assert "Canon Canon" not in page and "2014:09:19" not in page


def test_the_similar_strip_shows_close_images_with_their_scores(client: FlaskClient, library: Path) -> None:
    page = client.get(url_of(library, "chelsea.jpg")).get_data(as_text=True)
    strip = re.search(r'<section class="similar".*?</section>', page, re.S)
    assert strip is not None
    scores = [float(s) for s in re.findall(r'<span class="alike">([\d.]+)% alike</span>', strip.group(0))]
    names = re.findall(r'alt="([^"]+)"', strip.group(0))
    assert scores and all(s >= 50 for s in scores) and scores == sorted(scores, reverse=True)
    assert all(n.startswith("chelsea_view") for n in names), names  # views of the cat, no unrelated photo
    assert len(names) == len(set(names))  # each content once
    api = client.get(f"/api/images/{url_of(library, 'chelsea.jpg')[len('/image/'):]}/similar?limit=50").json
    assert any(item["score"] < 0.5 for item in api["similar"])  # the API still gives every score


def test_why_is_labelled_and_a_button(client: FlaskClient, library: Path) -> None:
    page = client.get(url_of(library, "coffee.jpg")).get_data(as_text=True)
    assert re.search(r'<a class="why"[^>]*role="button"[^>]*aria-label="Why\? espresso"', page, re.S)


# -- the learned tag's page ------------------------------------------------------------------


def test_precision_is_not_a_false_zero_and_counts_are_plural(client: FlaskClient, library: Path) -> None:
    root = library.parent / "library"
    cats = [str(root / "chelsea.jpg")] + [str(p) for p in sorted(root.glob("chelsea_view*.jpg"))[:2]]
    assert client.post("/learn", data={"csrf": CSRF, "name": "pet", "path": cats[:1]}).status_code == 303
    page = client.get("/learned/pet").get_data(as_text=True)
    assert "1 example, 0 counter-examples" in page and "1 examples" not in page
    assert "not enough examples yet to estimate" in page
    assert client.post("/learn", data={"csrf": CSRF, "name": "pet", "path": cats[1:]}).status_code == 303
    page = client.get("/learned/pet").get_data(as_text=True)
    assert "3 examples, 0 counter-examples" in page
    assert "precision 0.0%" not in page
    assert re.search(r"not enough examples yet to estimate|cross-validated precision [1-9]", page)
    forget = re.search(r'<form[^>]*class="inline forget"[^>]*data-confirm="[^"]+"[^>]*>.*?</form>', page, re.S)
    assert forget is not None and '<button type="submit" class="danger">Forget this tag</button>' in forget.group(0)
    client.post("/learned/pet/forget", data={"csrf": CSRF})


def test_cross_validation_with_nothing_called_is_no_estimate() -> None:
    """0 of 0 held-out images called a match was 0% precision: it is no estimate."""
    rng = np.random.default_rng(3)
    positives, background = rng.normal(size=(3, 16)), rng.normal(size=(40, 16))
    assert cross_validated_precision(positives, np.zeros((0, 16)), background, threshold=1.0) is None


# -- errors ----------------------------------------------------------------------------------


def test_an_error_on_the_library_offers_a_retry_not_a_link_to_itself(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreadable(self: Viewer) -> Index:
        raise StoreError("the index is being replaced")

    monkeypatch.setattr(Viewer, "store", unreadable)
    response = client.get("/?q=cat")
    page = response.get_data(as_text=True)
    assert response.status_code == 503
    assert "Back to the library" not in page and 'href="/?q=cat">Try again</a>' in page
    other = client.get("/tags")
    assert other.status_code == 503 and "Back to the library" in other.get_data(as_text=True)


# -- in a real browser -----------------------------------------------------------------------

SIZES = {"phone": (390, 844), "desktop": (1366, 900), "narrow": (320, 640)}  # narrow: the least width that must fit


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, sample_jpegs: list[Path], views: list[Path],
           lite0: Classifier, weights_dir: Path) -> Iterator[tuple[str, Path]]:
    """`tagger serve` over the same kind of library; yields its address and the library's folder."""
    root = tmp_path_factory.mktemp("imagepage-served") / "library"
    make_library(root, sample_jpegs, views)
    with test_browser.serving(root, lite0, weights_dir) as address:
        yield address, root


def sized(driver: Any, size: str) -> None:
    """The viewport (not the window) at `size`: what a phone's page has to fit."""
    width, height = SIZES[size]
    driver.set_window_size(width, height)
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    driver.set_window_size(2 * width - inner[0], 2 * height - inner[1])
    assert driver.execute_script("return window.innerWidth") == width


def no_sideways_scroll(driver: Any, what: str) -> None:
    wide = driver.execute_script(
        "return [document.documentElement.scrollWidth, window.innerWidth,"
        " [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)"
        ".slice(0, 5).map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))]"
    )
    assert wide[0] <= wide[1], f"{what}: {wide[0]} px wide in a {wide[1]} px window; too wide: {wide[2]}"



def axe_violations(driver: Any) -> list[str]:
    import axe_selenium_python

    script = Path(axe_selenium_python.__file__).parent / "node_modules" / "axe-core" / "axe.min.js"
    driver.execute_script(script.read_text())
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document).then(r => done(r.violations.map(v => v.id + ': ' + v.help + ' ' +"
        " v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(' | '))), e => done(['axe failed: ' + e]));"
    )
    return list(result)


def visit(driver: Any, url: str, name: str, size: str) -> None:
    """Open `url` at `size`: no sideways scroll, no axe-core violation, a screenshot."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    sized(driver, size)
    driver.get(url)
    WebDriverWait(driver, test_browser.WAIT_SECONDS).until(ready.presence_of_element_located((By.TAG_NAME, "main")))
    driver.execute_script("return document.fonts.ready")
    no_sideways_scroll(driver, f"{name} at {size}")
    driver.save_screenshot(str(test_browser.ARTIFACTS / f"{size}-{name}.png"))
    assert axe_violations(driver) == [], f"{name} at {size}"


def test_pages_fit_a_phone_and_a_desktop_and_pass_axe(served: tuple[str, Path], browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    address, root = served
    wait = WebDriverWait(browser, test_browser.WAIT_SECONDS)
    test_browser.ARTIFACTS.mkdir(exist_ok=True)
    long_page = address + url_of(root.parent / "tagger.yaml", LONG_NAME)

    # a 60-character keyword without spaces, added through the page's own form; a learned tag taught there
    browser.get(long_page)
    field = wait.until(ready.presence_of_element_located((By.ID, "add-keyword")))
    field.send_keys(LONG_KEYWORD)
    browser.find_element(By.CSS_SELECTOR, ".add-keyword button").click()
    wait.until(lambda b: LONG_KEYWORD in b.find_element(By.ID, "keywords").text)
    teach = browser.find_element(By.ID, "teach-name")
    teach.send_keys(LONG_KEYWORD[:40])
    browser.find_element(By.CSS_SELECTOR, ".teach button[value=yes]").click()
    wait.until(ready.url_contains("/learned/"))
    learned_page = browser.current_url

    for size in SIZES:
        visit(browser, long_page, "image", size)
        visit(browser, address + "/tags", "tags", size)
        visit(browser, address + "/learned", "learned-list", size)
        visit(browser, learned_page, "learned", size)
        visit(browser, address + "/image/" + "x" * 200 + ".jpg", "error", size)
        sized(browser, size)
        browser.get(address + "/check")
        chooser = wait.until(ready.presence_of_element_located((By.ID, "check-files")))
        chooser.send_keys(str(root / LONG_NAME))
        wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#check-results .result.done")))
        no_sideways_scroll(browser, f"check at {size}")
        browser.save_screenshot(str(test_browser.ARTIFACTS / f"{size}-check.png"))
        assert axe_violations(browser) == [], f"check at {size}"


def test_space_on_why_shows_the_heatmap_without_scrolling(served: tuple[str, Path], browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    address, root = served
    wait = WebDriverWait(browser, test_browser.WAIT_SECONDS)
    sized(browser, "phone")
    browser.get(address + url_of(root.parent / "tagger.yaml", "coffee.jpg"))
    why = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, ".bars a.why")))
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", why)
    before = browser.execute_script("return window.scrollY")
    browser.execute_script("arguments[0].focus()", why)
    why.send_keys(Keys.SPACE)
    wait.until(lambda b: why.get_attribute("aria-pressed") == "true")
    assert browser.execute_script("return window.scrollY") == before
    wait.until(ready.visibility_of_element_located((By.CSS_SELECTOR, ".heat-frame img.heat")))
    why.send_keys(Keys.SPACE)
    wait.until(lambda b: why.get_attribute("aria-pressed") == "false")
    assert browser.execute_script("return window.scrollY") == before


def test_remove_a_keyword_then_undo_in_place(served: tuple[str, Path], browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    address, root = served
    wait = WebDriverWait(browser, test_browser.WAIT_SECONDS)
    sized(browser, "phone")
    browser.get(address + url_of(root.parent / "tagger.yaml", "chelsea.jpg"))
    remove = wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, 'button[aria-label="Remove cat"]')))
    score = browser.find_element(By.XPATH, '//li[a[@class="kw" and text()="cat"]]/span[@class="source"]').text
    browser.execute_script("window.notReloaded = true")
    remove.click()
    undo = wait.until(ready.visibility_of_element_located((By.CSS_SELECTOR, "#keyword-toast button")))
    assert "Removed “cat”" in browser.find_element(By.ID, "keyword-toast").text
    assert browser.execute_script("return window.notReloaded") is True  # done in place
    assert not browser.find_elements(By.CSS_SELECTOR, 'button[aria-label="Remove cat"]')
    assert browser.find_element(By.CSS_SELECTOR, 'button[aria-label="Restore cat"]')  # listed as removed
    assert browser.switch_to.active_element == undo  # the keyboard is where the undo is
    browser.save_screenshot(str(test_browser.ARTIFACTS / "phone-image-removed.png"))
    undo.click()
    wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, 'button[aria-label="Remove cat"]')))
    assert not browser.find_elements(By.CSS_SELECTOR, 'button[aria-label="Restore cat"]')
    again = browser.find_element(By.XPATH, '//li[a[@class="kw" and text()="cat"]]/span[@class="source"]').text
    assert again == score  # the model's keyword as it was
    assert browser.execute_script("return window.notReloaded") is True
    browser.refresh()
    wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, 'button[aria-label="Remove cat"]')))


def test_the_tag_browser_shows_a_learned_tag_and_leads_to_its_page(served: tuple[str, Path], browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    address, root = served
    wait = WebDriverWait(browser, test_browser.WAIT_SECONDS)
    sized(browser, "desktop")
    browser.get(address + url_of(root.parent / "tagger.yaml", "chelsea.jpg"))
    wait.until(ready.presence_of_element_located((By.ID, "teach-name"))).send_keys("housecat")
    browser.find_element(By.CSS_SELECTOR, ".teach button[value=yes]").click()
    wait.until(ready.url_contains("/learned/housecat"))
    browser.get(address + "/tags")
    search = wait.until(ready.presence_of_element_located((By.ID, "tag-filter")))
    search.send_keys("housecat")
    row = browser.find_element(By.CSS_SELECTOR, '.tb-item.learned[data-words="housecat"]')
    assert row.is_displayed()
    hidden = [e for e in browser.find_elements(By.CSS_SELECTOR, "#tag-browser .tb-item") if e.is_displayed()]
    assert all("housecat" in e.text for e in hidden)  # the filter leaves only what matches
    browser.find_element(By.CSS_SELECTOR, 'a[href="/learned/housecat"]').click()
    wait.until(ready.url_contains("/learned/housecat"))
    assert "housecat" in browser.find_element(By.TAG_NAME, "h1").text
    search_filter_cat(browser, address)


def search_filter_cat(browser: Any, address: str) -> None:
    """Filtering opens the categories above a match: the cat under animal."""
    from selenium.webdriver.common.by import By

    browser.get(address + "/tags")
    browser.find_element(By.ID, "tag-filter").send_keys("tabby")
    opened = browser.find_elements(By.CSS_SELECTOR, "#tag-browser details[open]")
    shown = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#all-tags .chip") if e.is_displayed()]
    assert shown and all("tabby" in s for s in shown) and opened
