"""Model bundles: one folder = weights + manifest, shared by every model of the project.

    BUNDLE/manifest.json   kind, architecture, labels, input size, normalization,
                           training data, metrics, version, weights sha256
    BUNDLE/weights.pt      a torch state dict (floating tensors stored fp16 by default)

Loading checks the manifest's shape and bounds, the checksum, the kind, the binding of the
label list to the weights (``weights.labels_sha256``) and (when asked) the label set, so a
wrong, edited or corrupted file is refused with a one-line message instead of giving silent
nonsense (or allocating what a hostile ``input_size`` asks for).

A segmenter "bundle" may also record the classical watershed segmenter explicitly
(``architecture.name == "classical"``, no weights): a weights folder then says which
segmenter it means instead of falling back to one silently.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__
from .atomic import atomic_dir
from .errors import BundleError, InputError
from .guarded import load_json
from .markers import BUNDLE_FORMAT, BUNDLE_MANIFEST, BUNDLE_WEIGHTS, sha256_file

FORMAT = BUNDLE_FORMAT
FORMAT_VERSION = 1
WEIGHTS = BUNDLE_WEIGHTS
MANIFEST = BUNDLE_MANIFEST
KINDS = ("segmenter", "classifier", "refiner")
CROP_KINDS = ("classifier", "refiner")  # models of cell crops: their manifest says the crop size
CLASSICAL = "classical"  # architecture name of the weight-less classical segmenter
MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # the shipped classifier's (with its split) is ~0.8 MB
MAX_LABELS = 1000
# Bounds of the sizes a manifest sets: each allocates tensors of its square.
INPUT_SIZE_RANGE = (16, 1024)
LONG_SIDE_RANGE = (32, 4096)


@dataclass
class Bundle:
    path: Path
    manifest: dict[str, Any]
    state_dict: dict[str, Any] = field(repr=False)

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def architecture(self) -> dict[str, Any]:
        return dict(self.manifest.get("architecture", {}))


def labels_binding(kind: str, labels: list[str], weights_sha256: str) -> str:
    """sha256 binding the label list (order included) and kind to the weights' checksum:
    a permuted or edited label list no longer matches the weights it was trained with."""
    text = json.dumps({"kind": kind, "labels": list(labels), "weights_sha256": weights_sha256},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def save_bundle(
    path: str | Path,
    kind: str,
    state_dict: dict[str, Any],
    labels: list[str],
    architecture: dict[str, Any],
    half: bool = True,
    **manifest: Any,
) -> Path:
    """Write a bundle atomically. Extra keyword fields (input_size, normalization, training,
    metrics, ...) go into the manifest as they are (they must be JSON-serializable)."""
    import torch

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    tensors = {}
    for key, value in state_dict.items():
        if half and torch.is_tensor(value) and value.is_floating_point():
            value = value.detach().to(torch.float16)
        tensors[key] = value.detach().cpu() if torch.is_tensor(value) else value
    path = Path(path)
    # refuses (before writing) a folder that is not an earlier bundle of this kind
    with atomic_dir(path, command=f"train {kind}") as tmp:
        buffer = io.BytesIO()
        torch.save(tensors, buffer)
        (tmp / WEIGHTS).write_bytes(buffer.getvalue())
        sha = sha256_file(tmp / WEIGHTS)
        body = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "labels": list(labels),
            "architecture": architecture,
            "weights": {
                "file": WEIGHTS,
                "sha256": sha,
                "labels_sha256": labels_binding(kind, list(labels), sha),
                "dtype": "float16" if half else "float32",
            },
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "cvat_tools_version": __version__,
            **manifest,
        }
        (tmp / MANIFEST).write_text(json.dumps(body, indent=2, sort_keys=False) + "\n")
    return path


def save_classical_segmenter(path: str | Path) -> Path:
    """A weight-less segmenter bundle naming the classical watershed segmenter explicitly."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        body = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": "segmenter",
                "labels": ["wbc"], "architecture": {"name": CLASSICAL},
                "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "cvat_tools_version": __version__}
        (tmp / MANIFEST).write_text(json.dumps(body, indent=2) + "\n")
    return path


def is_classical(manifest: dict[str, Any]) -> bool:
    arch = manifest.get("architecture")
    return (manifest.get("kind") == "segmenter" and isinstance(arch, dict)
            and arch.get("name") == CLASSICAL)


def _int_in(value: Any, bounds: tuple[int, int]) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and bounds[0] <= value <= bounds[1]


