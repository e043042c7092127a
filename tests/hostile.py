"""A small generated corpus of hostile inputs for the formats layer (issue 19).

Each builder writes its input into ``root`` and returns the command-line arguments of
``cvat-tools export`` (without ``--out``) that feed it to the tool. Inputs are generated, not
stored: a few hundred bytes to a few MB, each reproducing one measured defect.
"""
from __future__ import annotations

import functools
import io
import json
import struct
import zlib
from pathlib import Path

from PIL import Image


def tiny_png(path: Path, width: int = 8, height: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (200, 120, 160)).save(path)
    return path


def header_only_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` (1-bit gray) with no pixel data:
    enough for anything that reads only the header, a few dozen bytes on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def _images(root: Path) -> Path:
    tiny_png(root / "images" / "a.png")
    return root / "images"


def _xml(root: Path, body: str, width: int = 8, height: int = 8) -> Path:
    path = root / "annotations.xml"
    path.write_text(f'<?xml version="1.0"?><annotations><image id="0" name="a.png" width="{width}" '
                    f'height="{height}">{body}</image></annotations>')
    return path


def coco_doc(images: list[dict], annotations: list[dict]) -> dict:
    return {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "neutrophil"}]}


def _coco(root: Path, doc: dict | str) -> Path:
    path = root / "instances_default.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def _alias_bomb(levels: int = 9) -> str:
    """The YAML "billion laughs": a few hundred bytes that expand to 10**levels strings."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for k in range(1, levels):
        prev, cur = chr(ord("a") + k - 1), chr(ord("a") + k)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    lines.append(f"names: *{chr(ord('a') + levels - 1)}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# one builder per defect: (root) -> export arguments


def yolo_alias_bomb(root: Path) -> list:
    (root / "yolo" / "labels" / "train").mkdir(parents=True)
    (root / "yolo" / "data.yaml").write_text(_alias_bomb())
    return [root / "yolo" / "data.yaml", "--images", _images(root)]


def label_map_alias_bomb(root: Path) -> list:
    (root / "map.yaml").write_text(_alias_bomb())
    xml = _xml(root, '<polygon label="neutrophil" points="1,1;6,1;6,6"/>')
    return [xml, "--images", _images(root), "--label-map", root / "map.yaml"]


def xml_mask_30000(root: Path) -> list:
    """245 bytes of XML declaring a 30000 x 30000 mask (took 1.8 GB)."""
    return [_xml(root, '<mask label="neutrophil" rle="900000000" left="0" top="0" '
                       'width="30000" height="30000"/>'), "--images", _images(root)]


def xml_mask_100000(root: Path) -> list:
    """The same at 100000 x 100000, on an image that claims that size too (was a traceback)."""
    return [_xml(root, '<mask label="neutrophil" rle="10000000000" left="0" top="0" '
                       'width="100000" height="100000"/>', 100000, 100000), "--images", _images(root)]


def xml_rle_over_int64(root: Path) -> list:
    """An rle value over 2**63 (was OverflowError)."""
    return [_xml(root, f'<mask label="neutrophil" rle="{2**64}, 4" left="0" top="0" width="2" height="2"/>'),
            "--images", _images(root)]


def coco_rle_quadratic(root: Path) -> list:
    """640 KB of continuation characters in a COCO RLE ``counts`` (33 s, then OverflowError)."""
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 8, 8],
           "segmentation": {"size": [8, 8], "counts": "o" * (640 * 1024) + "0"}}
    doc = coco_doc([{"id": 1, "file_name": "a.png", "width": 8, "height": 8}], [ann])
    return [_coco(root, doc), "--images", _images(root)]


def coco_rle_many_masks(root: Path) -> list:
    """2000 full-image masks of a 64 MP image in 60 KB: decoded whole they would need 128 GB."""
    full = {"size": [8000, 8000], "counts": [0, 64_000_000]}
    anns = [{"id": i, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "segmentation": full}
            for i in range(1, 2001)]
    doc = coco_doc([{"id": 1, "file_name": "a.png", "width": 8000, "height": 8000}], anns)
    return [_coco(root, doc), "--images", _images(root)]


@functools.lru_cache(maxsize=None)
def _star_coco(n: int) -> str:
    import numpy as np

    t = 2 * np.pi * np.arange(n) / n
    r = 3 + (np.arange(n) % 2)  # a star: no self-intersection, but shapely-expensive
    ring = np.round(np.stack([4 + r * np.cos(t), 4 + r * np.sin(t)], axis=1), 4).ravel().tolist()
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 8, 8], "segmentation": [ring]}
    return json.dumps(coco_doc([{"id": 1, "file_name": "a.png", "width": 8, "height": 8}], [ann]))


def polygon_500k(root: Path) -> list:
    """One polygon of 500 000 vertices (shapely's validity check never finished)."""
    return [_coco(root, _star_coco(500_000)), "--images", _images(root)]


def coco_many_shapes(root: Path) -> list:
    """One annotation of 10 001 tiny polygons: each would cost a full-image mask in export."""
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 8, 8],
           "segmentation": [[1, 1, 6, 1, 6, 6]] * 10_001}
    doc = coco_doc([{"id": 1, "file_name": "a.png", "width": 8, "height": 8}], [ann])
    return [_coco(root, doc), "--images", _images(root)]


def deep_json(root: Path) -> list:
    """COCO JSON nested 100 000 levels deep (RecursionError)."""
    return [_coco(root, '{"images": [], "x": ' + "[" * 100_000 + "]" * 100_000 + "}"),
            "--images", _images(root)]


def _zeros_zip(count: int, member_bytes: int) -> bytes:
    """A zip of ``count`` deflated members of zeros plus an empty annotations.xml, written by
    hand so that the zeros are compressed once, not ``count`` times (zipfile takes seconds)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = packer.compress(bytes(member_bytes)) + packer.flush()
    crc = zlib.crc32(bytes(member_bytes))
    members = [(f"images/x{k}.png".encode(), crc, member_bytes, zeros) for k in range(count)]
    xml = b"<annotations></annotations>"
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    members.append((b"annotations.xml", zlib.crc32(xml), len(xml), packer.compress(xml) + packer.flush()))
    local, central = io.BytesIO(), io.BytesIO()
    for name, crc, size, data in members:
        offset = local.tell()
        fields = (20, 0, 8, 0, 0x21, crc, len(data), size, len(name), 0)
        local.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, *fields) + name + data)
        central.write(struct.pack("<IH", 0x02014B50, 20) + struct.pack("<HHHHHIIIHH", *fields)
                      + struct.pack("<HHHII", 0, 0, 0, 0, offset) + name)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members),
                      central.tell(), local.tell(), 0)
    return local.getvalue() + central.getvalue() + end


def zip_300_members(root: Path) -> list:
    """300 x 1 MiB of zeros in a ~0.3 MB zip (accepted: only the 4 GB total was capped)."""
    (root / "task.zip").write_bytes(_zeros_zip(300, 1 << 20))
    return [root / "task.zip"]


def zip_many_small_members(root: Path) -> list:
    """2000 x 48 KiB of zeros: every member under the per-member ratio floor, 96 MB in all."""
    (root / "task.zip").write_bytes(_zeros_zip(2000, 48 * 1024))
    return [root / "task.zip"]


def image_over_179mp(root: Path) -> list:
    """An image whose header says 15000 x 12000 (180 MP): Pillow raised DecompressionBombError."""
    (root / "images").mkdir()
    header_only_png(root / "images" / "a.png", 15000, 12000)
    return [_xml(root, '<polygon label="neutrophil" points="1,1;6,1;6,6"/>'), "--images", root / "images"]


def image_over_64mp(root: Path) -> list:
    """9000 x 8000 = 72 MP: over our 64 MP limit, under Pillow's 89 MP warning."""
    (root / "images").mkdir()
    header_only_png(root / "images" / "a.png", 9000, 8000)
    return [_xml(root, '<polygon label="neutrophil" points="1,1;6,1;6,6"/>'), "--images", root / "images"]


def image_over_89mp(root: Path) -> list:
    """10000 x 10000 = 100 MP: Pillow's 89 MP message used to appear instead of ours."""
    (root / "images").mkdir()
    header_only_png(root / "images" / "a.png", 10000, 10000)
    return [_xml(root, '<polygon label="neutrophil" points="1,1;6,1;6,6"/>'), "--images", root / "images"]


def nul_in_image_name(root: Path) -> list:
    doc = coco_doc([{"id": 1, "file_name": "a\x00.png", "width": 8, "height": 8}], [])
    return [_coco(root, doc), "--images", _images(root)]


def datumaro_doc(annotations: list[dict], size=(8, 8), labels=("neutrophil",)) -> dict:
    """A Datumaro 1.0 document (CVAT's layout) with one 8x8 image ``a.png``."""
    return {"info": {}, "categories": {"label": {"labels": [{"name": n, "parent": "", "attributes": []}
                                                            for n in labels], "attributes": ["occluded"]}},
            "items": [{"id": "a", "attr": {"frame": 0}, "image": {"path": "a.png", "size": list(size)},
                       "annotations": annotations}]}


def _datumaro(root: Path, doc: dict | str) -> Path:
    path = root / "export" / "annotations" / "default.json"
    path.parent.mkdir(parents=True)
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def _dm_mask(counts, size=(8, 8)) -> dict:
    return {"id": 0, "type": "mask", "label_id": 0, "group": 0, "z_order": 0, "attributes": {},
            "rle": {"counts": counts, "size": list(size)}}


def datumaro_rle_quadratic(root: Path) -> list:
    """640 KB of continuation characters in a Datumaro mask's COCO RLE."""
    return [_datumaro(root, datumaro_doc([_dm_mask("o" * (640 * 1024) + "0")])), "--images", _images(root)]


def datumaro_rle_many_masks(root: Path) -> list:
    """2000 full-image masks of a 64 MP image: 128 GB if decoded whole."""
    doc = datumaro_doc([_dm_mask([0, 64_000_000], (8000, 8000))] * 2000, size=(8000, 8000))
    return [_datumaro(root, doc), "--images", _images(root)]


def datumaro_rle_past_its_size(root: Path) -> list:
    """Runs that add up to more pixels than the mask has (a decoder that trusts them overruns)."""
    return [_datumaro(root, datumaro_doc([_dm_mask([0, 10**12])])), "--images", _images(root)]


def datumaro_label_id_text(root: Path) -> list:
    """label_id as text: a wrong type must be one line naming the field, not a TypeError."""
    ann = {"id": 0, "type": "polygon", "label_id": "0", "points": [1, 1, 6, 1, 6, 6], "attributes": {}}
    return [_datumaro(root, datumaro_doc([ann])), "--images", _images(root)]


def datumaro_no_image_size(root: Path) -> list:
    doc = datumaro_doc([])
    del doc["items"][0]["image"]["size"]
    return [_datumaro(root, doc), "--images", _images(root)]


# name -> (builder, text the one-line error must contain)
REFUSED = {
    "yolo_alias_bomb": (yolo_alias_bomb, "alias"),
    "label_map_alias_bomb": (label_map_alias_bomb, "alias"),
    "xml_mask_30000": (xml_mask_30000, "larger than its 8x8 image"),
    "xml_mask_100000": (xml_mask_100000, "64 MP limit"),
    "xml_rle_over_int64": (xml_rle_over_int64, "bad mask rle"),
    "coco_rle_quadratic": (coco_rle_quadratic, "bad RLE segmentation"),
    "coco_rle_many_masks": (coco_rle_many_masks, "million pixels"),
    "coco_many_shapes": (coco_many_shapes, "over the 10000 limit"),
    "deep_json": (deep_json, "nested too deeply"),
    "zip_300_members": (zip_300_members, "zip bomb"),
    "zip_many_small_members": (zip_many_small_members, "zip bomb"),
    "image_over_179mp": (image_over_179mp, "64 MP limit"),
    "image_over_64mp": (image_over_64mp, "64 MP limit"),
    "image_over_89mp": (image_over_89mp, "64 MP limit"),
    "nul_in_image_name": (nul_in_image_name, "control characters"),
    "datumaro_rle_quadratic": (datumaro_rle_quadratic, "bad mask RLE"),
    "datumaro_rle_many_masks": (datumaro_rle_many_masks, "million pixels"),
    "datumaro_rle_past_its_size": (datumaro_rle_past_its_size, "bad mask RLE"),
    "datumaro_label_id_text": (datumaro_label_id_text, "label_id must be a whole number"),
    "datumaro_no_image_size": (datumaro_no_image_size, "no image size"),
}


def _measure(case: str) -> None:
    """Child: build one case, run export on it, print exit code, seconds and extra peak RSS."""
    import contextlib
    import resource
    import tempfile
    import time

    from cvat_tools.cli import main
    import cvat_tools.commands.export  # noqa: F401 - imports are not the input's cost
    import cv2, shapely.validation, tqdm  # noqa: F401,E401

    with tempfile.TemporaryDirectory() as tmp:
        args = [str(a) for a in (REFUSED.get(case) or (polygon_500k,))[0](Path(tmp))]
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start, code = time.monotonic(), 0
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                main(["export", *args, "--out", str(Path(tmp) / "out")])
            except SystemExit as exc:
                code = exc.code
        seconds = time.monotonic() - start
        extra = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    line = err.getvalue().strip().splitlines()
    print(f"{case:24s} exit {code}  {seconds:5.2f} s  +{extra:6.0f} MB  {line[0][:90] if line else ''}")


if __name__ == "__main__":
    # python3 tests/hostile.py: every case in a fresh process (time and peak memory of export)
    import os
    import subprocess
    import sys

    if len(sys.argv) > 1:
        _measure(sys.argv[1])
    else:
        here = Path(__file__).resolve().parent
        env = dict(os.environ, PYTHONPATH=f"{here.parent}{os.pathsep}{here}")
        for case in [*sorted(REFUSED), "polygon_500k"]:
            subprocess.run([sys.executable, __file__, case], env=env, check=False)


# -- XML with entities: what defusedxml must refuse -----------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<annotations><image id="0" name="&lol4;" width="1" height="1"/></annotations>
"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE annotations [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<annotations><image id="0" name="&xxe;" width="1" height="1"/></annotations>
"""
