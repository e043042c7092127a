import pytest
import torch

from cvat_tools import bundle
from cvat_tools.errors import BundleError


def _save(path, labels=("a", "b")):
    state = {"w": torch.randn(3, 4), "n": torch.tensor(3)}
    bundle.save_bundle(path, "classifier", state, list(labels), {"name": "toy"}, input_size=64)
    return state


def test_round_trip_fp16(tmp_path):
    state = _save(tmp_path / "b")
    loaded = bundle.load_bundle(tmp_path / "b", kind="classifier", labels=["a", "b"])
    assert loaded.manifest["input_size"] == 64
    assert loaded.state_dict["w"].dtype == torch.float32
    assert torch.allclose(loaded.state_dict["w"], state["w"], atol=1e-2)
    assert loaded.state_dict["n"].item() == 3


def test_wrong_checksum_refused(tmp_path):
    _save(tmp_path / "b")
    weights = tmp_path / "b" / bundle.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum"):
        bundle.load_bundle(tmp_path / "b")


def test_wrong_labels_and_kind_refused(tmp_path):
    _save(tmp_path / "b")
    with pytest.raises(BundleError, match="label set"):
        bundle.load_bundle(tmp_path / "b", labels=["a", "c"])
    with pytest.raises(BundleError, match="segmenter"):
        bundle.load_bundle(tmp_path / "b", kind="segmenter")


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a model bundle"):
        bundle.load_bundle(tmp_path)


def test_shipped_bundles_verify(shipped_paths):
    assert set(bundle.KINDS) <= set(shipped_paths), bundle.KINDS  # every kind ships
    for kind in bundle.KINDS:
        path = shipped_paths[kind]
        manifest = bundle.read_manifest(path)
        assert manifest["kind"] == kind
        assert (path / bundle.WEIGHTS).stat().st_size < 40_000_000
        bundle.load_bundle(path, kind=kind)
