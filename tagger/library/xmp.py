"""XMP sidecars, so that Lightroom, darktable, digiKam and Immich see tagger's keywords.

Tags land in the three places photo tools read: `dc:subject` (flat leaf keywords),
`lr:hierarchicalSubject` ("auto|animal|cat") and `digiKam:TagsList` ("auto/animal/cat").
An XMP sidecar is shared with those tools and with the user, so it is merged, never
clobbered: the file is edited as a DOM and written back whole, and only tagger's own
entries change. Everything else (develop settings, ratings, titles, the user's keywords,
other namespaces) keeps its prefixes, attributes and values.

Which entries are tagger's:
- In the two hierarchical lists, every entry under the prefix ("auto|..." and "auto/...",
  or the prefix alone). The prefix is tagger's: a user tag put under it is replaced too.
- In `dc:subject`, a flat keyword carries no mark, so tagger keeps the list of the keywords
  it added in `tagger:MachineKeywords` (an rdf:Bag in TAGGER_NS). A leaf the user already
  had before tagger added it is not recorded there, so it stays when the machine tags
  change. The Bag is written even when empty: its presence says "tagger has managed this
  file". Where another tool rewrote the file and dropped it, tagger falls back to "a
  keyword is ours iff it is the leaf of one of our hierarchical entries"; only then can a
  user keyword equal to a machine leaf be removed. A keyword the user adds after tagger
  added the same one cannot be told apart: it goes when the machine tag goes.
- The keywords the user added through tagger (`tagger tag add`, the viewer) are the user's,
  so they are written at the top level of all three lists ("Chelsea"), not under the prefix,
  and recorded in `tagger:UserKeywords` so that a removal in tagger removes them here. One
  the file already had (from another tool) is left alone and not recorded.

An empty machine list removes tagger's entries and keeps the file, even one that tagger
created and that is now an empty packet: deleting a file that another tool may have
written to a moment ago is riskier than leaving a valid, empty XMP packet. The one exception is
strip_xmp: a file of a former naming or sidecar.folder, left holding nothing but tagger's record, goes
(else a tool reading that name would find it empty instead of the sidecar now in use).
With the "replace" style a RAW+JPEG pair shares one sidecar, as in Lightroom; the last
image written sets the machine tags.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard, TypeVar, cast, get_args
from xml.dom.minidom import Comment, Document, Element, Node, ProcessingInstruction, Text
from xml.parsers.expat import ExpatError

from tagger.config import XmpStyle
from tagger.errors import TaggerError
from tagger.library.places import beside, made_for
from tagger.fileio import MB, mode_of, read_small, write_atomic

MAX_XMP_BYTES = 16 * MB  # darktable's history makes XMP files of some hundred kB; no packet is 16 MB
XMP_STYLES: tuple[XmpStyle, ...] = get_args(XmpStyle)

X_NS = "adobe:ns:meta/"
RDF_NS = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
DC_NS = "http://purl.org/dc/elements/1.1/"
LR_NS = "http://ns.adobe.com/lightroom/1.0/"
DIGIKAM_NS = "http://www.digikam.org/ns/1.0/"
TAGGER_NS = "https://tagger.invalid/ns/1.0/"
XMLNS_NS = "http://www.w3.org/2000/xmlns/"

_T = TypeVar("_T")
_Child = Element | Text | Comment | ProcessingInstruction  # what an element holds; CDATA is Text

PACKET_HEADER = '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
PACKET_TRAILER = '\n<?xpacket end="w"?>\n'
EMPTY_PACKET = (
    f'<x:xmpmeta xmlns:x="{X_NS}" x:xmptk="tagger">\n'
    f' <rdf:RDF xmlns:rdf="{RDF_NS}">\n'
    '  <rdf:Description rdf:about=""/>\n'
    " </rdf:RDF>\n"
    "</x:xmpmeta>"
)

_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"}
_TEXT_ESCAPES = str.maketrans(_ESCAPES)
# Literal tabs and newlines in an attribute would be read back as spaces.
_ATTRIBUTE_ESCAPES = str.maketrans({**_ESCAPES, '"': "&quot;", "\t": "&#9;", "\n": "&#10;"})


class XmpError(TaggerError):
    """An XMP sidecar that cannot be read, understood or written; it is left as it was."""

    def __init__(self, reason: str, path: Path | None = None) -> None:
        super().__init__(reason if path is None else f"{path}: {reason}")
        self.reason = reason
        self.path = path


@dataclass(frozen=True)
class _Array:
    """An XMP array property that tagger edits."""

    uri: str
    name: str
    prefix: str
    kind: str


SUBJECT = _Array(DC_NS, "subject", "dc", "Bag")
HIERARCHICAL = _Array(LR_NS, "hierarchicalSubject", "lr", "Bag")
TAGS_LIST = _Array(DIGIKAM_NS, "TagsList", "digiKam", "Seq")
MACHINE_KEYWORDS = _Array(TAGGER_NS, "MachineKeywords", "tagger", "Bag")
USER_KEYWORDS = _Array(TAGGER_NS, "UserKeywords", "tagger", "Bag")


def xmp_path(image: Path, style: str, mirror: Path | None = None) -> Path:
    """The image's XMP sidecar. `auto` merges into the one another tool made, of either style (never
    a second one beside it), and names a new one IMG_1.jpg.xmp, which no other image can share.
    With `mirror` (sidecar.folder), in the mirror tree (tagger.library.places)."""
    append, replace = beside(image, image.name + ".xmp", mirror), beside(image, image.stem + ".xmp", mirror)
    if style == "append":
        return append
    if style == "replace":
        return replace
    if style == "auto":
        return replace if replace.exists() and not append.exists() else append
    raise ValueError(f"unknown XMP sidecar style {style!r}: use one of {', '.join(XMP_STYLES)}")


def merge_keywords(
    existing: bytes | None,
    machine: Sequence[str],
    prefix: str,
    user: Sequence[str] = (),
    former_prefixes: Sequence[str] = (),
) -> bytes:
    """The packet `existing` with tagger's entries replaced by `machine` ("animal/cat", ...) under
    the prefix, and by `user`: the keywords the user added through tagger, written at the top
    level as the user's own ("Chelsea"), and recorded so that removing one in tagger removes it here.
    Entries under `former_prefixes` (an `xmp.prefix` changed since) are tagger's too: they go.
    """
    root = _levels(prefix)
    if not root:
        raise ValueError(f"XMP tag prefix {prefix!r} names no tag: use e.g. 'auto/'")
    roots = [root, *(levels for levels in map(_levels, former_prefixes) if levels and levels != root)]
    paths = _unique(tuple(levels) for levels in map(_levels, machine) if levels)
    own = _unique(word.strip().replace("/", " ").replace("|", " ") for word in user if word.strip())
    packet = _Packet(existing)
    subject = packet.take(SUBJECT)
    hierarchical = packet.take(HIERARCHICAL)
    tags_list = packet.take(TAGS_LIST)
    recorded = packet.take(MACHINE_KEYWORDS)
    recorded_own = set(_values(packet.take(USER_KEYWORDS)))

    if MACHINE_KEYWORDS in packet.targets:
        old_leaves = set(_values(recorded))
    else:  # another tool dropped our record: fall back to the leaves of our hierarchical entries
        old_leaves = {v.split("|")[-1] for v in _ours(hierarchical, roots, "|")}
        old_leaves |= {v.split("/")[-1] for v in _ours(tags_list, roots, "/")}
    kept_subject = [li for li in subject if _value(li) not in old_leaves | recorded_own]
    kept_values = set(_values(kept_subject))
    leaves = [leaf for leaf in _unique(p[-1] for p in paths) if leaf not in kept_values]
    own = [word for word in own if word not in kept_values]  # already in the file: another tool's, left alone

    packet.put(SUBJECT, kept_subject + packet.items(own + [leaf for leaf in leaves if leaf not in own]))
    for items, array, sep in ((hierarchical, HIERARCHICAL, "|"), (tags_list, TAGS_LIST, "/")):
        ours = set(_ours(items, roots, sep)) | recorded_own
        kept = [li for li in items if _value(li) not in ours]
        packet.put(array, kept + packet.items([*own, *(sep.join((*root, *p)) for p in paths)]))
    packet.put(MACHINE_KEYWORDS, packet.items(leaves), keep_empty=True)
    packet.put(USER_KEYWORDS, packet.items(own))
    return packet.to_bytes()


def write_xmp(
    image: Path,
    machine: Sequence[str],
    *,
    style: str = "append",
    prefix: str = "auto/",
    user: Sequence[str] = (),
    mirror: Path | None = None,
    former_prefixes: Sequence[str] = (),
) -> Path:
    """Merge `machine` tags (and the user's own `user` keywords) into the image's XMP sidecar;
    XmpError leaves the file untouched."""
    return update_xmp(
        image, machine, style=style, prefix=prefix, user=user, mirror=mirror, former_prefixes=former_prefixes
    )[0]


def update_xmp(
    image: Path,
    machine: Sequence[str],
    *,
    style: str = "append",
    prefix: str = "auto/",
    user: Sequence[str] = (),
    mirror: Path | None = None,
    former_prefixes: Sequence[str] = (),
) -> tuple[Path, bool]:
    """write_xmp, and whether the file changed: one that already says all this is not written again
    (its modification time, which darktable and digiKam watch, stays)."""
    path = xmp_path(image, style, mirror)
    try:
        made_for(path, mirror)
        existing = _read(path)
        data = merge_keywords(existing, machine, prefix, user, former_prefixes)
        if data == existing:
            return path, False
        write_atomic(path, data, mode_of(image))
    except XmpError as exc:
        raise XmpError(exc.reason, path) from None
    except OSError as exc:
        raise XmpError(f"cannot write: {exc.strerror or exc}", path) from None
    return path, True


def strip_xmp(path: Path, prefix: str) -> bool:
    """Take tagger's entries (under `prefix`, and the user's keywords it recorded) out of the XMP file
    at `path`, one that the naming or folder in use no longer points at; whether it changed.

    What another tool put there stays. A file left with nothing but tagger's own bookkeeping is
    removed, so that a tool reading that name (digiKam reads IMG_1.jpg.xmp first) does not find an
    empty packet in place of the sidecar now in use. XmpError leaves the file as it was.
    """
    try:
        existing = _read(path)
        if existing is None:
            return False
        packet = _Packet(merge_keywords(existing, [], prefix))
        if packet.only_tagger():
            path.unlink()
            return True
        data = packet.to_bytes()
        if data == existing:
            return False
        write_atomic(path, data, path.stat().st_mode & 0o7777)
    except XmpError as exc:
        raise XmpError(exc.reason, path) from None
    except OSError as exc:
        raise XmpError(f"cannot write: {exc.strerror or exc}", path) from None
    return True


def read_keywords(image: Path, style: str = "append", mirror: Path | None = None) -> dict[str, list[str]]:
    """The three keyword lists of the sidecar, all empty when there is none."""
    path = xmp_path(image, style, mirror)
    try:
        packet = _Packet(_read(path))
    except XmpError as exc:
        raise XmpError(exc.reason, path) from None
    return {
        key: list(_values(packet.take(array)))
        for key, array in (("subject", SUBJECT), ("hierarchical", HIERARCHICAL), ("digikam", TAGS_LIST))
    }


def _read(path: Path) -> bytes | None:
    try:
        return read_small(path, MAX_XMP_BYTES)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise XmpError(f"cannot read: {exc.strerror or exc}", path) from None


class _Packet:
    """An XMP packet edited in place, so that whatever tagger does not manage stays as it was."""

    def __init__(self, data: bytes | None) -> None:
        # Imported here: defusedxml's SAX side imports urllib.request, http and email, 15 ms of the
        # start of every command, most of which never reads an XMP file.
        import defusedxml.minidom

        try:
            document: Document = defusedxml.minidom.parseString(
                EMPTY_PACKET.encode() if data is None else data, forbid_dtd=True
            )
        except (ExpatError, ValueError) as exc:  # defusedxml's refusals are ValueErrors
            raise XmpError(f"not valid XML: {exc}") from None
        self.document = document
        root = document.documentElement
        assert root is not None  # a document that parsed has one
        self.root = root
        self.rdf = self._find_rdf()
        self.rdf_prefix = _prefix_for(self.rdf, RDF_NS, "rdf")
        self.targets: dict[_Array, Element] = {}

    def take(self, array: _Array) -> list[_Child]:
        """The array's items, from every place it is written; the first element form is kept for `put`."""
        items: list[_Child] = []
        for description in self._descriptions():
            if description.hasAttributeNS(array.uri, array.name):
                items += self.items([description.getAttributeNS(array.uri, array.name)])
                description.removeAttributeNS(array.uri, array.name)
            for element in [e for e in _elements(description) if _is(e, array.uri, array.name)]:
                items += self._array_items(element)
                if array in self.targets:
                    _remove(element)
                else:
                    self.targets[array] = element
        return items

    def put(self, array: _Array, items: list[_Child], keep_empty: bool = False) -> None:
        items = _deduplicated(items)
        target = self.targets.pop(array, None)
        if not items and not keep_empty:
            if target is not None:
                _remove(target)
            return
        if target is None:
            description = self._descriptions()[0]
            name = f"{_prefix_for(description, array.uri, array.prefix)}:{array.name}"
            target = self.document.createElementNS(array.uri, name)
            self._append(description, target)
        containers = [e for e in _elements(target) if _is_container(e)]
        if containers:
            container = containers[0]
        else:
            for child in list(target.childNodes):
                target.removeChild(child)
            container = self.document.createElementNS(RDF_NS, f"{self.rdf_prefix}:{array.kind}")
            self._append(target, container)
        self._fill(container, items)

    def items(self, values: Iterable[str]) -> list[_Child]:
        created: list[_Child] = []
        for value in values:
            li = self.document.createElementNS(RDF_NS, f"{self.rdf_prefix}:li")
            li.appendChild(self.document.createTextNode(value))
            created.append(li)
        return created

    def only_tagger(self) -> bool:
        """Nothing in the packet but tagger's own record: no other property, attribute or node."""
        if any(not _ignorable(n) and n is not self.rdf for n in self.root.childNodes):
            return False
        for description in self.rdf.childNodes:
            if _ignorable(description):
                continue
            if not isinstance(description, Element) or not _is(description, RDF_NS, "Description"):
                return False
            if any(a.namespaceURI not in (XMLNS_NS, RDF_NS) for a in description.attributes.values()):
                return False
            if any(
                not _ignorable(n) and not (isinstance(n, Element) and n.namespaceURI == TAGGER_NS)
                for n in description.childNodes
            ):
                return False
        return True

    def to_bytes(self) -> bytes:
        try:
            body = _markup(self.root)
        except RecursionError:
            raise XmpError("nested too deeply to be an XMP packet") from None
        return (PACKET_HEADER + body + PACKET_TRAILER).encode("utf-8")

    def _find_rdf(self) -> Element:
        root = self.root
        if _is(root, RDF_NS, "RDF"):
            self.root = self.document.createElementNS(X_NS, "x:xmpmeta")
            self.root.setAttributeNS(XMLNS_NS, "xmlns:x", X_NS)
            self.document.replaceChild(self.root, root)
            self._append(self.root, root)
            return root
        if root.namespaceURI != X_NS:
            raise XmpError(f"not an XMP packet: the root element is <{root.tagName}>")
        for element in _elements(root):
            if _is(element, RDF_NS, "RDF"):
                return element
        rdf = self.document.createElementNS(RDF_NS, f"{_prefix_for(root, RDF_NS, 'rdf')}:RDF")
        self._append(root, rdf)
        return rdf

    def _append(self, parent: Element, child: Element) -> None:
        """Add `child` last, on its own line, before the parent's closing indentation."""
        line = self.document.createTextNode("\n" + _child_indent(parent))
        last = parent.lastChild
        if _is_blank(last):
            parent.insertBefore(line, last)
            parent.insertBefore(child, last)
        else:
            parent.appendChild(line)
            parent.appendChild(child)
            parent.appendChild(self.document.createTextNode("\n" + _indent(parent)))

    def _fill(self, container: Element, items: list[_Child]) -> None:
        """Make `items` the container's children, one a line, whatever its layout was."""
        inner, outer = _child_indent(container), _indent(container)
        for child in list(container.childNodes):
            container.removeChild(child)
        for item in items:
            container.appendChild(self.document.createTextNode("\n" + inner))
            container.appendChild(item)
        if items:
            container.appendChild(self.document.createTextNode("\n" + outer))

    def _descriptions(self) -> list[Element]:
        found = [e for e in _elements(self.rdf) if _is(e, RDF_NS, "Description")]
        if found:
            return found
        description = self.document.createElementNS(RDF_NS, f"{self.rdf_prefix}:Description")
        description.setAttributeNS(RDF_NS, f"{self.rdf_prefix}:about", "")
        self._append(self.rdf, description)
        return [description]

    def _array_items(self, element: Element) -> list[_Child]:
        """The items of an array property; a plain-text value counts as a one-item array."""
        children = list(_elements(element))
        if len(children) == 1 and _is_container(children[0]):
            return [n for n in children[0].childNodes if not _is_blank(n)]
        if not children and not any(a.namespaceURI == RDF_NS for a in element.attributes.values()):
            text = _text(element).strip()
            return self.items([text] if text else [])
        raise XmpError(f"<{element.tagName}> is not a list of keywords; tagger will not rewrite it")


