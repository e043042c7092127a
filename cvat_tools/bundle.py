"""Model bundles: one folder = weights + manifest, shared by every model of the project.

    BUNDLE/manifest.json   kind, architecture, labels, input size, normalization,
                           training data, metrics, version, weights sha256
    BUNDLE/weights.pt      a torch state dict (floating tensors stored fp16 by default)

Loading checks the checksum, the kind and (when asked) the label set, so a wrong or
corrupted file is refused with a message instead of giving silent nonsense.
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
from .errors import BundleError

FORMAT = "cvat-tools-bundle"
FORMAT_VERSION = 1
WEIGHTS = "weights.pt"
MANIFEST = "manifest.json"
KINDS = ("segmenter", "classifier", "refiner")


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
        body = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "labels": list(labels),
            "architecture": architecture,
            "weights": {
                "file": WEIGHTS,
                "sha256": _sha256(tmp / WEIGHTS),
                "dtype": "float16" if half else "float32",
            },
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "cvat_tools_version": __version__,
            **manifest,
        }
        (tmp / MANIFEST).write_text(json.dumps(body, indent=2, sort_keys=False) + "\n")
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(
            f"{path}: not a model bundle (no {MANIFEST}); pass a folder written by "
            "'cvat-tools train ...'"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{manifest_path}: unreadable manifest ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{manifest_path}: not a cvat-tools bundle manifest")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path}: bundle format {manifest.get('format_version')} is newer than this "
            f"cvat-tools ({FORMAT_VERSION}); upgrade cvat-tools"
        )
    return manifest


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
    if labels is not None and list(manifest.get("labels", [])) != list(labels):
        raise BundleError(
            f"{path}: label set {manifest.get('labels')} does not match the expected "
            f"{list(labels)}; retrain or pass a bundle made for this label set"
        )
    weights = manifest.get("weights", {})
    weights_path = path / weights.get("file", WEIGHTS)
    if not weights_path.is_file():
        raise BundleError(f"{weights_path}: weights file missing from the bundle")
    actual = _sha256(weights_path)
    if actual != weights.get("sha256"):
        raise BundleError(
            f"{weights_path}: checksum mismatch (manifest {weights.get('sha256', '?')[:12]}..., "
            f"file {actual[:12]}...); the file is corrupt or was changed: re-download or retrain"
        )
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad pickle
        raise BundleError(f"{weights_path}: cannot load weights ({exc})") from None
    state = {
        k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in state.items()
    }
    return Bundle(path=path, manifest=manifest, state_dict=state)


# Bundles that ship with the package (see cvat_tools/weights/MODEL_CARD.md).
SHIPPED = Path(__file__).resolve().parent / "weights"


def shipped_bundle(kind: str) -> Path | None:
    """Path of the shipped bundle of ``kind`` (segmenter, classifier, refiner), or None."""
    path = SHIPPED / kind
    return path if (path / MANIFEST).is_file() else None
