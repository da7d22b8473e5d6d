"""What an etcd snapshot file holds, read without etcd: its checksum, its revision and its keys.

A snapshot (etcd's ``/v3/maintenance/snapshot``, or ``etcdctl snapshot save``) is etcd's bbolt
database followed by the SHA-256 of that database (32 bytes, the "trailer"; the database is a
whole number of pages, so the file's size is 32 more than a multiple of 512: etcd's own test of
whether a file has one). ``etcdctl snapshot restore`` refuses a file whose trailer does not
match. This module owns checking that trailer and reading the database's ``key`` bucket (every
revision of every key since the last compaction, in revision order) to give the snapshot's
revision and how many keys were alive at it, so a backup is checked before it is kept and a
restore refuses a damaged file before anything is touched. Pure: bytes in, facts out.
"""
from __future__ import annotations

import hashlib
import struct
from typing import Iterator, NamedTuple

from tasks.model.errors import ConfigError

HASH_SIZE = 32
BOLT_MAGIC = 0xED0CDAED
_PAGE_HEADER = 16
_ELEMENT = 16
_BRANCH, _LEAF, _META = 0x01, 0x02, 0x04
_BUCKET = 0x01           # a leaf element whose value is a bucket
_REVISION = 17           # a key of the `key` bucket: 8 bytes main revision, "_", 8 bytes sub revision
_TOMBSTONE = b"t"        # an 18th byte: the key was deleted at that revision


class SnapshotError(ConfigError):
    """A file that is not a whole etcd snapshot."""


class Facts(NamedTuple):
    revision: int    # the newest revision in the snapshot
    keys: int        # keys alive at that revision
    digest: str      # the trailer: SHA-256 of the database, hex
    size: int        # bytes of the whole file


def check_trailer(data: bytes, name: str = "the snapshot") -> str:
    """The database's SHA-256 (hex) when ``data`` ends with it; SnapshotError otherwise."""
    if len(data) <= HASH_SIZE or len(data) % 512 != HASH_SIZE:
        raise SnapshotError(f"{name}: not an etcd snapshot with its SHA-256 trailer ({len(data)} bytes; "
                            f"a snapshot is 32 bytes more than a multiple of 512)")
    body, trailer = data[:-HASH_SIZE], data[-HASH_SIZE:]
    digest = hashlib.sha256(body).digest()
    if digest != trailer:
        raise SnapshotError(f"{name}: its SHA-256 trailer does not match its content (damaged or cut short)")
    return digest.hex()


def read(data: bytes, name: str = "the snapshot") -> Facts:
    """The checked facts of a snapshot file's content: trailer, revision, live keys."""
    digest = check_trailer(data, name)
    try:
        revision, keys = _key_facts(_Bolt(data[:-HASH_SIZE]))
    except (struct.error, IndexError, ValueError, KeyError) as e:
        raise SnapshotError(f"{name}: its database cannot be read ({e or type(e).__name__})") from None
    return Facts(revision, keys, digest, len(data))


def _key_facts(db: "_Bolt") -> tuple:
    """(newest revision, keys alive at it) from the ``key`` bucket, read in revision order."""
    alive: set = set()
    revision = 0
    for key, value in db.bucket(b"key"):
        if len(key) < _REVISION:
            raise ValueError(f"a revision key of {len(key)} bytes")
        revision = max(revision, struct.unpack(">Q", key[:8])[0])
        name = key_name(value)
        if key[_REVISION:] == _TOMBSTONE:
            alive.discard(name)
        else:
            alive.add(name)
    return revision, len(alive)


def value_of(data: bytes, key: str, name: str = "the snapshot"):
    """The text ``key`` holds at the snapshot's revision (None when it is absent or deleted): how a
    restore learns the release the snapshot records before any etcd runs."""
    check_trailer(data, name)
    wanted, found = key.encode(), None
    try:
        for revision_key, value in _Bolt(data[:-HASH_SIZE]).bucket(b"key"):
            fields = _fields(value)
            if fields.get(1) == wanted:
                found = None if revision_key[_REVISION:] == _TOMBSTONE else fields.get(5, b"")
    except (struct.error, IndexError, ValueError, KeyError) as e:
        raise SnapshotError(f"{name}: its database cannot be read ({e or type(e).__name__})") from None
    return None if found is None else found.decode()


