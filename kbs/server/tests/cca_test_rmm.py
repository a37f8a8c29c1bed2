#!/usr/bin/env python3
"""A test "RMM" for `cloak-pull --attester cca` (CLOAK_CCA_TEST_RMM): prints an Arm CCA
attestation token binding the 64-byte challenge given in hex as the first argument.

Written from the token format (the CBOR collection, tag 399, of a platform token and a
realm token, each a tagged COSE_Sign1 signed ES384; RMM 1.0's realm profile with the RAK
as a COSE_Key; the platform challenge is the SHA-256 of the RAK claim's bytes), not
from cloak's code: the tokens the broker verifies in this test come from an independent
encoder, with the published CCA test keys (testdata/attestation/cca/trustee__cpak-priv.json
for the platform, trustee__rak-priv.json for the realm).

Environment: CCA_TEST_RIM (hex, default 32 bytes of 0x11), CCA_TEST_PERSONALIZATION
(hex, up to 64 bytes, zero-padded; default zeros). Needs python3-cryptography.
"""

import base64
import hashlib
import json
import os
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

HERE = os.path.dirname(os.path.abspath(__file__))
KEYS = os.path.join(HERE, "..", "..", "..", "testdata", "attestation", "cca")
INSTANCE_ID = bytes.fromhex("0107060504030201000f0e0d0c0b0a090817161514131211101f1e1d1c1b1a1918")
IMPLEMENTATION_ID = bytes.fromhex("7f454c4602010100000000000000000003003e00010000005058000000000000")


# ---- a minimal deterministic CBOR encoder (RFC 8949): what a token needs -----------

def _head(major, n):
    if n < 24:
        return bytes([major << 5 | n])
    for extra, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | extra]) + n.to_bytes(size, "big")
    raise ValueError("integer too large")


class Tag:
    def __init__(self, number, value):
        self.number, self.value = number, value


def cbor(v):
    if isinstance(v, bool) or v is None:
        raise TypeError("not used in tokens")
    if isinstance(v, int):
        return _head(0, v) if v >= 0 else _head(1, -1 - v)
    if isinstance(v, bytes):
        return _head(2, len(v)) + v
    if isinstance(v, str):
        b = v.encode()
        return _head(3, len(b)) + b
    if isinstance(v, list):
        return _head(4, len(v)) + b"".join(cbor(x) for x in v)
    if isinstance(v, dict):
        return _head(5, len(v)) + b"".join(cbor(k) + cbor(x) for k, x in v.items())
    if isinstance(v, Tag):
        return _head(6, v.number) + cbor(v.value)
    raise TypeError(type(v))


# ---- keys and COSE_Sign1 ------------------------------------------------------------

def b64u(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def load_key(name):
    with open(os.path.join(KEYS, name)) as f:
        jwk = json.load(f)
    key = ec.derive_private_key(int.from_bytes(b64u(jwk["d"]), "big"), ec.SECP384R1())
    return key, b64u(jwk["x"]), b64u(jwk["y"])


def sign1(key, payload):
    protected = cbor({1: -35})  # alg: ES384
    tbs = cbor(["Signature1", protected, b"", payload])
    r, s = decode_dss_signature(key.sign(tbs, ec.ECDSA(hashes.SHA384())))
    signature = r.to_bytes(48, "big") + s.to_bytes(48, "big")
    return cbor(Tag(18, [protected, {}, payload, signature]))


def token(challenge, rim, personalization):
    cpak, _, _ = load_key("trustee__cpak-priv.json")
    rak, rak_x, rak_y = load_key("trustee__rak-priv.json")
    rak_claim = cbor({1: 2, -1: 2, -2: rak_x, -3: rak_y})  # COSE_Key: EC2, P-384
    realm = {
        10: challenge,
        44235: personalization,
        44236: "sha-256",
        44237: rak_claim,
        44238: rim,
        44239: [bytes([i]) * 32 for i in range(1, 5)],
        44240: "sha-256",
        265: "tag:arm.com,2023:realm#1.0.0",
    }
    platform = {
        265: "tag:arm.com,2023:cca_platform#1.0.0",
        10: hashlib.sha256(rak_claim).digest(),
        2396: IMPLEMENTATION_ID,
        256: INSTANCE_ID,
        2401: b"\xcf" * 4,
        2395: 0x3003,  # lifecycle: secured
        2399: [{1: "RSE_BL1_2", 2: b"\x9a" * 32, 5: b"\x53" * 32}],
        2402: "sha-256",
    }
    return cbor(Tag(399, {44234: sign1(cpak, cbor(platform)), 44241: sign1(rak, cbor(realm))}))


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: cca_test_rmm.py CHALLENGE_HEX (64 bytes)")
    challenge = bytes.fromhex(sys.argv[1])
    if len(challenge) != 64:
        sys.exit(f"the challenge is {len(challenge)} bytes, expected 64")
    rim = bytes.fromhex(os.environ.get("CCA_TEST_RIM", "11" * 32))
    personalization = bytes.fromhex(os.environ.get("CCA_TEST_PERSONALIZATION", "")).ljust(64, b"\0")
    sys.stdout.buffer.write(token(challenge, rim, personalization))


if __name__ == "__main__":
    main()