def _levels(path: str) -> list[str]:
    return [level.strip() for level in path.split("/") if level.strip()]


def _unique(values: Iterable[_T]) -> list[_T]:
    return list(dict.fromkeys(values))


def _ours(items: list[_Child], roots: list[list[str]], sep: str) -> list[str]:
    heads = [sep.join(root) for root in roots]
    return [v for v in _values(items) if any(v == head or v.startswith(head + sep) for head in heads)]


def _value(node: Node) -> str | None:
    """A simple rdf:li's text; None for anything richer, which is kept and never compared."""
    if not isinstance(node, Element) or not _is(node, RDF_NS, "li"):
        return None
    if any(a.namespaceURI == RDF_NS for a in node.attributes.values()) or any(_elements(node)):
        return None
    return _text(node)


def _values(items: Iterable[Node]) -> Iterable[str]:
    return (v for v in map(_value, items) if v is not None)


def _deduplicated(items: list[_Child]) -> list[_Child]:
    seen: set[str] = set()
    kept = []
    for item in items:
        value = _value(item)
        if value is None or value not in seen:
            kept.append(item)
        if value is not None:
            seen.add(value)
    return kept


def _text(element: Element) -> str:
    return "".join(n.data for n in element.childNodes if isinstance(n, Text))  # CDATA sections are Text too