def check_manifest(manifest: Any, where: str) -> dict[str, Any]:
    """``manifest`` if its fields have the types and bounds loading relies on, else BundleError."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{where}: not a cvat-tools bundle manifest")
    version = manifest.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleError(f"{where}: format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{where}: bundle format {version} is newer than this cvat-tools ({FORMAT_VERSION}); "
            "upgrade cvat-tools"
        )
    kind = manifest.get("kind")
    if kind not in KINDS:
        raise BundleError(f"{where}: kind must be one of {', '.join(KINDS)}, got {str(kind)[:40]!r}")
    labels = manifest.get("labels")
    if (not isinstance(labels, list) or not labels or len(labels) > MAX_LABELS
            or not all(isinstance(lab, str) and lab.strip() for lab in labels)):
        raise BundleError(f"{where}: labels must be a non-empty list of names "
                          f"(at most {MAX_LABELS})")
    if len(set(labels)) != len(labels):
        raise BundleError(f"{where}: labels repeat a name")
    arch = manifest.get("architecture", {})
    if not isinstance(arch, dict):
        raise BundleError(f"{where}: architecture must be an object")
    if "input_size" in manifest and not _int_in(manifest["input_size"], INPUT_SIZE_RANGE):
        raise BundleError(f"{where}: input_size must be an integer in {list(INPUT_SIZE_RANGE)}, "
                          f"got {str(manifest['input_size'])[:40]}")
    if kind in CROP_KINDS and "input_size" not in manifest:
        raise BundleError(f"{where}: a {kind} bundle must record input_size (the crop size it was "
                          "trained at); retrain it, or add the size it was trained with")
    if "long_side" in arch and not _int_in(arch["long_side"], LONG_SIDE_RANGE):
        raise BundleError(f"{where}: architecture.long_side must be an integer in "
                          f"{list(LONG_SIDE_RANGE)}, got {str(arch['long_side'])[:40]}")
    if is_classical(manifest):
        return manifest
    weights = manifest.get("weights")
    if not isinstance(weights, dict) or not isinstance(weights.get("sha256"), str):
        raise BundleError(f"{where}: weights.sha256 missing; the manifest cannot vouch for its weights")
    name = weights.get("file", WEIGHTS)
    if not isinstance(name, str) or not name or name != Path(name).name or name in (".", ".."):
        raise BundleError(f"{where}: weights.file must be a file name inside the bundle, "
                          f"got {str(name)[:60]!r}")
    binding = weights.get("labels_sha256")
    if binding is not None and binding != labels_binding(kind, labels, weights["sha256"]):
        raise BundleError(
            f"{where}: labels {labels[:4]}{'...' if len(labels) > 4 else ''} are not the labels "
            "these weights were saved with (reordered or edited?); restore the manifest or retrain"
        )
    return manifest


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(
            f"{path}: not a model bundle (no {MANIFEST}); pass a folder written by "
            "'cvat-tools train ...'"
        )
    try:
        manifest = load_json(manifest_path, str(manifest_path), max_bytes=MAX_MANIFEST_BYTES)
    except InputError as exc:
        raise BundleError(f"unreadable manifest: {exc}") from None
    return check_manifest(manifest, str(manifest_path))


def load_bundle(
    path: str | Path,
    kind: str | None = None,
    labels: list[str] | tuple[str, ...] | None = None,
) -> Bundle:
    """Load and verify a bundle; floating tensors come back as float32."""
    import torch

    path = Path(path)
    manifest = read_manifest(path)
    if kind is not None and manifest.get("kind") != kind:
        raise BundleError(
            f"{path}: is a {manifest.get('kind')} bundle, but a {kind} bundle is needed here"
        )
    if is_classical(manifest):
        raise BundleError(f"{path}: records the classical segmenter, which has no weights; "
                          "load it with Pipeline.load / --segmenter classical")
    if labels is not None and list(manifest.get("labels", [])) != list(labels):
        raise BundleError(
            f"{path}: label set {manifest.get('labels')} does not match the expected "
            f"{list(labels)}; retrain or pass a bundle made for this label set"
        )
    weights = manifest.get("weights", {})
    weights_path = path / weights.get("file", WEIGHTS)
    if not weights_path.is_file():
        raise BundleError(f"{weights_path}: weights file missing from the bundle")
    actual = sha256_file(weights_path)
    if actual != weights.get("sha256"):
        raise BundleError(
            f"{weights_path}: checksum mismatch (manifest {weights.get('sha256', '?')[:12]}..., "
            f"file {actual[:12]}...); the file is corrupt or was changed: re-download or retrain"
        )
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad pickle
        raise BundleError(f"{weights_path}: cannot load weights ({str(exc)[:200]})") from None
    if not isinstance(state, dict):
        raise BundleError(f"{weights_path}: not a state dict (got {type(state).__name__})")
    state = {
        k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in state.items()
    }
    return Bundle(path=path, manifest=manifest, state_dict=state)


def load_weights_into(model: Any, bundle: Bundle) -> Any:
    """``model.load_state_dict(bundle.state_dict)``, refusing weights of another shape with one
    line naming the first misfit (a head with another number of classes than the labels)."""
    expected = model.state_dict()
    given = bundle.state_dict
    for key, tensor in expected.items():
        if key in given and hasattr(given[key], "shape") and tuple(given[key].shape) != tuple(tensor.shape):
            hint = f" for {len(bundle.labels)} labels" if tensor.ndim and tensor.shape[0] == len(bundle.labels) else ""
            raise BundleError(
                f"{bundle.path}: weights do not fit {bundle.architecture}: {key} is "
                f"{list(given[key].shape)} in the weights, {list(tensor.shape)} expected{hint}"
            )
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    if missing or unexpected:
        raise BundleError(
            f"{bundle.path}: weights do not fit {bundle.architecture}: "
            f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:2]})"
        )
    try:
        model.load_state_dict(given)
    except RuntimeError as exc:
        raise BundleError(f"{bundle.path}: weights do not fit {bundle.architecture} "
                          f"({' '.join(str(exc).split())[:200]})") from None
    return model


# Bundles that ship with the package (see cvat_tools/weights/MODEL_CARD.md).
SHIPPED = Path(__file__).resolve().parent / "weights"


def shipped_bundle(kind: str) -> Path | None:
    """Path of the shipped bundle of ``kind`` (segmenter, classifier, refiner), or None."""
    path = SHIPPED / kind
    return path if (path / MANIFEST).is_file() else None
