"""XMP sidecars: keywords other tools read, merged into real-world sidecars without clobbering them."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import tostring

import defusedxml.ElementTree
import pytest
from PIL import Image

from tagger.errors import TaggerError
from tagger.library.xmp import XmpError, merge_keywords, read_keywords, write_xmp, xmp_path

Exiftool = Callable[..., dict[str, Any]]
Keywords = dict[str, list[str]]
RealSidecar = tuple[Path, str, Keywords]  # the sidecar, its path style, the user's keywords in it

RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
OUR_PROPERTIES = {
    "{http://purl.org/dc/elements/1.1/}subject",
    "{http://ns.adobe.com/lightroom/1.0/}hierarchicalSubject",
    "{http://www.digikam.org/ns/1.0/}TagsList",
    "{https://tagger.invalid/ns/1.0/}MachineKeywords",
}
OUR_EXIFTOOL_TAGS = {"Subject", "HierarchicalSubject", "TagsList", "MachineKeywords"}

# Lightroom Classic: a bare x:xmpmeta (no xpacket), develop settings, the user's keywords.
LIGHTROOM = """<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 7.0-c000 1.000000, 0000/00/00-00:00:00        ">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:tiff="http://ns.adobe.com/tiff/1.0/"
    xmlns:exif="http://ns.adobe.com/exif/1.0/"
    xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/"
    xmlns:stEvt="http://ns.adobe.com/xap/1.0/sType/ResourceEvent#"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
   xmp:ModifyDate="2023-06-01T19:02:11+02:00"
   xmp:CreatorTool="Adobe Photoshop Lightroom Classic 12.3 (Macintosh)"
   xmp:Rating="4"
   tiff:Make="Canon"
   tiff:Model="Canon EOS R6"
   exif:ExposureTime="1/250"
   exif:FNumber="8/1"
   xmpMM:InstanceID="xmp.iid:4c8a2f1e-6d1b-4f7e-9a51-0c2d3b1e9f77"
   crs:Version="15.3"
   crs:ProcessVersion="11.0"
   crs:WhiteBalance="As Shot"
   crs:Exposure2012="+0.35"
   crs:Contrast2012="+12"
   crs:Highlights2012="-48"
   crs:Shadows2012="+31"
   crs:Vibrance="+10"
   crs:LensProfileEnable="1"
   crs:HasSettings="True">
   <xmpMM:History>
    <rdf:Seq>
     <rdf:li
      stEvt:action="saved"
      stEvt:instanceID="xmp.iid:4c8a2f1e-6d1b-4f7e-9a51-0c2d3b1e9f77"
      stEvt:when="2023-06-01T19:02:11+02:00"
      stEvt:softwareAgent="Adobe Photoshop Lightroom Classic 12.3 (Macintosh)"
      stEvt:changed="/metadata"/>
    </rdf:Seq>
   </xmpMM:History>
   <dc:title>
    <rdf:Alt>
     <rdf:li xml:lang="x-default">Sunset over the harbour</rdf:li>
    </rdf:Alt>
   </dc:title>
   <dc:subject>
    <rdf:Bag>
     <rdf:li>harbour</rdf:li>
     <rdf:li>holiday</rdf:li>
     <rdf:li>places</rdf:li>
    </rdf:Bag>
   </dc:subject>
   <lr:hierarchicalSubject>
    <rdf:Bag>
     <rdf:li>places|harbour</rdf:li>
     <rdf:li>holiday</rdf:li>
    </rdf:Bag>
   </lr:hierarchicalSubject>
   <crs:ToneCurvePV2012>
    <rdf:Seq>
     <rdf:li>0, 0</rdf:li>
     <rdf:li>255, 255</rdf:li>
    </rdf:Seq>
   </crs:ToneCurvePV2012>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""

