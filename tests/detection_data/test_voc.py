"""Pascal VOC: a hand-made tree reads back exactly; every malformed annotation is a UserError naming its
file and field; crafted XML (billion laughs, external entities) is refused before it costs memory."""

from __future__ import annotations

import shutil
import tracemalloc

import numpy as np
import pytest
import torch
from detection_fixtures import VOC_IMAGES, make_voc_tree, run_cli, voc_xml

from acp.detection_data import VOC_CLASSES, load_detection_data, load_voc
from acp.detection_data import voc as voc_module
from acp.errors import UserError, one_line


def test_voc_tree_round_trip(tmp_path):
    root, pixels = make_voc_tree(tmp_path)
    data = load_detection_data(str(tmp_path / "VOCdevkit"))  # the devkit folder holds one VOC* tree
    assert data.format == "voc" and data.classes == ("__background__", "cat", "dog") and data.num_classes == 3
    assert [image.image_id for image in data.images] == ["000001", "000002", "000003", "000004"]  # trainval
    assert [image.file for image in data.images] == ["000001.jpg", "000002.png", "000003.jpg", "000004.jpg"]
    first = data.images[0]
    assert (first.width, first.height) == (40, 30)
    # 1-based inclusive VOC indices -> pixel edges: xmin 1..xmax 40 covers the whole 40 px image
    assert first.boxes.dtype == np.float32 and first.boxes.tolist() == [[0, 0, 40, 30], [4, 5, 20, 18]]
    assert first.labels.tolist() == [2, 1] and first.difficult.tolist() == [False, True]
    assert len(data.images[3].labels) == 0 and data.images[3].boxes.shape == (0, 4)
    for index, image in enumerate(data.images):
        assert np.array_equal(data.image(index), pixels[image.image_id])

    image, target = data.sample(0)
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    assert torch.equal(image, torch.from_numpy(pixels["000001"]).permute(2, 0, 1).float() / 255)
    # the difficult cat is left out of the training target
    assert target["boxes"].tolist() == [[0, 0, 40, 30]] and target["labels"].tolist() == [2]
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    _, everything = data.sample(0, with_ignored=True)
    assert everything["labels"].tolist() == [2, 1] and everything["iscrowd"].tolist() == [0, 1]
    uint8, _ = data.sample(1, float_chw=False)
    assert uint8.dtype == torch.uint8 and uint8.shape == (32, 24, 3)


def test_image_sets_and_classes(tmp_path):
    root, _ = make_voc_tree(tmp_path)
    assert [image.image_id for image in load_detection_data(f"{root}#val").images] == ["000002", "000004"]
    listed = r"image set .*nope.txt not found \(image sets there: train, trainval, val\)"
    with pytest.raises(UserError, match=listed):
        load_voc(root, image_set="nope")
    with pytest.raises(UserError, match="must be a plain name"):
        load_voc(root, image_set="../../etc")
    (root / "ImageSets" / "Main" / "bad.txt").write_text("000001\n../../secret\n")
    with pytest.raises(UserError, match=r"bad.txt: line 2: '../../secret' is not an image id"):
        load_voc(root, image_set="bad")
    (root / "ImageSets" / "Main" / "twice.txt").write_text("000001\n000001\n")
    with pytest.raises(UserError, match="line 2: image id 000001 is listed twice"):
        load_voc(root, image_set="twice")
    assert load_voc(root, classes=["dog", "cat"]).images[0].labels.tolist() == [1, 2]  # given order wins
    (root / "classes.txt").write_text("cat\n")
    with pytest.raises(UserError, match=OBJECT_1 + r"/name: unknown class 'dog'.*classes.txt"):
        load_voc(root)
    with pytest.raises(UserError, match="class names must be unique"):
        load_voc(root, classes=["cat", "cat"])
    (root / "classes.txt").write_text("cat\ndog\n")
    shutil.rmtree(root / "ImageSets")
    assert len(load_voc(root)) == 4  # without image sets: every annotation, sorted