def _elements(parent: Node) -> list[Element]:
    return [n for n in parent.childNodes if isinstance(n, Element)]


def _is(element: Element, uri: str, name: str) -> bool:
    return element.namespaceURI == uri and element.localName == name


def _ignorable(node: Node) -> bool:
    return _is_blank(node) or isinstance(node, Comment)


def _is_container(element: Element) -> bool:
    return element.namespaceURI == RDF_NS and element.localName in ("Bag", "Seq", "Alt")


def _is_blank(node: Node | None) -> TypeGuard[Text]:
    return isinstance(node, Text) and node.nodeType == Node.TEXT_NODE and not node.data.strip()


def _prefix_for(element: Element, uri: str, preferred: str) -> str:
    """A prefix bound to `uri` at `element`, declaring `preferred` (or a free variant) if none is."""
    scope: dict[str, str] = {}
    chain = []
    node: Node | None = element
    while isinstance(node, Element):
        chain.append(node)
        node = node.parentNode
    for ancestor in reversed(chain):
        scope.update((n[6:], v) for n, v in ancestor.attributes.items() if n.startswith("xmlns:"))
    bound = [p for p, u in scope.items() if u == uri]
    if bound:
        return preferred if preferred in bound else bound[0]
    prefix = preferred
    while prefix in scope:
        prefix += "_"
    element.setAttributeNS(XMLNS_NS, f"xmlns:{prefix}", uri)
    return prefix