# digiKam through Exiv2: xpacket wrapper with padding, attribute-style simple properties.
DIGIKAM = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:digiKam="http://www.digikam.org/ns/1.0/"
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:MicrosoftPhoto="http://ns.microsoft.com/photo/1.0/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
    xmlns:mediapro="http://ns.iview-multimedia.com/mediapro/1.0/"
    xmlns:acdsee="http://ns.acdsee.com/iptc/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:tiff="http://ns.adobe.com/tiff/1.0/"
   digiKam:ColorLabel="4"
   digiKam:PickLabel="3"
   xmp:Rating="5"
   MicrosoftPhoto:Rating="99"
   acdsee:categories="&lt;Categories&gt;&lt;Category Assigned=&quot;0&quot;&gt;Family&lt;Category Assigned=&quot;1&quot;&gt;Anna&lt;/Category&gt;&lt;/Category&gt;&lt;/Categories&gt;"
   tiff:Orientation="1">
   <digiKam:TagsList>
    <rdf:Seq>
     <rdf:li>Family/Anna</rdf:li>
     <rdf:li>Places/Berlin</rdf:li>
    </rdf:Seq>
   </digiKam:TagsList>
   <MicrosoftPhoto:LastKeywordXMP>
    <rdf:Bag>
     <rdf:li>Family/Anna</rdf:li>
     <rdf:li>Places/Berlin</rdf:li>
    </rdf:Bag>
   </MicrosoftPhoto:LastKeywordXMP>
   <lr:hierarchicalSubject>
    <rdf:Bag>
     <rdf:li>Family|Anna</rdf:li>
     <rdf:li>Places|Berlin</rdf:li>
    </rdf:Bag>
   </lr:hierarchicalSubject>
   <mediapro:CatalogSets>
    <rdf:Bag>
     <rdf:li>Family|Anna</rdf:li>
     <rdf:li>Places|Berlin</rdf:li>
    </rdf:Bag>
   </mediapro:CatalogSets>
   <dc:subject>
    <rdf:Bag>
     <rdf:li>Anna</rdf:li>
     <rdf:li>Berlin</rdf:li>
    </rdf:Bag>
   </dc:subject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
""" + (" " * 100 + "\n") * 4 + """<?xpacket end="w"?>"""

# darktable 4: an XML declaration, the edit history, one user tag.
DARKTABLE = """<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:exif="http://ns.adobe.com/exif/1.0/"
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
    xmlns:darktable="http://darktable.sf.net/"
   exif:DateTimeOriginal="2023:06:01 18:42:07"
   xmp:Rating="2"
   xmpMM:DerivedFrom="IMG_1.jpg"
   darktable:import_timestamp="63822793327000000"
   darktable:change_timestamp="63822793512000000"
   darktable:export_timestamp="-1"
   darktable:print_timestamp="-1"
   darktable:xmp_version="5"
   darktable:raw_params="0"
   darktable:auto_presets_applied="1"
   darktable:history_end="2"
   darktable:iop_order_version="4">
   <darktable:masks_history>
    <rdf:Seq/>
   </darktable:masks_history>
   <darktable:history>
    <rdf:Seq>
     <rdf:li
      darktable:num="0"
      darktable:operation="exposure"
      darktable:enabled="1"
      darktable:modversion="6"
      darktable:params="00000000000080b90000803f00004842000080c0010000000000"
      darktable:multi_name=""
      darktable:multi_priority="0"
      darktable:blendop_version="13"
      darktable:blendop_params="gz11eJxjYIAACQYYOOHEgAYY0QVwggZ7CB6VAgAbBgKc"/>
     <rdf:li
      darktable:num="1"
      darktable:operation="flip"
      darktable:enabled="1"
      darktable:modversion="2"
      darktable:params="ffffffff"
      darktable:multi_name="&lt;rotate&gt;"
      darktable:multi_priority="0"
      darktable:blendop_version="13"
      darktable:blendop_params="gz11eJxjYIAACQYYOOHEgAYY0QVwggZ7CB6VAgAbBgKc"/>
    </rdf:Seq>
   </darktable:history>
   <dc:subject>
    <rdf:Bag>
     <rdf:li>flower</rdf:li>
    </rdf:Bag>
   </dc:subject>
   <lr:hierarchicalSubject>
    <rdf:Bag>
     <rdf:li>nature|flower</rdf:li>
    </rdf:Bag>
   </lr:hierarchicalSubject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""