def test_voc_classes_by_default(tmp_path):
    root, _ = make_voc_tree(tmp_path)
    (root / "classes.txt").unlink()
    data = load_voc(root)
    assert data.classes == ("__background__", *VOC_CLASSES) and data.num_classes == 21
    assert data.images[0].labels.tolist() == [VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("cat") + 1]


def _rewrite(root, image_id, text):
    (root / "Annotations" / f"{image_id}.xml").write_text(text)


def _voc_with(tmp_path, objects=None, width=40, height=30, file=None, edit=None):
    root, _ = make_voc_tree(tmp_path)
    text = voc_xml("000001", file, width, height, objects if objects is not None else VOC_IMAGES[0][4])
    _rewrite(root, "000001", edit(text) if edit else text)
    return root


def _replace(old, new, count=-1):
    return {"edit": lambda text: text.replace(old, new, count)}


OBJECT_1 = r"000001.xml: annotation/object\[1\]"
BAD_ANNOTATIONS = {
    "box outside its image": (
        {"objects": [("dog", 0, 1, 1, 45, 30)]},
        OBJECT_1 + r"/bndbox \(xmin=1 ymin=1 xmax=45 ymax=30\): .* outside its 40x30 image",
    ),
    "x2 <= x1": ({"objects": [("dog", 0, 20, 1, 10, 30)]}, OBJECT_1 + r"/bndbox .*empty box \(x2 <= x1"),
    "y2 <= y1": ({"objects": [("dog", 0, 1, 20, 10, 12)]}, OBJECT_1 + r"/bndbox .*empty box \(y2 <= y1"),
    "unknown class": (
        {"objects": [("dog", 0, 1, 1, 5, 5), ("zebra", 0, 1, 1, 5, 5)]},
        r"object\[2\]/name: unknown class 'zebra'",
    ),
    "malformed number": (
        _replace("<xmin>5</xmin>", "<xmin>5O</xmin>"),
        r"object\[2\]/bndbox/xmin: malformed number '5O'",
    ),
    "not finite": (
        _replace("<xmin>5</xmin>", "<xmin>nan</xmin>"),
        r"\[2\]/bndbox/xmin: malformed number 'nan'",
    ),
    "missing bndbox": (_replace("bndbox>", "box>", 2), OBJECT_1 + ": missing <bndbox> element"),
    "missing xmax": (_replace("<xmax>40</xmax>", ""), OBJECT_1 + "/bndbox: missing <xmax> element"),
    "empty name": (_replace("<name>dog</name>", "<name> </name>"), OBJECT_1 + "/name: empty element"),
    "missing size": (_replace("size>", "dims>"), "000001.xml: annotation: missing <size> element"),
    "size not a number": (
        _replace("<width>40</width>", "<width>forty</width>"),
        "annotation/size/width: expected a positive whole number of pixels, got 'forty'",
    ),
    "size in superscript digits": (
        _replace("<height>30</height>", "<height>³</height>"),
        "annotation/size/height: expected a positive whole number of pixels, got '³'",
    ),
    "size disagrees with the image": (
        {"width": 50},
        "000001.xml: annotation/size: says the image is 50x30, but .*000001.jpg is 40x30",
    ),
    "difficult not 0/1": (
        _replace("<difficult>1</difficult>", "<difficult>yes</difficult>"),
        r"object\[2\]/difficult: expected 0 or 1, got 'yes'",
    ),
    "file name escaping the folder": (
        {"file": "../../x.png"},
        "annotation/filename: file name '../../x.png' must be a plain file name",
    ),
    "wrong root element": (
        _replace("annotation>", "notes>"),
        "root element is <notes>, expected <annotation>",
    ),
    "not well-formed": (_replace("</annotation>", ""), "annotation file .*000001.xml is not well-formed XML"),
}


