#!/usr/bin/env python3
"""Builds the starting corpus of every fuzz target from real artifacts.

    fuzz/make_corpus.py OUT_DIR [TARGET ...]

For each TARGET (default: every directory under fuzz/seeds/ plus the targets
this script derives inputs for) it fills OUT_DIR/TARGET/ with
  * the committed seeds, fuzz/seeds/TARGET/* (small real artifacts, see
    fuzz/seeds/README.md for where each came from);
  * inputs derived from the repository's test data: the skopeo-made OCI layouts
    and golden vectors (manifests, indexes, annotations, JWEs, encrypted layers,
    layer tars), the real keyprovider messages, and hostile tars built here with
    the same tricks the extractor's tests use;
  * the same derivations over /work/shared/fixtures when that exists (or
    $CLOAK_SHARED_DIR): optional, the repo works without it.
Files are named by their SHA-1 (as libFuzzer names them), so running it again
over a grown corpus only adds what is missing. Standard library only.
"""
import base64
import binascii
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

FUZZ = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(FUZZ)
MAX = 64 * 1024  # the campaign's -max_len; larger inputs would be truncated anyway


def b64any(s):
    s = s.strip()
    for f in (base64.b64decode, base64.urlsafe_b64decode):
        for pad in ("", "=", "=="):
            try:
                return f(s + pad)
            except (binascii.Error, ValueError):
                pass
    return None


def walk(top):
    for d, dirs, files in os.walk(top):
        dirs[:] = [x for x in dirs if x not in ("target", ".git", "corpus", "artifacts")]
        for f in sorted(files):
            yield os.path.join(d, f)


def data_roots():
    roots = [os.path.join(ROOT, "testdata")]
    roots += [os.path.join(ROOT, c, "testdata") for c in sorted(os.listdir(ROOT))]
    roots += [os.path.join(ROOT, "kbs", c, "testdata") for c in ("client", "server")]
    shared = os.environ.get("CLOAK_SHARED_DIR", "/work/shared")
    roots.append(os.path.join(shared, "fixtures"))
    return [r for r in roots if os.path.isdir(r)]


def read_json(path):
    try:
        if os.path.getsize(path) > 4 * MAX:
            return None, None
        raw = open(path, "rb").read()
        if not raw.lstrip().startswith(b"{"):
            return raw, None
        return raw, json.loads(raw)
    except (OSError, ValueError):
        return None, None


def derive(out):
    """Adds derived inputs to `out` (target -> list of bytes)."""
    blobs = {}  # digest hex -> path, for layer lookups
    manifests = []
    for top in data_roots():
        for p in walk(top):
            if "/blobs/sha256/" in p:
                blobs[os.path.basename(p)] = p
    for top in data_roots():
        for p in walk(top):
            if not p.endswith(".json") and "/blobs/sha256/" not in p:
                continue
            raw, doc = read_json(p)
            if not isinstance(doc, dict):
                continue
            if "schemaVersion" in doc or "manifests" in doc or "layers" in doc:
                out["oci_manifest"].append(raw)
                if "layers" in doc:
                    manifests.append(doc)
            if any(k in doc for k in ("op", "keywrapparams", "keyunwrapparams", "keywrapresults", "keyunwrapresults")):
                out["keyprovider_protocol"].append(raw)
                ann = (doc.get("keywrapresults") or {}).get("annotation")
                if isinstance(ann, str) and b64any(ann):
                    out["keyprovider_packet"].append(b64any(ann))
                ann = ((doc.get("keyunwrapparams") or {}).get("annotation"))
                if isinstance(ann, str) and b64any(ann):
                    out["keyprovider_packet"].append(b64any(ann))
            if "symkey" in doc or "cipheroptions" in doc:
                out["annotations"].append(raw)
    for p in walk(os.path.join(ROOT, "testdata")):
        if p.endswith("decoded.txt"):
            for line in open(p, errors="replace"):
                if "{" in line and "symkey" in line:
                    out["annotations"].append(line[line.index("{"):].strip().encode())
    for m in manifests:
        for layer in m.get("layers", []):
            ann = layer.get("annotations") or {}
            if ann:
                out["annotations"].append(json.dumps(ann).encode())
                out["annotations"].append("".join(f"{k}={v}\n" for k, v in ann.items()).encode())
            for k, v in ann.items():
                dec = b64any(v) if isinstance(v, str) else None
                if dec is None:
                    continue
                if k == "org.opencontainers.image.enc.keys.jwe":
                    for part in v.split(","):
                        jwe = b64any(part)
                        if jwe:
                            out["jwe"].append(jwe)
                            out["kbs_resource_response"].append(jwe)
                elif k.startswith("org.opencontainers.image.enc.keys.provider."):
                    for part in v.split(","):
                        pkt = b64any(part)
                        if pkt:
                            out["keyprovider_packet"].append(pkt)
                elif k == "org.opencontainers.image.enc.pubopts":
                    out["annotations"].append(dec)
            digest = layer.get("digest", "").removeprefix("sha256:")
            path = blobs.get(digest)
            if not path:
                continue
            mt = layer.get("mediaType", "")
            blob = open(path, "rb").read()
            if mt.endswith("+encrypted") and "org.opencontainers.image.enc.pubopts" in ann:
                try:
                    hmac = b64any(json.loads(b64any(ann["org.opencontainers.image.enc.pubopts"]))["hmac"])
                except (ValueError, KeyError, TypeError):
                    hmac = None
                if hmac and len(hmac) == 32:
                    out["decrypt_stream"].append(hmac + b"\0" + blob[: MAX - 33])
                    out["decrypt_stream"].append(hmac + b"\x04\x00\x07\x3f\xff" + blob[:4096])
            elif mt.endswith("tar+gzip") or mt.endswith("tar.gzip") or mt.endswith("rootfs.diff.tar.gzip"):
                try:
                    tar = gzip.decompress(blob)
                except (OSError, EOFError):
                    continue
                if len(tar) <= MAX:
                    out["extract_tar"].append(tar)
            elif mt.endswith("tar") and len(blob) <= MAX:
                out["extract_tar"].append(blob)