# ExifTool's own layout: single quotes, one rdf:Description per namespace, element-style values.
EXIFTOOL = """<?xpacket begin='\ufeff' id='W5M0MpCehiHzreSzNTczkc9d'?>
<x:xmpmeta xmlns:x='adobe:ns:meta/' x:xmptk='Image::ExifTool 12.57'>
<rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'>

 <rdf:Description rdf:about=''
  xmlns:dc='http://purl.org/dc/elements/1.1/'>
  <dc:creator>
   <rdf:Seq>
    <rdf:li>Jane Doe</rdf:li>
   </rdf:Seq>
  </dc:creator>
  <dc:description>
   <rdf:Alt>
    <rdf:li xml:lang='x-default'>Two cats on a wall &amp; a dog</rdf:li>
   </rdf:Alt>
  </dc:description>
  <dc:subject>
   <rdf:Bag>
    <rdf:li>wall</rdf:li>
   </rdf:Bag>
  </dc:subject>
 </rdf:Description>

 <rdf:Description rdf:about=''
  xmlns:photoshop='http://ns.adobe.com/photoshop/1.0/'>
  <photoshop:City>Lisbon</photoshop:City>
 </rdf:Description>

 <rdf:Description rdf:about=''
  xmlns:xmp='http://ns.adobe.com/xap/1.0/'>
  <xmp:Label>Red</xmp:Label>
  <xmp:Rating>3</xmp:Rating>
 </rdf:Description>
</rdf:RDF>
</x:xmpmeta>
<?xpacket end='w'?>"""

REAL_SIDECARS = {
    "lightroom": (
        LIGHTROOM,
        "replace",
        {"subject": ["harbour", "holiday", "places"], "hierarchical": ["places|harbour", "holiday"], "digikam": []},
    ),
    "digikam": (
        DIGIKAM,
        "append",
        {
            "subject": ["Anna", "Berlin"],
            "hierarchical": ["Family|Anna", "Places|Berlin"],
            "digikam": ["Family/Anna", "Places/Berlin"],
        },
    ),
    "darktable": (DARKTABLE, "append", {"subject": ["flower"], "hierarchical": ["nature|flower"], "digikam": []}),
    "exiftool": (EXIFTOOL, "append", {"subject": ["wall"], "hierarchical": [], "digikam": []}),
}

CAT = ["animal/cat", "cat"]
CAT_KEYWORDS = {
    "subject": ["cat"],
    "hierarchical": ["auto|animal|cat", "auto|cat"],
    "digikam": ["auto/animal/cat", "auto/cat"],
}
EXIFTOOL_TAGS = {"subject": "Subject", "hierarchical": "HierarchicalSubject", "digikam": "TagsList"}


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "IMG_1.jpg"
    Image.new("RGB", (16, 16), (200, 120, 40)).save(path, "JPEG")
    return path


@pytest.fixture(params=sorted(REAL_SIDECARS))
def real_sidecar(request: pytest.FixtureRequest, image: Path) -> RealSidecar:
    """An image with another tool's XMP sidecar next to it: (path, style, the user's keywords)."""
    text, style, user = REAL_SIDECARS[request.param]
    xmp_path(image, style).write_text(text, encoding="utf-8")
    return xmp_path(image, style), style, user


@pytest.fixture
def exiftool() -> Exiftool:
    """Debian's exiftool: skipped on a developer's machine without it, a failure under CI."""
    binary = shutil.which("exiftool")
    if binary is None:
        message = "exiftool is missing: apt-get install libimage-exiftool-perl"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)

    def run(path: Path, *args: str) -> dict[str, Any]:
        done = subprocess.run([binary, "-j", *args, str(path)], capture_output=True, check=True, timeout=60)
        record: dict[str, Any] = json.loads(done.stdout)[0]
        record.pop("SourceFile")
        return record

    return run


def exiftool_keywords(exiftool: Exiftool, path: Path) -> Keywords:
    record = exiftool(path, "-XMP-dc:Subject", "-XMP-lr:HierarchicalSubject", "-XMP-digiKam:TagsList")
    found = {key: record.get(tag, []) for key, tag in EXIFTOOL_TAGS.items()}  # one item comes as a scalar
    return {key: [str(v) for v in (value if isinstance(value, list) else [value])] for key, value in found.items()}


def others_by_exiftool(exiftool: Exiftool, path: Path) -> dict[str, Any]:
    record = exiftool(path, "-G1", "-XMP:all")
    return {k: v for k, v in record.items() if k.split(":")[-1] not in OUR_EXIFTOOL_TAGS}


def others_by_parsing(path: Path) -> list[tuple[str, str]]:
    """Every property but the keyword lists, each as its XML, layout aside."""
    root = defusedxml.ElementTree.fromstring(path.read_bytes())
    rdf = root if root.tag == f"{RDF}RDF" else root.find(f"{RDF}RDF")
    assert rdf is not None
    found = [(f"xmpmeta@{k}", v) for k, v in root.attrib.items()] if rdf is not root else []
    for description in rdf.findall(f"{RDF}Description"):
        found += [(name, value) for name, value in description.attrib.items() if name not in OUR_PROPERTIES]
        for prop in description:
            if prop.tag not in OUR_PROPERTIES:
                prop.tail = None
                found.append((prop.tag, tostring(prop, encoding="unicode")))
    return sorted(found)


