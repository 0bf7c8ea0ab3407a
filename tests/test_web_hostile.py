"""The viewer against a hostile client, through Flask's test client: odd input on every route is
a 4xx naming the parameter (never a 500), redirects stay on the viewer, token guesses are
throttled with 429, uploads have a per-request budget, and foreign hosts and sites are refused.
"""
from __future__ import annotations

import base64
import io
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from tagger.engine.classify import Classifier
from tagger.web.guard import FREE_GUESSES, SignInThrottle, local_target, session_value

from test_web import TOKEN, Library, library, make_app, upload, url_path  # noqa: F401 - library is a fixture


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def app(library: Library, lite0: Classifier) -> Iterator[Flask]:
    app = make_app(library.config, lite0)
    yield app
    app.extensions["tagger"].close()


@pytest.fixture
def token_app(library: Library, lite0: Classifier) -> Iterator[Flask]:
    app = make_app(library.config, lite0, token=TOKEN)
    yield app
    app.extensions["tagger"].close()


def cursor(*parts: Any, raw: str | None = None) -> str:
    text = raw if raw is not None else json.dumps(list(parts))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def odd_values() -> list[str]:
    """A few hundred values no form would send, the same on every run."""
    fixed = [
        "", " ", "²", "١٢", "１２", "-1", "0", "00", "1e3", "nan", "inf", "-inf", "1_0", "0x10", "9" * 30,
        str(2**63), str(-(2**63) - 1), "\x00", "\t", "\n", "\r\n", "%00", "%0a", "../../etc/passwd", "/etc",
        "//evil.example", "/\t/evil.example", "/\\evil.example", "\\\\evil.example", "javascript:alert(1)",
        "http://evil.example/", "/%09/evil.example", "/ok?x=1#frag", "/\n/evil", "/\x7f", "/\u0085x", "🙂",
        "\u202e", "a" * 5000, "'", '"', 'tag:"unclosed', "added:-99999y..", "added:-9999999999d", "date:9999-12",
        "date:0000", "date:2024-00-00", "added:..", "score:2", "score:nan", "score:١", "^score:1", "folder:..",
        "tag:", "^", "..", "tag:" + "x" * 3000, " ".join(["cat"] * 200), "<script>alert(1)</script>",
        "newest", "score", "q", "name", "SCORE", "score ", "0.5", ".5", "1.", "1.0000000000000000001", "-0",
        cursor("newest", 2**63, "/x"), cursor("newest", -(2**64), "/x"), cursor("oldest", 10**400, "/x"),
        cursor(raw='["score", NaN, "/x"]'), cursor(raw='["score", Infinity, "/x"]'), cursor(raw='["q", 1e999, "/x"]'),
        cursor("name", "/x", "/x"), cursor("newest", True, "/x"), cursor("newest", 1, 5), cursor("newest", [1], "/x"),
        cursor(raw='{"a": 1}'), cursor(raw="[" * 100_000), cursor("score", 0.5, "/x\x00"), cursor("q", 0.5, "/x"),
        cursor(raw="\udcff".encode("utf-8", "surrogatepass").decode("latin-1")), "!!!", "====", "a" * 9000,
    ]
    rng = random.Random(12)
    alphabet = "09.:-^/\\\"' \t\n\x00\x01\x7f%?#&=²١１٣🙂猫éadwmy"
    generated = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24))) for _ in range(170)]
    return fixed + generated


PARAMS = ("q", "after", "limit", "top_k", "next", "sort", "folder", "min_score", "tag")


def no_server_error(response: Any, what: str) -> None:
    assert response.status_code < 500, f"{what}: {response.status_code} {response.get_data(as_text=True)[:300]}"
    assert b"Traceback" not in response.data