def key_name(value: bytes) -> bytes:
    """Field 1 (the key) of an etcd ``mvccpb.KeyValue`` protobuf message."""
    fields = _fields(value)
    if 1 not in fields:
        raise ValueError("a key-value without its key")
    return fields[1]


def _fields(value: bytes) -> dict:
    """field number -> bytes of the length-delimited fields of a protobuf message (the key is 1,
    the value 5 in a ``mvccpb.KeyValue``)."""
    fields, at = {}, 0
    while at < len(value):
        tag, at = _varint(value, at)
        field, kind = tag >> 3, tag & 7
        if kind == 0:
            _, at = _varint(value, at)
        elif kind == 2:
            length, at = _varint(value, at)
            fields[field] = value[at:at + length]
            at += length
        else:
            raise ValueError(f"protobuf wire type {kind} in a key-value")
    return fields


def _varint(data: bytes, at: int) -> tuple:
    result = shift = 0
    while True:
        byte = data[at]
        at += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, at
        shift += 7


class _Bolt:
    """Read-only walk of a bbolt file in memory (the format etcd keeps its data in): its two meta
    pages (the valid one with the higher transaction wins), branch and leaf pages, inline buckets."""

    def __init__(self, data: bytes):
        self.data = data
        self.page_size = struct.unpack_from("<I", data, _PAGE_HEADER + 8)[0]
        metas = [self._meta(i) for i in (0, 1)]
        valid = [m for m in metas if m is not None]
        if not valid:
            raise ValueError("no valid meta page")
        self.root = max(valid)[1]

    def _meta(self, index: int):
        """(txid, root page) of meta page ``index``, None when it is not a valid meta page."""
        at = index * self.page_size
        if at + _PAGE_HEADER + 64 > len(self.data):
            return None
        flags = struct.unpack_from("<H", self.data, at + 8)[0]
        magic, version, _, _, root, _, _, _, txid, checksum = struct.unpack_from("<IIIIQQQQQQ", self.data,
                                                                                at + _PAGE_HEADER)
        body = self.data[at + _PAGE_HEADER:at + _PAGE_HEADER + 56]
        if not flags & _META or magic != BOLT_MAGIC or version != 2 or _fnv64a(body) != checksum:
            return None
        return txid, root

    def bucket(self, name: bytes) -> Iterator[tuple]:
        """(key, value) of every entry of the top-level bucket ``name``, in key order."""
        for key, value, flags in self._items(self.data, self.root * self.page_size):
            if key == name and flags & _BUCKET:
                yield from self._bucket_items(value)
                return
        raise KeyError(f"no bucket {name.decode()!r}")

    def _bucket_items(self, header: bytes) -> Iterator[tuple]:
        root = struct.unpack_from("<Q", header)[0]
        if root == 0:  # an inline bucket: its one page follows its header
            pages, at = bytes(header[16:]), 0
        else:
            pages, at = self.data, root * self.page_size
        for key, value, flags in self._items(pages, at):
            if not flags & _BUCKET:
                yield key, value

    def _items(self, pages: bytes, at: int) -> Iterator[tuple]:
        """(key, value, flags) of every leaf element under the page at offset ``at`` of ``pages``."""
        flags, count = struct.unpack_from("<HH", pages, at + 8)
        for i in range(count):
            element = at + _PAGE_HEADER + i * _ELEMENT
            if flags & _BRANCH:
                pos, _, child = struct.unpack_from("<IIQ", pages, element)
                yield from self._items(self.data, child * self.page_size)
            elif flags & _LEAF:
                kind, pos, ksize, vsize = struct.unpack_from("<IIII", pages, element)
                start = element + pos
                yield pages[start:start + ksize], pages[start + ksize:start + ksize + vsize], kind
            else:
                raise ValueError(f"page flags {flags:#x} where a branch or leaf was expected")


def _fnv64a(data: bytes) -> int:
    value = 0xCBF29CE484222325
    for byte in data:
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return value