def with_ours(user: Keywords, ours: Keywords) -> Keywords:
    return {key: user[key] + ours[key] for key in user}


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_sidecar_names_follow_both_conventions(tmp_path: Path) -> None:
    image = tmp_path / "IMG_1.jpg"
    assert xmp_path(image, "append") == tmp_path / "IMG_1.jpg.xmp"
    assert xmp_path(image, "replace") == tmp_path / "IMG_1.xmp"
    with pytest.raises(ValueError, match="append, replace"):
        xmp_path(image, "sideways")


def test_create_from_nothing(image: Path) -> None:
    path = write_xmp(image, CAT)
    assert path == image.with_name("IMG_1.jpg.xmp")
    data = path.read_bytes()
    assert data.startswith('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'.encode())
    assert data.rstrip().endswith(b'<?xpacket end="w"?>')
    for declaration in (
        'xmlns:x="adobe:ns:meta/"',
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"',
        'xmlns:dc="http://purl.org/dc/elements/1.1/"',
        'xmlns:lr="http://ns.adobe.com/lightroom/1.0/"',
        'xmlns:digiKam="http://www.digikam.org/ns/1.0/"',
    ):
        assert declaration.encode() in data
    assert read_keywords(image) == CAT_KEYWORDS
    assert names(image.parent) == ["IMG_1.jpg", "IMG_1.jpg.xmp"]


def test_exiftool_reads_our_keywords(image: Path, exiftool: Exiftool) -> None:
    path = write_xmp(image, ["animal/cat", "cat", "vehicle/car"])
    assert exiftool_keywords(exiftool, path) == {
        "subject": ["cat", "car"],
        "hierarchical": ["auto|animal|cat", "auto|cat", "auto|vehicle|car"],
        "digikam": ["auto/animal/cat", "auto/cat", "auto/vehicle/car"],
    }


def test_merge_keeps_everything_else(real_sidecar: RealSidecar, exiftool: Exiftool) -> None:
    path, style, user = real_sidecar
    image = path.parent / "IMG_1.jpg"
    before_exiftool, before_parsed = others_by_exiftool(exiftool, path), others_by_parsing(path)
    assert exiftool_keywords(exiftool, path) == user
    assert len(before_exiftool) > 3

    assert write_xmp(image, CAT, style=style) == path
    assert others_by_exiftool(exiftool, path) == before_exiftool
    assert others_by_parsing(path) == before_parsed
    assert exiftool_keywords(exiftool, path) == with_ours(user, CAT_KEYWORDS)
    assert read_keywords(image, style) == with_ours(user, CAT_KEYWORDS)
    assert names(path.parent) == sorted(["IMG_1.jpg", path.name])


def test_rerun_replaces_only_our_keywords(real_sidecar: RealSidecar, exiftool: Exiftool) -> None:
    path, style, user = real_sidecar
    image = path.parent / "IMG_1.jpg"
    write_xmp(image, CAT, style=style)
    write_xmp(image, ["vehicle/car"], style=style)
    car = {"subject": ["car"], "hierarchical": ["auto|vehicle|car"], "digikam": ["auto/vehicle/car"]}
    assert read_keywords(image, style) == with_ours(user, car)
    assert exiftool_keywords(exiftool, path) == with_ours(user, car)


def test_twice_in_a_row_gives_the_same_bytes(real_sidecar: RealSidecar) -> None:
    path, style, _ = real_sidecar
    image = path.parent / "IMG_1.jpg"
    write_xmp(image, CAT, style=style)
    first = path.read_bytes()
    write_xmp(image, CAT, style=style)
    assert path.read_bytes() == first


def test_twice_in_a_row_from_nothing_gives_the_same_bytes() -> None:
    first = merge_keywords(None, CAT, "auto/")
    assert merge_keywords(first, CAT, "auto/") == first
    empty = merge_keywords(first, [], "auto/")
    assert merge_keywords(empty, [], "auto/") == empty