def test_fuzzed_input_on_every_route_is_never_a_500(app: Flask, token_app: Flask, library: Library) -> None:
    client, signed_out = app.test_client(), token_app.test_client()
    coffee = url_path(library.root / "2024" / "trip" / "coffee.jpg")
    sha = client.get(f"/api/images/{coffee}").json["sha256"]
    readers = ["/", "/tags", f"/image/{coffee}", "/check", "/api/images"]  # these read the query string
    others = [f"/api/images/{coffee}", "/api/tags", "/health", f"/thumb/{sha}", f"/original/{coffee}", f"/sidecar/{coffee}"]
    values = odd_values()
    assert len(values) >= 250
    for i, value in enumerate(values):
        one = PARAMS[i % len(PARAMS)]
        for route in readers + (others if i % 5 == 0 else []):  # every route, the value in one parameter
            no_server_error(client.get(route, query_string={one: value}), f"GET {route} {one}={value!r}")
        for route in ("/", "/api/images"):  # the readers of every parameter, all of them odd at once
            no_server_error(client.get(route, query_string={p: value for p in PARAMS}), f"GET {route} {value!r}")
        no_server_error(client.get(f"/{value.lstrip('/')}"), f"GET /{value!r}")
        no_server_error(client.post("/api/classify", data={"top_k": value, "file": (io.BytesIO(b"x"), "x.jpg")}),
                        f"classify top_k={value!r}")
        no_server_error(client.post(f"/image/{coffee}/keywords", data={"add": value, "csrf": value}), "form")
        no_server_error(client.post(f"/api/images/{coffee}/keywords", json={"add": value}), "keywords")
        if i == 0:  # a thousand query terms went past SQLite's expression depth
            many = client.get("/api/images", query_string={"q": " ".join(f"class:{n}" for n in range(1000))})
            assert many.status_code == 400 and "too many terms" in many.json["error"]
        if i == 0:  # nested deeper than Python's recursion limit: malformed JSON, not a crash
            deep = client.post(f"/api/images/{coffee}/keywords", data="[" * 100_000, content_type="application/json")
            assert deep.status_code == 400, deep.data
        login = signed_out.post("/login", data={"token": TOKEN, "next": value})
        no_server_error(login, f"login next={value!r}")
        assert login.status_code == 303 and login.headers["Location"].startswith("/")
        assert not login.headers["Location"].startswith("//"), value
        page = signed_out.get("/login", query_string={"next": value})
        no_server_error(page, f"login page next={value!r}")
        signed_out.post("/logout")


@pytest.mark.parametrize(
    "target",
    ["/\t/evil.example", "/\n/evil.example", "//evil.example", "/\\evil.example", "https://evil.example/",
     "javascript:alert(1)", "/\r\nSet-Cookie: x=1", "evil.example", "/\x00", ""],
)
def test_redirect_after_sign_in_stays_on_the_viewer(token_app: Flask, target: str) -> None:
    assert local_target(target) is None
    response = token_app.test_client().post("/login", data={"token": TOKEN, "next": target})
    assert response.status_code == 303 and response.headers["Location"] == "/"


def test_signed_out_link_to_a_tab_path_does_not_become_an_offsite_redirect(token_app: Flask) -> None:
    client = token_app.test_client()
    page = client.get("/%09/evil.example").get_data(as_text=True)
    target = re.search(r'name="next" value="([^"]*)"', page)
    assert target is not None and not target.group(1).startswith("//") and "\t" not in target.group(1)
    response = client.post("/login", data={"token": TOKEN, "next": target.group(1)})
    assert response.headers["Location"].startswith("/") and not response.headers["Location"].startswith("//")
    assert local_target("/?tag=espresso&sort=name") == "/?tag=espresso&sort=name"


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("limit=²", "limit"), ("limit=١٢", "limit"), ("limit=1_0", "limit"), ("limit=501", "limit"),
        ("min_score=nan", "min_score"), ("min_score=1e-1", "min_score"), ("min_score=١", "min_score"),
        (f"after={cursor('newest', 2**63, '/x')}", "after"), ("after=" + cursor(raw='["score", NaN, "/x"]'), "after"),
        (f"after={cursor('newest', 1.5, '/x')}", "after"), ("q=added:-99999y..", "added:-99999y.."),
    ],
)
def test_strict_parsers_answer_400_naming_the_parameter(app: Flask, query: str, name: str) -> None:
    response = app.test_client().get(f"/api/images?{query}")
    assert response.status_code == 400 and name in response.json["error"], response.json