def hostile_tars():
    """Small tars with the tricks a hostile layer uses (the extractor's suite
    builds the same kinds of entries)."""

    def tar(entries, fmt=tarfile.GNU_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
            for name, kind, extra in entries:
                ti = tarfile.TarInfo(name)
                ti.mtime = 1700000000
                data = b""
                if kind == "file":
                    data = extra or b"data"
                    ti.size = len(data)
                elif kind == "dir":
                    ti.type = tarfile.DIRTYPE
                    ti.mode = 0o755
                elif kind == "sym":
                    ti.type, ti.linkname = tarfile.SYMTYPE, extra
                elif kind == "hard":
                    ti.type, ti.linkname = tarfile.LNKTYPE, extra
                elif kind == "chr":
                    ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, 1, 3
                elif kind == "fifo":
                    ti.type = tarfile.FIFOTYPE
                t.addfile(ti, io.BytesIO(data))
        return buf.getvalue()

    return [
        tar([("etc", "dir", None), ("etc/passwd", "file", b"root:x:0:0\n"), ("bin/sh", "file", b"#!")]),
        tar([("../escape", "file", None)]),
        tar([("/abs/escape", "file", None)]),
        tar([("a/../../escape", "file", None)]),
        tar([("link", "sym", "/"), ("link/etc/escape", "file", None)]),
        tar([("up", "sym", "../.."), ("up/escape", "file", None)]),
        tar([("hl", "hard", "/etc/passwd")]),
        tar([("f", "file", None), ("hl", "hard", "f"), ("hl2", "hard", "../f")]),
        tar([("d", "dir", None), ("d/.wh..wh..opq", "file", b""), ("d/.wh.gone", "file", b"")]),
        tar([(".wh...", "file", b""), ("x/.wh.../y", "file", b"")]),
        tar([("dev", "chr", None), ("pipe", "fifo", None)]),
        tar([("x", "file", b"1"), ("x", "dir", None), ("x/y", "file", b"2"), ("x", "file", b"3")]),
        tar([("d/" + "n" * 150 + "/" + "m" * 150, "file", None)], tarfile.GNU_FORMAT),
        tar([("p/" + "q" * 300, "file", None), ("s", "sym", "t" * 200)], tarfile.PAX_FORMAT),
        tar([("ustar/file", "file", None)], tarfile.USTAR_FORMAT),
    ]


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out_dir = sys.argv[1]
    want = sys.argv[2:]
    targets = [
        "annotations", "decrypt_stream", "extract_tar", "jwe", "kbs_challenge", "kbs_evidence",
        "kbs_resource_response", "keyprovider_packet", "keyprovider_protocol", "oci_manifest",
    ]
    seeds = os.path.join(FUZZ, "seeds")
    targets += [d for d in sorted(os.listdir(seeds)) if os.path.isdir(os.path.join(seeds, d))]
    inputs = {t: [] for t in targets}
    derive(inputs)
    inputs["extract_tar"] += hostile_tars()
    # Evidence JSON is also what the KBS sees as the attest body's inner part.
    for t in dict.fromkeys(targets):
        d = os.path.join(seeds, t)
        if os.path.isdir(d):
            for p in walk(d):
                if not p.endswith("README.md"):
                    inputs[t].append(open(p, "rb").read())
    for t in want or dict.fromkeys(targets):
        dst = os.path.join(out_dir, t)
        os.makedirs(dst, exist_ok=True)
        added = 0
        for data in inputs.get(t, []):
            data = data[:MAX]
            name = os.path.join(dst, hashlib.sha1(data).hexdigest())
            if not os.path.exists(name):
                with open(name, "wb") as f:
                    f.write(data)
                added += 1
        print(f"{t}: {len(os.listdir(dst))} inputs ({added} new)")


if __name__ == "__main__":
    main()