def test_no_machine_tags_removes_ours_and_keeps_the_rest(real_sidecar: RealSidecar) -> None:
    path, style, user = real_sidecar
    image = path.parent / "IMG_1.jpg"
    before = others_by_parsing(path)
    write_xmp(image, CAT, style=style)
    write_xmp(image, [], style=style)
    assert read_keywords(image, style) == user
    assert others_by_parsing(path) == before


def test_no_machine_tags_keeps_our_own_file_as_an_empty_packet(image: Path, exiftool: Exiftool) -> None:
    path = write_xmp(image, CAT)
    write_xmp(image, [])
    assert read_keywords(image) == {"subject": [], "hierarchical": [], "digikam": []}
    assert exiftool_keywords(exiftool, path) == {"subject": [], "hierarchical": [], "digikam": []}
    assert path.read_bytes().rstrip().endswith(b'<?xpacket end="w"?>')


def test_a_users_keyword_equal_to_a_machine_leaf_is_kept(image: Path) -> None:
    sidecar = DARKTABLE.replace("<rdf:li>flower</rdf:li>", "<rdf:li>cat</rdf:li>")
    xmp_path(image, "append").write_text(sidecar, encoding="utf-8")
    write_xmp(image, ["animal/cat"])
    assert read_keywords(image)["subject"] == ["cat"]
    write_xmp(image, ["vehicle/car"])
    assert read_keywords(image)["subject"] == ["cat", "car"]
    write_xmp(image, [])
    assert read_keywords(image) == {"subject": ["cat"], "hierarchical": ["nature|flower"], "digikam": []}


def test_without_our_record_the_leaves_of_our_hierarchy_are_ours(image: Path) -> None:
    """Another tool rewrote the sidecar and dropped tagger:MachineKeywords."""
    ours = merge_keywords(DARKTABLE.encode(), CAT, "auto/").decode()
    dropped = re.sub(r"<tagger:MachineKeywords>.*</tagger:MachineKeywords>", "", ours, flags=re.DOTALL)
    assert dropped != ours
    xmp_path(image, "append").write_text(dropped, encoding="utf-8")
    write_xmp(image, ["vehicle/car"])
    assert read_keywords(image) == {
        "subject": ["flower", "car"],
        "hierarchical": ["nature|flower", "auto|vehicle|car"],
        "digikam": ["auto/vehicle/car"],
    }


def test_chinese_keywords_round_trip(image: Path, exiftool: Exiftool) -> None:
    path = write_xmp(image, ["动物/猫", "猫", "意式浓缩咖啡"], style="replace")
    expected = {
        "subject": ["猫", "意式浓缩咖啡"],
        "hierarchical": ["auto|动物|猫", "auto|猫", "auto|意式浓缩咖啡"],
        "digikam": ["auto/动物/猫", "auto/猫", "auto/意式浓缩咖啡"],
    }
    assert path == image.with_name("IMG_1.xmp")
    assert read_keywords(image, "replace") == expected
    assert exiftool_keywords(exiftool, path) == expected
    assert "猫".encode() in path.read_bytes()


def test_xml_special_characters_are_escaped(image: Path, exiftool: Exiftool) -> None:
    tags = ["a<b", "Tom & Jerry", 'say "hi"', "it's > that"]
    path = write_xmp(image, tags)
    data = path.read_bytes()
    assert b"a&lt;b" in data and b"Tom &amp; Jerry" in data and b"<b" not in data
    expected = {"subject": tags, "hierarchical": [f"auto|{t}" for t in tags], "digikam": [f"auto/{t}" for t in tags]}
    assert read_keywords(image) == expected
    assert exiftool_keywords(exiftool, path) == expected


def test_prefix_is_configurable(image: Path) -> None:
    write_xmp(image, ["animal/cat"], prefix="tagger/ml")
    assert read_keywords(image) == {
        "subject": ["cat"],
        "hierarchical": ["tagger|ml|animal|cat"],
        "digikam": ["tagger/ml/animal/cat"],
    }
    with pytest.raises(ValueError, match="prefix"):
        write_xmp(image, ["cat"], prefix="/")


