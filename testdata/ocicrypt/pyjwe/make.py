"""Independent JWE vectors made with Python `cryptography` (not with cloak), to
check cloak's JWE parser and algorithms against a second implementation.
Run from this folder: python3 make.py (keys from ../keys)."""
import base64, hashlib, hmac, json, os, struct
from cryptography.hazmat.primitives import serialization, hashes
from cryptography.hazmat.primitives.asymmetric import padding, ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.keywrap import aes_key_wrap
from cryptography.hazmat.primitives import padding as sympad

def b64u(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
def pub(name): return serialization.load_pem_public_key(open(f"../keys/{name}", "rb").read())
PAYLOAD = open("payload.json", "rb").read()

def oaep(k, cek, sha256=False):
    h = hashes.SHA256() if sha256 else hashes.SHA1()
    return k.encrypt(cek, padding.OAEP(mgf=padding.MGF1(h), algorithm=h, label=None))

def concat_kdf(z, alg, apu, apv, keylen):
    other = b"".join(struct.pack(">I", len(x)) + x for x in (alg.encode(), apu, apv)) + struct.pack(">I", keylen * 8)
    out, c = b"", 1
    while len(out) < keylen:
        out += hashlib.sha256(struct.pack(">I", c) + z + other).digest(); c += 1
    return out[:keylen]

def ecdh_kw(k, alg, cek, apu=b"", apv=b""):
    eph = ec.generate_private_key(k.curve)
    z = eph.exchange(ec.ECDH(), k)
    kek = concat_kdf(z, alg, apu, apv, {"ECDH-ES+A128KW": 16, "ECDH-ES+A192KW": 24, "ECDH-ES+A256KW": 32}[alg])
    n = eph.public_key().public_numbers(); size = (k.curve.key_size + 7) // 8
    crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[k.curve.name]
    epk = {"kty": "EC", "crv": crv, "x": b64u(n.x.to_bytes(size, "big")), "y": b64u(n.y.to_bytes(size, "big"))}
    return epk, aes_key_wrap(kek, cek)

def gcm(cek, protected_b64):
    iv = os.urandom(12)
    ct = AESGCM(cek).encrypt(iv, PAYLOAD, protected_b64.encode())
    return iv, ct[:-16], ct[-16:]

# 1. general JSON, 3 recipients, go-jose style stray top-level encrypted_key.
cek = os.urandom(32)
prot = b64u(json.dumps({"enc": "A256GCM"}, separators=(",", ":")).encode())
r0 = oaep(pub("rsa2048.pub.pem"), cek)
epk, r1 = ecdh_kw(pub("ec-P-256.pub.pem"), "ECDH-ES+A256KW", cek)
r2 = oaep(pub("rsa2048b.pub.pem"), cek, sha256=True)
iv, ct, tag = gcm(cek, prot)
general = {"protected": prot, "recipients": [
    {"header": {"alg": "RSA-OAEP", "kid": "rsa-a"}, "encrypted_key": b64u(r0)},
    {"header": {"alg": "ECDH-ES+A256KW", "epk": epk}, "encrypted_key": b64u(r1)},
    {"header": {"alg": "RSA-OAEP-256", "kid": "kbs:///default/key/rsa-b"}, "encrypted_key": b64u(r2)}],
    "encrypted_key": b64u(r0), "iv": b64u(iv), "ciphertext": b64u(ct), "tag": b64u(tag)}
open("general-3.json", "w").write(json.dumps(general))

# 2. flattened, ECDH-ES+A128KW on P-384 with apu/apv, header unprotected.
cek = os.urandom(32)
epk, ek = ecdh_kw(pub("ec-P-384.pub.pem"), "ECDH-ES+A128KW", cek, b"Alice", b"Bob")
prot = b64u(json.dumps({"enc": "A256GCM"}).encode())
iv, ct, tag = gcm(cek, prot)
flat = {"protected": prot, "header": {"alg": "ECDH-ES+A128KW", "epk": epk, "apu": b64u(b"Alice"), "apv": b64u(b"Bob")},
        "encrypted_key": b64u(ek), "iv": b64u(iv), "ciphertext": b64u(ct), "tag": b64u(tag)}
open("flattened-p384-a128kw.json", "w").write(json.dumps(flat))

# 3. compact, RSA-OAEP + A128CBC-HS256.
cek = os.urandom(32)
prot = b64u(json.dumps({"alg": "RSA-OAEP", "enc": "A128CBC-HS256"}).encode())
ek = oaep(pub("rsa2048.pub.pem"), cek)
iv = os.urandom(16)
p = sympad.PKCS7(128).padder(); padded = p.update(PAYLOAD) + p.finalize()
e = Cipher(algorithms.AES(cek[16:]), modes.CBC(iv)).encryptor(); ct = e.update(padded) + e.finalize()
al = struct.pack(">Q", len(prot) * 8)
tag = hmac.new(cek[:16], prot.encode() + iv + ct + al, hashlib.sha256).digest()[:16]
open("compact-cbc.txt", "w").write(".".join([prot, b64u(ek), b64u(iv), b64u(ct), b64u(tag)]))
