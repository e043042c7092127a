"""Find the image file an annotation names, under a folder of images laid out any way.

CVAT names an image by its upload path (``sub/IMG_1.jpg``); an export or a user's folder may
hold it at any level (``images/sub/IMG_1.jpg``, ``images/default/IMG_1.jpg``, flat). Lookup
order: the relative name itself, a file whose path ends with the name, a tail of the name,
then the base name when exactly one file has it. Two files with that base name and nothing
closer is an error naming both (guessing would pair annotations with the wrong image).
Names are only looked up in the index of files under the folder, so a name can never reach
outside it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import InputError
from .safe_names import safe_relative, shown


@dataclass
class ImageIndex:
    folder: Path
    by_suffix: dict[str, list[Path]] = field(default_factory=dict)  # every path suffix -> files

    @classmethod
    def of(cls, folder: str | Path, exclude: tuple[Path, ...] = ()) -> "ImageIndex":
        """Every image under ``folder`` but hidden ones (our temp folders are hidden) and
        those under ``exclude`` (an earlier output written beside the inputs)."""
        from ..imaging import list_images

        index = cls(Path(folder))
        skip = [Path(p).resolve() for p in exclude]
        for path in list_images(index.folder):
            parts = path.relative_to(index.folder).parts
            if any(p.startswith(".") for p in parts[:-1]) or any(s in path.resolve().parents for s in skip):
                continue
            for k in range(len(parts)):
                index.by_suffix.setdefault("/".join(parts[k:]), []).append(path)
        return index

    def relative(self, path: Path) -> str:
        return path.relative_to(self.folder).as_posix()

    def find(self, name: str, where: str = "") -> Path | None:
        """The file for an image name, None when there is none; InputError when ambiguous."""
        rel = safe_relative(name)
        exact = self.folder.joinpath(*rel.parts)
        if exact in self.by_suffix.get(rel.as_posix(), []):
            return exact
        for k in range(len(rel.parts)):  # the whole name first, then shorter tails of it
            found = self.by_suffix.get(PurePosixPath(*rel.parts[k:]).as_posix(), [])
            if len(found) == 1:
                return found[0]
            if len(found) > 1 and k == len(rel.parts) - 1:
                a, b = (self.relative(p) for p in found[:2])
                raise InputError(f"{where or self.folder}: image {shown(name)} matches both {a} and {b}"
                                 f"{' and more' if len(found) > 2 else ''} under {self.folder}; "
                                 "rename one, or pass --images with the folder that holds the right one")
        return None
