#!/usr/bin/env python3
"""Writes the deterministic benchmark image for ci/bench.sh as an OCI image layout.

The image is ~SIZE MiB of tar data in 4 layers. Each layer mixes ~40% small text files
(compressible, many tar headers: exercises per-entry overhead) with ~60% large pseudo-random
files (incompressible: exercises raw cipher and I/O throughput), so a 1 GiB image compresses
to roughly 790 MB. Everything comes from a seeded PRNG and fixed metadata (mtime 0, uid 0,
gzip mtime 0), so the same arguments always give the same blob digests on the same Python and
zlib/zstd versions. Layers are streamed to disk (never held whole in memory) and built in
parallel, one process per layer, bounded by the CPU count.

usage: gen-bench-image.py OUT_DIR TAG [--size-mib 1024] [--compress gzip|zstd] [--level N] [--seed S]
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
from concurrent.futures import ProcessPoolExecutor

import zlib

LAYERS = 4
TEXT_SHARE = 0.40
MIB = 1024 * 1024
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = {"gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
            "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}


class HashingSink:
    """File-like object tarfile writes into: hashes the raw tar (diff_id) and feeds a compressor
    whose output is hashed (blob digest) and written to disk as it comes."""

    def __init__(self, path, compress, level):
        self.out = open(path, "wb")
        self.tar_sha = hashlib.sha256()
        self.blob_sha = hashlib.sha256()
        self.size = 0
        self.proc = None
        if compress == "gzip":
            # wbits 31 = gzip container; zlib writes mtime 0 and no file name: deterministic.
            self.z = zlib.compressobj(level, zlib.DEFLATED, 31, 9)
        else:
            # Python 3.11 has no zstd module; the CLI is single-threaded here so frames are stable.
            self.z = None
            self.proc = subprocess.Popen(["zstd", "-q", "-c", f"-{level}", "-T1", "--no-check"],
                                         stdin=subprocess.PIPE, stdout=self.out)

    def write(self, data):
        self.tar_sha.update(data)
        if self.z is not None:
            self._emit(self.z.compress(data))
        else:
            self.proc.stdin.write(data)
        return len(data)

    def _emit(self, data):
        if data:
            self.blob_sha.update(data)
            self.size += len(data)
            self.out.write(data)

    def close(self, path):
        if self.z is not None:
            self._emit(self.z.flush())
            self.out.close()
        else:
            self.proc.stdin.close()
            if self.proc.wait() != 0:
                raise RuntimeError("zstd failed")
            self.out.close()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(MIB), b""):
                    self.blob_sha.update(chunk)
                    self.size += len(chunk)


def word_corpus(rng, nbytes):
    """A block of English-like text from a small vocabulary; files are slices of it, so text
    compresses (about 3x with gzip -1) without being trivially repetitive inside a 32 KiB window."""
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = [12, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1]
    vocab = ["".join(rng.choices(letters, weights, k=rng.randint(2, 11))) for _ in range(1700)]
    vocab += [str(rng.randint(0, 99999)) for _ in range(300)]
    rng.shuffle(vocab)
    # Zipf-like word frequencies, as in natural text; tuned so gzip -1 gives about 2.9x.
    zipf = [1.0 / (i + 1) for i in range(len(vocab))]
    words, n = [], 0
    while n < nbytes:
        line = " ".join(rng.choices(vocab, zipf, k=rng.randint(4, 14)))
        words.append(line)
        n += len(line) + 1
    return ("\n".join(words) + "\n").encode()[:nbytes]


def add_file(tar, name, data_len, reader):
    ti = tarfile.TarInfo(name)
    ti.size = data_len
    ti.mode = 0o644
    ti.mtime = 0
    ti.uname = ti.gname = "root"
    tar.addfile(ti, reader)


def add_dir(tar, name):
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE
    ti.mode = 0o755
    ti.mtime = 0
    ti.uname = ti.gname = "root"
    tar.addfile(ti)


class RandomReader:
    """Streams n pseudo-random bytes in 1 MiB pieces so big files never sit in memory."""

    def __init__(self, rng, n):
        self.rng, self.left = rng, n

    def read(self, size=-1):
        if self.left <= 0:
            return b""
        want = self.left if size is None or size < 0 else min(size, self.left)
        want = min(want, MIB)
        self.left -= want
        return self.rng.randbytes(want)


class BytesReader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def read(self, size=-1):
        end = len(self.data) if size is None or size < 0 else self.pos + size
        chunk = self.data[self.pos:end]
        self.pos += len(chunk)
        return chunk


def build_layer(args):
    index, layer_bytes, seed, compress, level, tmpdir = args
    rng = random.Random(f"cloak-bench-{seed}-layer-{index}")
    corpus = word_corpus(rng, 4 * MIB)
    path = os.path.join(tmpdir, f"layer{index}")
    sink = HashingSink(path, compress, level)
    text_budget = int(layer_bytes * TEXT_SHARE)
    rand_budget = layer_bytes - text_budget
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        base = f"layer{index}"
        add_dir(tar, base + "/")
        d = 0
        # Interleave: a directory of small text files, then one large random file, so both
        # kinds of data are spread through the stream as in real images.
        while text_budget > 0 or rand_budget > 0:
            if text_budget > 0:
                dname = f"{base}/share/doc{d:04d}/"
                add_dir(tar, dname)
                for f in range(rng.randint(40, 120)):
                    if text_budget <= 0:
                        break
                    n = min(text_budget, rng.randint(512, 24 * 1024))
                    off = rng.randrange(0, len(corpus) - n)
                    add_file(tar, f"{dname}f{f:04d}.txt", n, BytesReader(corpus[off:off + n]))
                    text_budget -= n + 512
            if rand_budget > 0:
                n = min(rand_budget, rng.randint(4 * MIB, 24 * MIB))
                add_file(tar, f"{base}/lib/blob{d:04d}.bin", n, RandomReader(rng, n))
                rand_budget -= n
            d += 1
    sink.close(path)
    return {"index": index, "path": path, "digest": "sha256:" + sink.blob_sha.hexdigest(),
            "size": sink.size, "diff_id": "sha256:" + sink.tar_sha.hexdigest()}


def put_json(blobs, obj):
    data = json.dumps(obj, separators=(",", ":")).encode()
    h = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, h), "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + h, "size": len(data)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("tag")
    ap.add_argument("--size-mib", type=int, default=1024, help="uncompressed tar size, all layers")
    ap.add_argument("--compress", choices=["gzip", "zstd"], default="gzip")
    ap.add_argument("--level", type=int, default=None, help="gzip 1-9 (default 1), zstd (default 3)")
    ap.add_argument("--seed", default="1")
    ap.add_argument("--jobs", type=int, default=min(LAYERS, os.cpu_count() or 1))
    a = ap.parse_args()
    if a.size_mib < 8:
        ap.error("--size-mib must be at least 8")
    level = a.level if a.level is not None else (1 if a.compress == "gzip" else 3)

    blobs = os.path.join(a.out_dir, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)
    per_layer = a.size_mib * MIB // LAYERS
    with tempfile.TemporaryDirectory(dir=a.out_dir, prefix=".gen-") as tmp:
        jobs = [(i, per_layer, a.seed, a.compress, level, tmp) for i in range(LAYERS)]
        with ProcessPoolExecutor(max_workers=max(1, a.jobs)) as pool:
            layers = sorted(pool.map(build_layer, jobs), key=lambda r: r["index"])
        for r in layers:
            shutil.move(r["path"], os.path.join(blobs, r["digest"].split(":", 1)[1]))

    cfg = {"created": "1970-01-01T00:00:00Z", "architecture": "amd64", "os": "linux",
           "config": {"Cmd": ["/bin/sh"]},
           "rootfs": {"type": "layers", "diff_ids": [r["diff_id"] for r in layers]},
           "history": [{"created": "1970-01-01T00:00:00Z", "created_by": f"gen-bench-image.py layer {r['index']}"}
                       for r in layers]}
    config = dict(put_json(blobs, cfg), mediaType=MT_CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": MT_MANIFEST,
                "config": {"mediaType": MT_CONFIG, "digest": config["digest"], "size": config["size"]},
                "layers": [{"mediaType": MT_LAYER[a.compress], "digest": r["digest"], "size": r["size"]}
                           for r in layers]}
    mdesc = dict({"mediaType": MT_MANIFEST}, **put_json(blobs, manifest),
                 annotations={"org.opencontainers.image.ref.name": a.tag})

    # Keep other tags already in the layout; replace this one.
    index_path = os.path.join(a.out_dir, "index.json")
    index = {"schemaVersion": 2, "manifests": []}
    if os.path.exists(index_path):
        with open(index_path) as f:
            index = json.load(f)
    index["manifests"] = [m for m in index.get("manifests", [])
                          if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != a.tag]
    index["manifests"].append(mdesc)
    with open(os.path.join(a.out_dir, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(index_path, "w") as f:
        json.dump(index, f, separators=(",", ":"))

    total = sum(r["size"] for r in layers)
    print(f"wrote oci:{a.out_dir}:{a.tag}: {LAYERS} {a.compress} layers, "
          f"{per_layer * LAYERS / MIB:.0f} MiB tar, {total / 1e6:.0f} MB compressed, "
          f"manifest {mdesc['digest']}", file=sys.stderr)


if __name__ == "__main__":
    main()
