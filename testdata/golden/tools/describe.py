#!/usr/bin/env python3
"""Records what a golden vector contains, so tests can assert on it without re-deriving it:
for one encrypted layout, layer by layer (and platform by platform for an index), the plain
descriptor, the encrypted descriptor, whether it is encrypted and how many JWE recipients it has.
Merges into VECTOR_DIR/vector.json (one entry per encrypted layout).

usage: describe.py VECTOR_DIR PLAIN_LAYOUT TAG ENC_LAYOUT TAG TOOL COMMAND
  (layouts are paths relative to VECTOR_DIR; PLAIN_LAYOUT may also be a skopeo dir: directory)
"""

import base64
import hashlib
import json
import os
import sys

MT_INDEX = "application/vnd.oci.image.index.v1+json"
JWE = "org.opencontainers.image.enc.keys.jwe"


def blob(layout, digest):
    with open(os.path.join(layout, "blobs", *digest.split(":", 1)), "rb") as f:
        return json.load(f)


def top(layout, tag):
    with open(os.path.join(layout, "index.json")) as f:
        idx = json.load(f)
    for m in idx["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return m
    sys.exit(f"describe.py: no tag {tag!r} in {layout}")


def manifests(layout, desc):
    """[(platform or None, manifest descriptor)] for a manifest or an index."""
    if desc["mediaType"] == MT_INDEX:
        idx = blob(layout, desc["digest"])
        return [("{os}/{architecture}".format(**m["platform"]), m) for m in idx["manifests"]]
    return [(None, desc)]


def jwe_recipients(ann):
    """Counts recipients across the comma-separated base64 JWEs of one layer."""
    n = 0
    for part in ann.get(JWE, "").split(","):
        if not part:
            continue
        jwe = json.loads(base64.b64decode(part))
        n += len(jwe["recipients"]) if "recipients" in jwe else 1
    return n


def short(d):
    return {k: d[k] for k in ("mediaType", "digest", "size")}


def main():
    if len(sys.argv) != 8:
        sys.exit(__doc__)
    vdir, plain, ptag, enc, etag, tool, command = sys.argv[1:]
    P, E = os.path.join(vdir, plain), os.path.join(vdir, enc)
    if os.path.exists(os.path.join(P, "manifest.json")):
        # skopeo's dir: transport (one manifest, blobs named by hex digest): a docker v2s2 source.
        with open(os.path.join(P, "manifest.json"), "rb") as f:
            raw = f.read()
        pdesc = {"mediaType": json.loads(raw)["mediaType"], "size": len(raw),
                 "digest": "sha256:" + hashlib.sha256(raw).hexdigest(), "_manifest": json.loads(raw)}
        pm = {None: pdesc}
    else:
        pm = dict(manifests(P, top(P, ptag)))
    entry = {"layout": enc, "tag": etag, "tool": tool, "command": command,
             "plain_layout": plain, "plain_tag": ptag, "manifests": []}
    for platform, edesc in manifests(E, top(E, etag)):
        pdesc = pm[platform]
        pman = pdesc["_manifest"] if "_manifest" in pdesc else blob(P, pdesc["digest"])
        eman = blob(E, edesc["digest"])
        layers = []
        for i, (pl, el) in enumerate(zip(pman["layers"], eman["layers"], strict=True)):
            ann = el.get("annotations", {})
            layers.append({"index": i, "plain": short(pl), "enc": short(el),
                           "encrypted": el["mediaType"].endswith("+encrypted"),
                           "jwe_recipients": jwe_recipients(ann),
                           "annotations": sorted(ann)})
        entry["manifests"].append({"platform": platform, "plain_manifest": pdesc["digest"],
                                   "enc_manifest": edesc["digest"],
                                   "config": eman["config"]["digest"], "layers": layers})
    path = os.path.join(vdir, "vector.json")
    doc = {"encryptions": []}
    if os.path.exists(path):
        with open(path) as f:
            doc = json.load(f)
    doc["encryptions"] = [e for e in doc["encryptions"] if e["layout"] != enc] + [entry]
    doc["keys"] = sorted(os.listdir(os.path.join(vdir, "keys")))
    with open(path, "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
