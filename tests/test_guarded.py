"""guarded.py: hostile JSON/YAML is refused fast, with one line naming the file."""
from __future__ import annotations

import time

import pytest

from cvat_tools.errors import InputError
from cvat_tools.guarded import load_json, load_yaml

# 424 bytes that expand to 9^9 strings under a plain safe_load ("billion laughs").
ALIAS_BOMB = "a: &a [" + ",".join(['"lol"'] * 9) + "]\n" + "".join(
    f"{c}: &{c} [" + ",".join([f"*{p}"] * 9) + "]\n" for p, c in zip("abcdefgh", "bcdefghi"))


def _refused(fn, src, what):
    t0 = time.monotonic()
    with pytest.raises(InputError) as exc:
        fn(src, what)
    assert time.monotonic() - t0 < 5
    msg = str(exc.value)
    assert msg.startswith(what) and "\n" not in msg and len(msg) < 400
    return msg


def test_yaml_alias_bomb_refused():
    assert "aliases" in _refused(load_yaml, ALIAS_BOMB, "data.yaml")


@pytest.mark.parametrize("src", ["[" * 100_000 + "]" * 100_000, "a:\n" + "".join("  " * i + "- \n" for i in range(200))])
def test_yaml_deep_nesting_refused(src):
    assert "deep" in _refused(load_yaml, src, "labels.yaml")


@pytest.mark.parametrize("src", ["[" * 100_000 + "]" * 100_000, "[" * 100 + "]" * 100])
def test_json_deep_nesting_refused(src):
    assert "deep" in _refused(load_json, src, "manifest.json")


def test_size_cap_checked_before_parsing(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("x: " + "a" * 5_000_000)
    assert "limit" in _refused(load_yaml, big, str(big))


def test_bad_text_and_syntax_refused():
    assert "UTF-8" in _refused(load_json, b"\xff\xfe{}", "x.json")
    assert "not valid JSON" in _refused(load_json, "{bad", "x.json")
    assert "not valid YAML" in _refused(load_yaml, "a: [1, 2", "x.yaml")


def test_ordinary_documents_load(tmp_path):
    p = tmp_path / "data.yaml"
    p.write_text("names:\n  0: wbc\n  1: rbc\nnc: 2\n")
    assert load_yaml(p) == {"names": {0: "wbc", 1: "rbc"}, "nc": 2}
    assert load_json('{"a": [1, {"b": null}]}') == {"a": [1, {"b": None}]}
    assert load_json(b'\xef\xbb\xbf{"bom": true}') == {"bom": True}