def test_odd_layouts_become_a_normal_packet(image: Path) -> None:
    """A bare rdf:RDF, keywords as an attribute, as plain text, and split over two descriptions."""
    path = xmp_path(image, "append")
    path.write_text(
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" '
        'xmlns:xmp="http://ns.adobe.com/xap/1.0/" dc:subject="sunset" xmp:Label="Green&#10;Blue"/>'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" '
        'xmlns:lr="http://ns.adobe.com/lightroom/1.0/">'
        "<dc:subject><rdf:Bag><rdf:li>sea</rdf:li><rdf:li>sunset</rdf:li></rdf:Bag></dc:subject>"
        "<lr:hierarchicalSubject>places|beach</lr:hierarchicalSubject>"
        "</rdf:Description>"
        "</rdf:RDF>",
        encoding="utf-8",
    )
    write_xmp(image, CAT)
    assert read_keywords(image) == {
        "subject": ["sunset", "sea", "cat"],
        "hierarchical": ["places|beach", "auto|animal|cat", "auto|cat"],
        "digikam": ["auto/animal/cat", "auto/cat"],
    }
    root = defusedxml.ElementTree.fromstring(path.read_bytes())
    assert root.tag == "{adobe:ns:meta/}xmpmeta"
    descriptions = root.findall(f"{RDF}RDF/{RDF}Description")
    assert len(descriptions) == 2 and descriptions[0].get("{http://ns.adobe.com/xap/1.0/}Label") == "Green\nBlue"
    assert len(root.findall(".//{http://purl.org/dc/elements/1.1/}subject")) == 1
    first = path.read_bytes()
    write_xmp(image, CAT)
    assert path.read_bytes() == first


@pytest.mark.parametrize(
    "content",
    [
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">',
        (
            b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
            b'<x:xmpmeta xmlns:x="adobe:ns:meta/">&lol2;</x:xmpmeta>'
        ),
        b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x:xmpmeta xmlns:x="adobe:ns:meta/">&e;</x:xmpmeta>',
        b"<html><body>not XMP</body></html>",
        b"\xff\xd8\xff\xe0 a JPEG saved under the wrong name",
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/">' + b"<a>" * 5_000 + b"</a>" * 5_000 + b"</x:xmpmeta>",
    ],
    ids=["truncated", "entity-expansion", "external-entity", "not-xmp", "binary", "deep"],
)
def test_a_broken_sidecar_is_left_untouched(image: Path, content: bytes) -> None:
    path = xmp_path(image, "append")
    path.write_bytes(content)
    with pytest.raises(XmpError) as caught:
        write_xmp(image, CAT)
    assert isinstance(caught.value, TaggerError)
    assert caught.value.path == path and str(path) in str(caught.value)
    assert path.read_bytes() == content
    assert names(image.parent) == ["IMG_1.jpg", "IMG_1.jpg.xmp"]


def test_reading_a_broken_sidecar_names_it(image: Path) -> None:
    path = xmp_path(image, "replace")
    path.write_bytes(b"<x:xmpmeta")
    with pytest.raises(XmpError, match="IMG_1.xmp: not valid XML"):
        read_keywords(image, "replace")


def test_a_list_we_do_not_understand_is_left_untouched(image: Path) -> None:
    path = xmp_path(image, "append")
    content = DARKTABLE.replace("<rdf:Bag>\n     <rdf:li>flower</rdf:li>\n    </rdf:Bag>", "<rdf:Description/>")
    path.write_text(content, encoding="utf-8")
    with pytest.raises(XmpError, match="dc:subject"):
        write_xmp(image, CAT)
    assert path.read_text(encoding="utf-8") == content


def test_users_own_keywords_are_top_level_and_leave_when_removed_in_tagger(
    real_sidecar: RealSidecar, exiftool: Exiftool
) -> None:
    """Keywords the user added in tagger are theirs, not machine tags: no prefix. Removing one in
    tagger removes it here; the keywords another tool put in the file stay, even a same-named one."""
    path, style, user = real_sidecar
    image = path.parent / "IMG_1.jpg"
    theirs = user["subject"][0]
    write_xmp(image, CAT, style=style, user=["Chelsea", "garden party", theirs])
    found = exiftool_keywords(exiftool, path)
    for key, sep in (("subject", None), ("hierarchical", "|"), ("digikam", "/")):
        assert {"Chelsea", "garden party"} <= set(found[key])
        assert found[key].count(theirs) <= 1
    assert "auto|animal|cat" in found["hierarchical"] and "auto/Chelsea" not in found["digikam"]
    write_xmp(image, CAT, style=style, user=["garden party"])
    found = exiftool_keywords(exiftool, path)
    assert "Chelsea" not in found["subject"] + found["hierarchical"] + found["digikam"]
    assert "garden party" in found["subject"] and theirs in found["subject"]
    write_xmp(image, [], style=style)
    assert exiftool_keywords(exiftool, path) == user
