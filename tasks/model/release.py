"""A release: which image (version and digest) of every component a cluster runs.

A release is identified by the content it runs, not by when it was made: its
id is a short hash of the components' digests, so building the same images
again gives the same release, and "nothing changed" is a comparison of ids.
Each image also keeps the manifest digest the registry gave its push: machines
pull and run that (``REPO@sha256:...``), never a tag that can be pushed again.
"""
from __future__ import annotations

import hashlib
import re

from tasks.model.errors import RecordError
from tasks.model.frozen import frozen

# What a release record may hold: what push writes, nothing a shell could read as more.
COMPONENT = re.compile(r"[a-z][a-z0-9_]{0,39}")
VERSION = re.compile(r"(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@frozen
class Image:
    component: str
    version: str
    digest: str  # the image ID, sha256:..., equal to the registry manifest's config digest
    manifest: str = ""  # the registry's manifest digest; "" in releases recorded before it was kept


@frozen
class Release:
    images: tuple  # of Image, sorted by component

    def __post_init__(self):
        object.__setattr__(self, "images", tuple(sorted(self.images, key=lambda i: i.component)))

    @property
    def id(self) -> str:
        content = "\n".join(f"{i.component}={i.digest}" for i in self.images)
        return hashlib.sha256(content.encode()).hexdigest()[:12]

    def image(self, component: str) -> Image:
        for image in self.images:
            if image.component == component:
                return image
        raise KeyError(component)

    def versions(self) -> dict:
        return {i.component: i.version for i in self.images}

    def components(self) -> list:
        return [i.component for i in self.images]

    def to_dict(self) -> dict:
        return {"id": self.id,
                "components": {i.component: {"version": i.version, "digest": i.digest,
                                             **({"manifest": i.manifest} if i.manifest else {})}
                               for i in self.images}}

    @classmethod
    def from_dict(cls, data: dict) -> "Release":
        """The release a record describes; RecordError when the record is not one air-deploy
        writes (its values reach commands run as root: digests, versions, component names)."""
        components = data.get("components") if isinstance(data, dict) else None
        if not isinstance(components, dict) or not components:
            raise RecordError("no components")
        return cls(tuple(_image(name, c) for name, c in components.items()))


def _image(name, fields) -> Image:
    if not isinstance(name, str) or not COMPONENT.fullmatch(name):
        raise RecordError(f"component name {name!r} is not one")
    if not isinstance(fields, dict):
        raise RecordError(f"{name}: not a mapping")
    version, digest, manifest = fields.get("version"), fields.get("digest"), fields.get("manifest", "")
    if not isinstance(version, str) or not VERSION.fullmatch(version):
        raise RecordError(f"{name}: version {version!r} is not MAJOR.MINOR.PATCH")
    if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
        raise RecordError(f"{name}: digest {digest!r} is not sha256: and 64 hex digits")
    if manifest != "" and (not isinstance(manifest, str) or not DIGEST.fullmatch(manifest)):
        raise RecordError(f"{name}: manifest {manifest!r} is not sha256: and 64 hex digits")
    return Image(name, version, digest, manifest)
