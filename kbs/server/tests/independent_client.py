#!/usr/bin/env python3
"""Independent KBS client (Trustee protocol 0.4.0, sample TEE), written from the
protocol notes with `cryptography` and `urllib` only. Usage:
    independent_client.py URL REPO/TYPE/TAG EXPECTED_HEX
Exits 0 when the resource decrypts to EXPECTED_HEX; prints the reason otherwise."""
import base64, hashlib, json, sys, urllib.request
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def unb64u(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def jcs(v):
    # RFC 8785 for this data (strings and objects only): sorted keys, no spaces.
    return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def post(url, body, cookie=None):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    if cookie:
        req.add_header("Cookie", cookie)
    with urllib.request.urlopen(req) as r:
        return r.headers, json.loads(r.read())


def main():
    url, path, expected = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
    hdrs, chal = post(url + "/kbs/v0/auth", {"version": "0.4.0", "tee": "sample",
                      "extra-params": {"supported-hash-algorithms": ["sha384"]}})
    cookie = hdrs["Set-Cookie"].split(";")[0]
    assert cookie.startswith("kbs-session-id="), cookie
    nonce = chal["nonce"]
    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key().public_numbers()
    jwk = {"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW",
           "x": b64u(pub.x.to_bytes(32, "big")), "y": b64u(pub.y.to_bytes(32, "big"))}
    rd = hashlib.sha384(jcs({"tee-pubkey": jwk, "nonce": nonce, "additional-evidence": ""})).digest()
    evidence = {"svn": "1", "report_data": base64.b64encode(rd).decode()}
    _, tok = post(url + "/kbs/v0/attest", {
        "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
        "tee-evidence": {"primary_evidence": evidence, "additional_evidence": ""}}, cookie)
    req = urllib.request.Request(url + "/kbs/v0/resource/" + path,
                                 headers={"Authorization": "Bearer " + tok["token"]})
    with urllib.request.urlopen(req) as r:
        jwe = json.loads(r.read())
    header = json.loads(unb64u(jwe["protected"]))
    assert header["alg"] == "ECDH-ES+A256KW" and header["enc"] == "A256GCM", header
    epk = header["epk"]
    peer = ec.EllipticCurvePublicNumbers(int.from_bytes(unb64u(epk["x"]), "big"),
                                         int.from_bytes(unb64u(epk["y"]), "big"),
                                         ec.SECP256R1()).public_key()
    z = key.exchange(ec.ECDH(), peer)
    alg = b"ECDH-ES+A256KW"
    otherinfo = len(alg).to_bytes(4, "big") + alg + (0).to_bytes(4, "big") * 2 + (256).to_bytes(4, "big")
    h = hashes.Hash(hashes.SHA256())
    h.update((1).to_bytes(4, "big") + z + otherinfo)
    kek = h.finalize()
    cek = aes_key_unwrap(kek, unb64u(jwe["encrypted_key"]))
    # The guest re-serialises the header: compact, alg and enc first, then sorted keys.
    rest = {k: v for k, v in header.items() if k not in ("alg", "enc")}
    hdr = '{"alg":%s,"enc":%s' % (json.dumps(header["alg"]), json.dumps(header["enc"]))
    for k in sorted(rest):
        hdr += ",%s:%s" % (json.dumps(k), json.dumps(rest[k], sort_keys=True, separators=(",", ":")))
    hdr += "}"
    aad = b64u(hdr.encode()).encode()
    pt = AESGCM(cek).decrypt(unb64u(jwe["iv"]), unb64u(jwe["ciphertext"]) + unb64u(jwe["tag"]), aad)
    if pt != expected:
        print("plaintext mismatch", file=sys.stderr)
        sys.exit(1)
    print("ok")


if __name__ == "__main__":
    main()
