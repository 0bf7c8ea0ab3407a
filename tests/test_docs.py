"""The documentation holds together: a short README, links that lead somewhere, every page reachable
from the README, and a command reference that matches the commands' own --help."""
from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CLI_REFERENCE = DOCS / "cli-reference.md"
GENERATOR = ROOT / "scripts" / "cli_reference.py"
README_MAX_LINES = 250

_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_INDENTED_CODE = re.compile(r"^(?: {4}|\t)")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1)[^`])+?\1")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.IGNORECASE)


def _doc_pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def _prose_lines(text: str) -> Iterator[str]:
    """The lines of a markdown file outside fenced and indented code blocks."""
    fence: str | None = None
    previous_blank = True
    for line in text.split("\n"):
        match = _FENCE.match(line)
        if fence is not None:
            if match and match.group(1) == fence:
                fence = None
            continue
        if match:
            fence = match.group(1)
            continue
        if previous_blank and _INDENTED_CODE.match(line) and not line.lstrip().startswith(("-", "*", "|")):
            continue  # an indented code block (commands, examples), not a list's continuation
        previous_blank = not line.strip()
        yield line


def _paragraphs(text: str) -> Iterator[str]:
    """The prose of a markdown file, a paragraph at a time (a link may span lines)."""
    paragraph: list[str] = []
    for line in _prose_lines(text):
        if line.strip():
            paragraph.append(line)
        elif paragraph:
            yield "\n".join(paragraph)
            paragraph = []
    if paragraph:
        yield "\n".join(paragraph)


def _links(path: Path) -> list[str]:
    targets: list[str] = []
    for paragraph in _paragraphs(path.read_text(encoding="utf-8")):
        for match in _LINK.finditer(_INLINE_CODE.sub("", paragraph)):
            targets.append(match.group(1).strip("<>"))
    return targets


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped but '-' and '_', spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if match is None:
            continue
        slug = _slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _resolve(source: Path, target: str) -> tuple[Path, str] | None:
    """The file and anchor a relative link points to; None for an external link."""
    if _EXTERNAL.match(target):
        return None
    file_part, _, anchor = target.partition("#")
    destination = source if not file_part else (source.parent / unquote(file_part)).resolve()
    return destination, unquote(anchor)


def _broken_links(source: Path) -> list[str]:
    broken: list[str] = []
    for target in _links(source):
        resolved = _resolve(source, target)
        if resolved is None:
            continue
        destination, anchor = resolved
        if not destination.exists():
            broken.append(f"{source.relative_to(ROOT)}: {target} (no such file)")
        elif anchor and destination.suffix == ".md" and anchor not in _anchors(destination):
            broken.append(f"{source.relative_to(ROOT)}: {target} (no heading #{anchor} there)")
    return broken


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cli_reference", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_readme_is_at_most_250_lines() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines: move some into docs/"


def test_every_relative_link_and_anchor_resolves() -> None:
    broken = [problem for page in [README, *_doc_pages()] for problem in _broken_links(page)]
    assert not broken, "\n".join(broken)


def test_every_doc_page_is_reachable_from_the_readme() -> None:
    reached: set[Path] = set()
    todo = [README.resolve()]
    while todo:
        page = todo.pop()
        if page in reached:
            continue
        reached.add(page)
        for target in _links(page):
            resolved = _resolve(page, target)
            if resolved is not None and resolved[0].suffix == ".md" and resolved[0].is_file():
                todo.append(resolved[0])
    unreached = [str(page.relative_to(ROOT)) for page in _doc_pages() if page.resolve() not in reached]
    assert not unreached, f"not linked from README.md, directly or through other pages: {unreached}"


def test_cli_reference_matches_the_commands_help() -> None:
    generator = _load_generator()
    expected: str = generator.render()
    current = CLI_REFERENCE.read_text(encoding="utf-8") if CLI_REFERENCE.is_file() else ""
    assert current == expected, "docs/cli-reference.md is out of date: run python scripts/cli_reference.py"


def test_slugs_follow_github() -> None:
    assert _slug("The daemon: `tagger run`") == "the-daemon-tagger-run"
    assert _slug("The services' sandbox") == "the-services-sandbox"
    assert _slug("tagger weights fetch") == "tagger-weights-fetch"
    assert _slug("Re-tagging speed") == "re-tagging-speed"
    assert _slug("2026-11-30, night: after the faster start") == "2026-11-30-night-after-the-faster-start"


def _section(text: str, heading: str) -> str:
    """The text under `heading` up to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    start = text.index(heading + "\n")
    end = re.search(rf"^#{{1,{len(level)}}} ", text[start + len(heading) :], re.M)
    return text[start : start + len(heading) + (end.start() if end else len(text))]


def test_the_readme_layout_and_the_architecture_page_match_the_tree() -> None:
    """Every package and top-level module is in the README's layout; every module of every stage is
    on the architecture page, and every module named there exists."""
    package = ROOT / "tagger"
    layout = _section(README.read_text(encoding="utf-8"), "## Layout")
    for sub in sorted(p for p in package.iterdir() if (p / "__init__.py").is_file()):
        assert f"{sub.name}/" in layout, sub.name
    for module in sorted(package.glob("*.py")):
        if module.name not in ("__init__.py", "__main__.py"):
            assert module.name in layout, module.name
    modules = _section((DOCS / "architecture.md").read_text(encoding="utf-8"), "## Modules")
    named = set(re.findall(r"\b(\w+\.(?:py|c))\b", modules))
    on_disk = {p.name for folder in ("tagger", "scripts", "bench") for p in (ROOT / folder).rglob("*.[pc]*")}
    assert named <= on_disk, sorted(named - on_disk)
    stage_modules = {
        p.name for p in package.rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py") and p.parent.name != "web"
    }
    assert stage_modules <= named, sorted(stage_modules - named)