def _indent(node: Node) -> str:
    previous = node.previousSibling
    if _is_blank(previous) and "\n" in previous.data:
        return previous.data.rsplit("\n", 1)[1]
    return ""


def _child_indent(node: Node) -> str:
    """One level deeper than `node`, with the step the file already uses (one space if unknown)."""
    inner = _indent(node)
    outer = _indent(node.parentNode) if isinstance(node.parentNode, Element) else ""
    step = inner[len(outer) :] if inner.startswith(outer) and len(inner) > len(outer) else " "
    return inner + step


def _remove(element: Element) -> None:
    parent = element.parentNode
    assert isinstance(parent, Element)  # tagger removes properties and their duplicates only
    if _is_blank(element.previousSibling):
        parent.removeChild(element.previousSibling)
    parent.removeChild(element)


def _markup(node: Node) -> str:
    """XML for `node` with the prefixes, values and whitespace it was read or built with."""
    if isinstance(node, Element):
        # Declarations first, as minidom's parser orders them: a re-read gives the same bytes.
        pairs = sorted(node.attributes.items(), key=lambda pair: not pair[0].startswith("xmlns"))
        attributes = [f'{n}="{v.translate(_ATTRIBUTE_ESCAPES)}"' for n, v in pairs]
        separator = "\n" + _indent(node) + "  " if len(attributes) > 2 else " "
        start = node.tagName + "".join(separator + a for a in attributes)
        if not node.childNodes:
            return f"<{start}/>"
        return f"<{start}>" + "".join(map(_markup, node.childNodes)) + f"</{node.tagName}>"
    if isinstance(node, Text):
        return node.data.translate(_TEXT_ESCAPES)
    if isinstance(node, Comment):
        return f"<!--{node.data}-->"
    instruction = cast(ProcessingInstruction, node)  # the only other node minidom puts in an element
    return f"<?{instruction.target} {instruction.data}?>" if instruction.data else f"<?{instruction.target}?>"
