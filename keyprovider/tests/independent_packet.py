#!/usr/bin/env python3
"""Independent CoCo AnnotationPacket producer, written from the format description
only (not from cloak's code): AES-256-GCM under a 32-byte KEK, random 12-byte IV,
no AAD, ciphertext||tag; JSON {"kid","wrapped_data","iv","wrap_type":"A256GCM"}
with standard (padded) base64.

usage: independent_packet.py KEK_FILE KID PLAINTEXT_FILE [v1|v2]  -> packet JSON on stdout
"""
import base64
import json
import os
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def main():
    kek_file, kid, pt_file = sys.argv[1:4]
    form = sys.argv[4] if len(sys.argv) > 4 else "v1"
    kek = open(kek_file, "rb").read()
    if len(kek) != 32:
        sys.exit("KEK must be 32 bytes")
    plaintext = open(pt_file, "rb").read()
    iv = os.urandom(12)
    sealed = AESGCM(kek).encrypt(iv, plaintext, None)
    b64 = lambda b: base64.b64encode(b).decode("ascii")
    if form == "v2":
        packet = {"version": "0.1.0", "kid": kid, "wrapped_data": b64(sealed), "provider": "kbs",
                  "iv": b64(iv), "wrap_type": "A256GCM", "provider_settings": {}, "annotations": {}}
    else:
        packet = {"kid": kid, "wrapped_data": b64(sealed), "iv": b64(iv), "wrap_type": "A256GCM"}
    sys.stdout.write(json.dumps(packet))


if __name__ == "__main__":
    main()
