"""Derive the JWK test keys from the committed PEM keys (run from testdata/ocicrypt/keys)."""
import base64, json
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa, ec

def b64u(n, length=None):
    length = length or (n.bit_length() + 7) // 8
    return base64.urlsafe_b64encode(n.to_bytes(length, "big")).rstrip(b"=").decode()

def jwk(path, kid, alg=None):
    k = serialization.load_pem_private_key(open(path, "rb").read(), None)
    if isinstance(k, rsa.RSAPrivateKey):
        p = k.private_numbers()
        pub = {"kty": "RSA", "n": b64u(p.public_numbers.n), "e": b64u(p.public_numbers.e)}
        priv = dict(pub, d=b64u(p.d), p=b64u(p.p), q=b64u(p.q), dp=b64u(p.dmp1), dq=b64u(p.dmq1), qi=b64u(p.iqmp))
    else:
        p = k.private_numbers()
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[k.curve.name]
        size = (k.curve.key_size + 7) // 8
        pub = {"kty": "EC", "crv": crv, "x": b64u(p.public_numbers.x, size), "y": b64u(p.public_numbers.y, size)}
        priv = dict(pub, d=b64u(p.private_value, size))
    for d in (pub, priv):
        d["kid"] = kid
        if alg:
            d["alg"] = alg
    return pub, priv

for src, name, kid, alg in [
    ("rsa2048b.pem", "rsa2048b", "kbs:///default/key/rsa-b", "RSA-OAEP-256"),
    ("ec-P-384.pem", "ec-P-384", "kbs:///default/key/ec-384", "ECDH-ES+A128KW"),
]:
    pub, priv = jwk(src, kid, alg)
    json.dump(pub, open(f"{name}.pub.jwk", "w"))
    json.dump(priv, open(f"{name}.jwk", "w"))