@pytest.mark.parametrize("case", list(BAD_ANNOTATIONS))
def test_bad_annotation_names_file_and_field(tmp_path, case, monkeypatch, capsys):
    change, message = BAD_ANNOTATIONS[case]
    root = _voc_with(tmp_path, **change)
    with pytest.raises(UserError, match=message):
        load_voc(root)
    code, stderr = run_cli(str(root), monkeypatch, capsys)
    assert code == 2 and stderr.count("\n") == 1 and stderr.startswith("acp: error: ")
    assert "Traceback" not in stderr


def test_missing_image_and_annotation(tmp_path):
    root, _ = make_voc_tree(tmp_path)
    (root / "JPEGImages" / "000003.jpg").unlink()
    with pytest.raises(UserError, match=r"000003.xml: annotation/size: image .*/000003.jpg not found"):
        load_voc(root)
    (root / "Annotations" / "000002.xml").unlink()
    with pytest.raises(UserError, match=r"annotation file .*Annotations/000002.xml not found"):
        load_voc(root)


def test_box_just_outside_is_clipped_further_is_an_error(tmp_path):
    # xmin=0 (pixel edge -1, a common off-by-one of VOC-format exporters) is clipped; 2 px out is refused
    root = _voc_with(tmp_path, objects=[("dog", 0, 0, 1, 41, 30)])
    assert load_voc(root).images[0].boxes.tolist() == [[0, 0, 40, 30]]
    root = _voc_with(tmp_path / "again", objects=[("dog", 0, 1, 1, 42, 30)])
    with pytest.raises(UserError, match="outside its 40x30 image"):
        load_voc(root)


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE annotation [
  <!ENTITY lol "lollollollollollollollollollol">
  <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
  <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
  <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
  <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
  <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
  <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<annotation><size><width>40</width><height>30</height></size>
  <object><name>&lol9;</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object>
</annotation>
"""  # 10**9 "lol"s = 3 GB once expanded

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE annotation [<!ENTITY secret SYSTEM "file://{secret}">]>
<annotation><size><width>40</width><height>30</height></size>
  <object><name>&secret;</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object>
</annotation>
"""


@pytest.mark.parametrize("attack", ["billion laughs", "external entity", "external DTD"])
def test_crafted_xml_is_refused_before_it_costs_memory(tmp_path, attack, monkeypatch, capsys):
    root, _ = make_voc_tree(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-MARKER")
    text = {
        "billion laughs": BILLION_LAUGHS,
        "external entity": EXTERNAL_ENTITY.format(secret=secret),
        "external DTD": f'<?xml version="1.0"?>\n<!DOCTYPE annotation SYSTEM "file://{secret}">\n<annotation/>\n',
    }[attack]
    _rewrite(root, "000002", text)
    tracemalloc.start()
    try:
        with pytest.raises(UserError) as raised:
            voc_module.parse_xml(root / "Annotations" / "000002.xml")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(raised.value)
    assert "Annotations/000002.xml is refused: it declares a DTD" in message and one_line(message) == message
    assert "TOP-SECRET-MARKER" not in message
    assert peak < 2**20, f"refusing the file allocated {peak} bytes"  # expanded, it would be ~3 GB

    code, stderr = run_cli(str(root), monkeypatch, capsys)
    assert code == 2 and stderr.count("\n") == 1 and "000002.xml is refused" in stderr
    assert "Traceback" not in stderr and "TOP-SECRET-MARKER" not in stderr


def test_oversized_annotation_is_refused_unread(tmp_path, monkeypatch):
    root, _ = make_voc_tree(tmp_path)
    monkeypatch.setattr(voc_module, "MAX_XML_BYTES", 64)
    with pytest.raises(UserError, match=r"000001.xml is \d+ bytes, more than the 64 an annotation may be"):
        load_voc(root)


def test_unknown_layout_and_bad_specs(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match="neither a VOC tree .* nor COCO"):
        load_detection_data(str(tmp_path / "plain"))
    with pytest.raises(UserError, match="data path not found"):
        load_detection_data(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="selects a VOC image set"):
        load_detection_data(f"{tmp_path / 'plain'}#val")
