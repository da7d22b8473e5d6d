"""A release: which image (version and digest) of every component a cluster runs.

A release is identified by the content it runs, not by when it was made: its
id is a short hash of the components' digests, so building the same images
again gives the same release, and "nothing changed" is a comparison of ids.
Each image also keeps the manifest digest the registry gave its push: machines
pull and run that (``REPO@sha256:...``), never a tag that can be pushed again.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Image:
    component: str
    version: str
    digest: str  # the image ID, sha256:..., equal to the registry manifest's config digest
    manifest: str = ""  # the registry's manifest digest; "" in releases recorded before it was kept


@dataclass(frozen=True)
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
        return cls(tuple(Image(name, c["version"], c["digest"], c.get("manifest", ""))
                         for name, c in data["components"].items()))