def test_top_k_takes_ascii_digits_only(app: Flask) -> None:
    response = app.test_client().post("/api/classify", data={"top_k": "²", "file": (io.BytesIO(b"x"), "x.jpg")})
    assert response.status_code == 400 and "top_k" in response.json["error"]


# -- token guesses ------------------------------------------------------------------------


def test_token_guesses_back_off_with_429_for_bearer_cookie_and_form_alike(token_app: Flask) -> None:
    clock = Clock()
    token_app.extensions["tagger"].throttle = SignInThrottle(clock)
    client = token_app.test_client()
    for i in range(FREE_GUESSES):
        assert client.get("/api/tags", headers={"Authorization": f"Bearer wrong-{i}"}).status_code == 401
    refused = client.get("/api/tags", headers={"Authorization": f"Bearer {TOKEN}"})
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1" and refused.is_json
    form = client.post("/login", data={"token": TOKEN, "next": "/"})
    assert form.status_code == 429 and form.headers["Retry-After"] == "1"
    clock.now += 1
    client.set_cookie("tagger_token", "a-cookie-guess")
    assert client.get("/").status_code == 401  # a cookie guess counts too: now 2 s
    assert client.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 429
    clock.now += 2
    client.delete_cookie("tagger_token")
    assert client.post("/login", data={"token": "a-form-guess", "next": "/"}).status_code == 401  # now 4 s
    clock.now += 3
    assert client.get("/api/tags", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 429
    clock.now += 1
    assert client.get("/api/tags", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    for _ in range(FREE_GUESSES + 3):  # success forgave the past, and one stale value is one mistake
        assert client.get("/api/tags", headers={"Authorization": "Bearer the-same-old"}).status_code == 401
    assert client.get("/api/tags", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.get("/health").status_code == 200  # no credential offered: nothing to throttle


def test_session_cookie_holds_a_derived_value_and_is_secure_over_https(token_app: Flask, library: Library,
                                                                       lite0: Classifier) -> None:
    client = token_app.test_client()
    response = client.post("/login", data={"token": TOKEN, "next": "/"})
    cookie = response.headers["Set-Cookie"]
    assert TOKEN not in cookie and session_value(TOKEN) in cookie and "HttpOnly" in cookie
    assert "Secure" not in cookie  # plain http: a Secure cookie would never come back
    assert client.get("/").status_code == 200
    raw = token_app.test_client()
    raw.set_cookie("tagger_token", TOKEN)  # the token itself is not a session
    assert raw.get("/").status_code == 401
    https = client.post("/login", data={"token": TOKEN, "next": "/"}, base_url="https://localhost")
    assert "Secure" in https.headers["Set-Cookie"]
    always = make_app(library.config, lite0, token=TOKEN, secure_cookie="always")
    try:
        assert "Secure" in always.test_client().post("/login", data={"token": TOKEN}).headers["Set-Cookie"]
    finally:
        always.extensions["tagger"].close()


# -- hosts and origins --------------------------------------------------------------------


def test_host_names(library: Library, lite0: Classifier) -> None:
    cases = [
        ({"host": "::1"}, {"[::1]:8765": 200, "localhost:8765": 200, "attacker.example": 400}),
        ({"host": "0.0.0.0"}, {"127.0.0.1:8765": 200, "192.168.1.20:8765": 400, "attacker.example": 400}),
        ({"host": "0.0.0.0", "allowed_hosts": ["photos.lan", "192.168.1.20"]},
         {"photos.lan": 200, "PHOTOS.LAN.:8765": 200, "192.168.1.20:8765": 200, "localhost": 400, "attacker.example": 400}),
        ({"host": "192.168.1.20"}, {"192.168.1.20:8765": 200, "attacker.example:8765": 400}),
    ]
    for web, answers in cases:
        app = make_app(library.config, lite0, **{k: tuple(v) if isinstance(v, list) else v for k, v in web.items()})
        try:
            client = app.test_client()
            for host, status in answers.items():
                response = client.get("/api/tags", headers={"Host": host})
                assert response.status_code == status, (web, host, response.json)
                if status == 400:
                    assert "web.allowed_hosts" in response.json["error"]
        finally:
            app.extensions["tagger"].close()


def test_cross_site_uploads_are_refused_unless_a_script_sends_its_token(
    app: Flask, token_app: Flask, sample_jpegs: list[Path]
) -> None:
    coffee = next(p for p in sample_jpegs if p.stem == "coffee").read_bytes()
    client = app.test_client()
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Sec-Fetch-Site": "same-site"}):
        for route in ("/api/classify", "/check"):
            response = client.post(route, data={"file": (io.BytesIO(coffee), "c.jpg")}, headers=headers)
            assert response.status_code == 403, (route, headers)
    same = client.post("/api/classify", data={"file": (io.BytesIO(coffee), "c.jpg")},
                       headers={"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"})
    assert same.status_code == 200
    scripted = token_app.test_client().post(
        "/api/classify", data={"file": (io.BytesIO(coffee), "c.jpg")},
        headers={"Origin": "https://evil.example", "Authorization": f"Bearer {TOKEN}"},
    )
    assert scripted.status_code == 200


# -- upload budget ------------------------------------------------------------------------


def palette_png(size: int) -> bytes:
    out = io.BytesIO()
    Image.new("P", (size, size)).save(out, "PNG")
    return out.getvalue()


def test_one_request_has_a_budget_of_files_and_pixels(app: Flask, library: Library, lite0: Classifier) -> None:
    client = app.test_client()
    small = palette_png(1500)  # 2.25 megapixels each, in a few kilobytes; the per-image limit is 4
    too_many = upload(client, "/api/classify", *[(f"{i}.png", b"x") for i in range(21)])
    assert too_many.status_code == 413 and "web.max_upload_files" in too_many.json["error"]
    budget = make_app(library.config, lite0, max_upload_total_pixels=5_000_000)
    try:
        client = budget.test_client()
        over = upload(client, "/api/classify", *[(f"{i}.png", small) for i in range(3)])
        assert over.status_code == 413 and "web.max_upload_total_pixels" in over.json["error"]
        assert "X-Content-Type-Options" in over.headers and "Content-Security-Policy" in over.headers
        page = upload(client, "/check", *[(f"{i}.png", small) for i in range(3)])
        assert page.status_code == 413 and "web.max_upload_total_pixels" in page.get_data(as_text=True)
        assert upload(client, "/api/classify", *[(f"{i}.png", small) for i in range(2)]).status_code == 200
    finally:
        budget.extensions["tagger"].close()
    bomb = upload(app.test_client(), "/api/classify", ("bomb.png", palette_png(2100)))
    assert bomb.status_code == 422 and "web.max_upload_pixels" in bomb.json["results"][0]["error"]


def test_every_over_size_body_is_a_json_413_from_the_app(app: Flask) -> None:
    client = app.test_client()
    for size in (2 * 1024 * 1024, 1024 * 1024 + 100 * 1024):  # far over, and just over the 1 MB limit
        response = upload(client, "/api/classify", ("big.jpg", b"\xff" * size))
        assert response.status_code == 413 and response.is_json and "web.max_upload_mb" in response.json["error"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_a_read_only_index_refuses_corrections_with_503(app: Flask, library: Library,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from tagger.errors import StoreError
    from tagger.index import Index

    real_open = Index.open

    def read_only_mount(path: Path, *, readonly: bool = False) -> Index:
        if not readonly:
            raise StoreError(f"{path}: cannot open index: attempt to write a readonly database")
        return real_open(path, readonly=True)

    monkeypatch.setattr(Index, "open", read_only_mount)
    coffee = url_path(library.root / "2024" / "trip" / "coffee.jpg")
    response = app.test_client().post(f"/api/images/{coffee}/keywords", json={"add": ["mine"]})
    assert response.status_code == 503 and "tagger tag" in response.json["error"]
