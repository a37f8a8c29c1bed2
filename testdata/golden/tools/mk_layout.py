#!/usr/bin/env python3
"""Writes the small, deterministic plaintext OCI image layouts that the golden vectors are
encrypted from (testdata/make-golden.sh feeds them to real skopeo).

Deterministic: tar entries have mtime 0, uid/gid 0, fixed order; gzip mtime 0 and no name;
contents come from a seeded PRNG. The same Python and zstd versions give the same digests.

usage: mk_layout.py OUT_DIR KIND TAG
  KIND single  one gzip layer (hello.txt, etc/os-release)
       3layer  three gzip layers; layer 1 has a whiteout `.wh.x` (deletes /x from layer 0)
               and an opaque directory marker `etc/conf/.wh..wh..opq`; also a symlink,
               a hard link, a 0700 directory and a binary file
       zstd    two zstd layers: layer 0 one zstd frame, layer 1 two zstd frames concatenated
               (the tar stream split mid-entry and each half compressed on its own)
       index   an image index with linux/amd64 and linux/arm64 manifests (one gzip layer each)
"""

import gzip
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tarfile

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"


class Layout:
    def __init__(self, out):
        self.out = out
        self.blobs = os.path.join(out, "blobs", "sha256")
        os.makedirs(self.blobs, exist_ok=True)

    def put(self, data, media_type):
        h = hashlib.sha256(data).hexdigest()
        with open(os.path.join(self.blobs, h), "wb") as f:
            f.write(data)
        return {"mediaType": media_type, "digest": "sha256:" + h, "size": len(data)}

    def put_json(self, obj, media_type):
        return self.put(json.dumps(obj, separators=(",", ":")).encode(), media_type)

    def write_index(self, desc, tag):
        desc = dict(desc, annotations={"org.opencontainers.image.ref.name": tag})
        with open(os.path.join(self.out, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        with open(os.path.join(self.out, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "manifests": [desc]}, f, separators=(",", ":"))


class Tar:
    """Builds one layer's tar stream in memory (golden layers are a few KiB)."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)

    def _info(self, name, kind, mode):
        ti = tarfile.TarInfo(name)
        ti.type = kind
        ti.mode = mode
        ti.mtime = 0
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        return ti

    def dir(self, name, mode=0o755):
        self.tar.addfile(self._info(name.rstrip("/") + "/", tarfile.DIRTYPE, mode))

    def file(self, name, data, mode=0o644):
        ti = self._info(name, tarfile.REGTYPE, mode)
        ti.size = len(data)
        self.tar.addfile(ti, io.BytesIO(data))

    def symlink(self, name, target):
        ti = self._info(name, tarfile.SYMTYPE, 0o777)
        ti.linkname = target
        self.tar.addfile(ti)

    def hardlink(self, name, target):
        ti = self._info(name, tarfile.LNKTYPE, 0o644)
        ti.linkname = target
        self.tar.addfile(ti)

    def bytes(self):
        self.tar.close()
        return self.buf.getvalue()


def gz(data):
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="") as g:
        g.write(data)
    return out.getvalue()


def zstd(data):
    return subprocess.run(["zstd", "-q", "-c", "-19", "-T1"], input=data, check=True,
                          stdout=subprocess.PIPE).stdout


def image(lay, layers, arch="amd64", created_by="mk_layout.py"):
    """layers: list of (tar_bytes, blob_bytes, media_type). Returns the manifest descriptor."""
    descs = [lay.put(blob, mt) for _, blob, mt in layers]
    cfg = {"created": "1970-01-01T00:00:00Z", "architecture": arch, "os": "linux",
           "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
           "rootfs": {"type": "layers",
                      "diff_ids": ["sha256:" + hashlib.sha256(t).hexdigest() for t, _, _ in layers]},
           "history": [{"created": "1970-01-01T00:00:00Z", "created_by": f"{created_by} layer {i}"}
                       for i in range(len(layers))]}
    config = lay.put_json(cfg, MT_CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": config, "layers": descs}
    return lay.put_json(manifest, MT_MANIFEST)


def single():
    t = Tar()
    t.dir("etc")
    t.file("etc/os-release", b'NAME="cloak-golden"\nID=cloak\n')
    t.file("hello.txt", b"hello from a cloak golden vector\n")
    tb = t.bytes()
    return [(tb, gz(tb), MT_GZIP)]


def three_layers():
    rng = random.Random("cloak-golden-3layer")
    l0 = Tar()
    for d in ("bin", "etc", "etc/conf", "usr", "usr/share", "usr/share/doc"):
        l0.dir(d)
    l0.file("bin/busybox", rng.randbytes(3000), 0o755)
    l0.symlink("bin/sh", "busybox")
    l0.file("etc/os-release", b'NAME="cloak-golden"\nID=cloak\nVERSION_ID=3\n')
    l0.file("etc/conf/a.conf", b"a = 1\n")
    l0.file("etc/conf/b.conf", b"b = 2\n")
    l0.file("x", b"this file is deleted by the whiteout in layer 1\n")
    l0.file("usr/share/doc/readme.txt", b"layer 0 readme\n")
    l0.hardlink("usr/share/doc/readme-link.txt", "usr/share/doc/readme.txt")
    t0 = l0.bytes()

    l1 = Tar()
    l1.file(".wh.x", b"")  # whiteout: /x disappears
    l1.dir("etc")
    l1.dir("etc/conf")
    l1.file("etc/conf/.wh..wh..opq", b"")  # opaque: a.conf, b.conf from layer 0 are hidden
    l1.file("etc/conf/c.conf", b"c = 3\n")
    l1.dir("app")
    l1.file("app/data.bin", rng.randbytes(4096))
    t1 = l1.bytes()

    l2 = Tar()
    l2.dir("app")
    l2.file("app/config.json", b'{"name":"golden","layers":3}\n')
    l2.dir("root", 0o700)
    l2.file("root/.profile", b"export PS1='# '\n", 0o600)
    l2.dir("usr")
    l2.dir("usr/share")
    l2.dir("usr/share/doc")
    l2.file("usr/share/doc/readme.txt", b"layer 2 replaces the readme\n")
    t2 = l2.bytes()
    return [(t, gz(t), MT_GZIP) for t in (t0, t1, t2)]


def zstd_layers():
    rng = random.Random("cloak-golden-zstd")
    a = Tar()
    a.dir("etc")
    a.file("etc/os-release", b'NAME="cloak-golden"\nID=cloak\nVARIANT=zstd\n')
    a.file("single-frame.txt", b"this layer is one zstd frame\n" * 20)
    ta = a.bytes()

    b = Tar()
    b.dir("data")
    b.file("data/part1.txt", b"first half of a multi-frame zstd layer\n" * 40)
    b.file("data/random.bin", rng.randbytes(2048))
    b.file("data/part2.txt", b"second half of a multi-frame zstd layer\n" * 40)
    tb = b.bytes()
    # Split inside an entry's data (not on a 512-byte boundary) so a decoder that stops after
    # the first frame yields a truncated tar and fails loudly.
    cut = len(tb) // 2 + 77
    multi = zstd(tb[:cut]) + zstd(tb[cut:])
    return [(ta, zstd(ta), MT_ZSTD), (tb, multi, MT_ZSTD)]


def index_image(lay):
    descs = []
    for arch in ("amd64", "arm64"):
        t = Tar()
        t.dir("etc")
        t.file("etc/arch", f"linux/{arch}\n".encode())
        t.file("hello.txt", f"hello from the {arch} image of a cloak golden index\n".encode())
        tb = t.bytes()
        m = image(lay, [(tb, gz(tb), MT_GZIP)], arch=arch)
        m["platform"] = {"architecture": arch, "os": "linux"}
        descs.append(m)
    return lay.put_json({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": descs}, MT_INDEX)


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    out, kind, tag = sys.argv[1:]
    lay = Layout(out)
    if kind == "single":
        desc = image(lay, single())
    elif kind == "3layer":
        desc = image(lay, three_layers())
    elif kind == "zstd":
        desc = image(lay, zstd_layers())
    elif kind == "index":
        desc = index_image(lay)
    else:
        sys.exit(f"unknown KIND {kind!r}\n{__doc__}")
    lay.write_index(desc, tag)


if __name__ == "__main__":
    main()
