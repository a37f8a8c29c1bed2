#!/usr/bin/env python3
"""Write a small, deterministic OCI image layout for the demo and the tests.

Usage: mk-demo-image.py OUT_DIR TAG [--layers N] [--compress gzip|zstd|none]

Each layer is a tar (mtime 0, uid/gid 0) of a few text files, compressed as
asked; the config lists the diff_ids. Layer 2 (if any) deletes a file of
layer 1 with an OCI whiteout, so pullers have something real to apply.
"""
import argparse, gzip, hashlib, io, json, os, subprocess, sys, tarfile


def tar_bytes(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        dirs = set()
        for name, data, mode in files:
            parts = name.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    ti = tarfile.TarInfo(d)
                    ti.type = tarfile.DIRTYPE
                    ti.mode = 0o755
                    ti.mtime = 0
                    tf.addfile(ti)
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mode = mode
            ti.mtime = 0
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def compress(raw, how):
    if how == "gzip":
        out = io.BytesIO()
        with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
            gz.write(raw)
        return out.getvalue(), "application/vnd.oci.image.layer.v1.tar+gzip"
    if how == "zstd":
        z = subprocess.run(["zstd", "-q", "-c", "-3"], input=raw, stdout=subprocess.PIPE, check=True).stdout
        return z, "application/vnd.oci.image.layer.v1.tar+zstd"
    return raw, "application/vnd.oci.image.layer.v1.tar"


def put_blob(out, data):
    h = hashlib.sha256(data).hexdigest()
    p = os.path.join(out, "blobs", "sha256", h)
    with open(p, "wb") as f:
        f.write(data)
    return "sha256:" + h


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("tag")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--compress", default="gzip", choices=["gzip", "zstd", "none"])
    a = ap.parse_args()
    os.makedirs(os.path.join(a.out, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(a.out, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    layers, diff_ids = [], []
    for n in range(a.layers):
        files = [
            (f"app/layer{n}.txt", f"hello from layer {n} of the cloak demo\n".encode(), 0o644),
            ("etc/os-release", f'NAME="cloak-demo"\nVERSION_ID="{n}"\n'.encode(), 0o644),
            ("app/run.sh", b"#!/bin/sh\necho confidential workload running\n", 0o755),
        ]
        if n == 0:
            files.append(("app/secret-model.bin", bytes((i * 31 + 7) % 251 for i in range(64 * 1024)), 0o600))
            files.append(("app/obsolete.txt", b"removed by the next layer\n", 0o644))
        if n == 1:
            files.append(("app/.wh.obsolete.txt", b"", 0o644))
        raw = tar_bytes(files)
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        blob, mt = compress(raw, a.compress)
        layers.append({"mediaType": mt, "digest": put_blob(a.out, blob), "size": len(blob)})
    config = {
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/app/run.sh"], "Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"cloak demo layer {i}"} for i in range(a.layers)],
    }
    cfg = json.dumps(config, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put_blob(a.out, cfg), "size": len(cfg)},
        "layers": layers,
    }
    mb = json.dumps(manifest, separators=(",", ":")).encode()
    md = put_blob(a.out, mb)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": manifest["mediaType"], "digest": md, "size": len(mb),
                       "annotations": {"org.opencontainers.image.ref.name": a.tag}}],
    }
    with open(os.path.join(a.out, "index.json"), "w") as f:
        json.dump(index, f, separators=(",", ":"))
    print(md)


if __name__ == "__main__":
    sys.exit(main())
