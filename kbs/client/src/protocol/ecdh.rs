//! ECDH on the NIST curves of the KBS protocol (P-256, P-384, P-521), shared by the
//! guest (opening a resource) and the broker (wrapping one), directly on OpenSSL's EC
//! primitives.
//!
//! Why not `openssl::derive::Deriver`: on OpenSSL 3 every EVP derive exports both keys
//! to the provider and rebuilds the curve group from its parameters, and
//! `EcKey::from_public_key_affine_coordinates` runs the `n·Q = O` check twice; together
//! they cost several times the one scalar multiplication ECDH needs. Here each curve's
//! group is built once per process, and a peer point is validated once, completely:
//! coordinates below p, on the curve, not the point at infinity. On these curves the
//! cofactor is 1, so that is full public-key validation (SP 800-56A 5.6.2.3.3), and
//! `Z = x(d·Q)` is exactly what `ECDH_compute_key` computes.

use std::sync::OnceLock;

use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcGroupRef, EcKey, EcKeyRef, EcPoint, EcPointRef};
use openssl::error::ErrorStack;
use openssl::nid::Nid;
use openssl::pkey::{HasPublic, Private};
use zeroize::Zeroizing;

/// Why an ECDH step failed.
#[derive(Debug, thiserror::Error)]
pub enum EcdhError {
    /// The peer's public key is not a valid point of the curve.
    #[error("invalid EC public key: {0}")]
    InvalidPoint(&'static str),
    /// OpenSSL failed (allocation, RNG).
    #[error("EC operation failed")]
    Crypto(#[from] ErrorStack),
}

/// A NIST prime curve as JOSE names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
    P521,
}

/// A curve's group and field prime, built once.
struct CurveData {
    group: EcGroup,
    p: BigNum,
    /// The generator's affine coordinates, written over secret points before they are freed.
    gx: BigNum,
    gy: BigNum,
}

impl Curve {
    /// The curve of a JWK `crv` value; None for anything else.
    pub fn from_jwk(crv: &str) -> Option<Curve> {
        match crv {
            "P-256" => Some(Curve::P256),
            "P-384" => Some(Curve::P384),
            "P-521" => Some(Curve::P521),
            _ => None,
        }
    }

    /// The JWK `crv` name.
    pub fn jwk_name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
            Curve::P521 => "P-521",
        }
    }

    /// Length in bytes of one coordinate (and of the ECDH secret `Z`).
    pub fn coordinate_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }

    fn data(self) -> Result<&'static CurveData, EcdhError> {
        static P256: OnceLock<Option<CurveData>> = OnceLock::new();
        static P384: OnceLock<Option<CurveData>> = OnceLock::new();
        static P521: OnceLock<Option<CurveData>> = OnceLock::new();
        let (cell, nid) = match self {
            Curve::P256 => (&P256, Nid::X9_62_PRIME256V1),
            Curve::P384 => (&P384, Nid::SECP384R1),
            Curve::P521 => (&P521, Nid::SECP521R1),
        };
        let build = || -> Result<CurveData, ErrorStack> {
            let group = EcGroup::from_curve_name(nid)?;
            let mut ctx = BigNumContext::new()?;
            let (mut p, mut a, mut b) = (BigNum::new()?, BigNum::new()?, BigNum::new()?);
            group.components_gfp(&mut p, &mut a, &mut b, &mut ctx)?;
            let (mut gx, mut gy) = (BigNum::new()?, BigNum::new()?);
            if let Some(g) = group.generator_opt() {
                g.affine_coordinates(&group, &mut gx, &mut gy, &mut ctx)?;
            }
            Ok(CurveData { group, p, gx, gy })
        };
        // A failure here is an OpenSSL without the curve: it will not start working
        // later, so it is remembered like a success.
        cell.get_or_init(|| build().ok()).as_ref().ok_or_else(|| EcdhError::Crypto(ErrorStack::get()))
    }

    /// The curve's group (built once per process).
    pub fn group(self) -> Result<&'static EcGroupRef, EcdhError> {
        Ok(&self.data()?.group)
    }

    /// A fresh key pair on this curve.
    pub fn generate(self) -> Result<EcKey<Private>, EcdhError> {
        Ok(EcKey::generate(self.group()?)?)
    }

    /// The fixed-width big-endian affine coordinates (x, y) of `key`'s public point,
    /// as a JWK carries them (RFC 7518 §6.2.1.2).
    pub fn public_coordinates<T: HasPublic>(
        self,
        key: &EcKeyRef<T>,
    ) -> Result<(Vec<u8>, Vec<u8>), EcdhError> {
        let group = self.group()?;
        let mut ctx = BigNumContext::new()?;
        let (mut x, mut y) = (BigNum::new()?, BigNum::new()?);
        key.public_key().affine_coordinates(group, &mut x, &mut y, &mut ctx)?;
        let len = self.coordinate_len() as i32;
        Ok((x.to_vec_padded(len)?, y.to_vec_padded(len)?))
    }

    /// The peer's public point from its big-endian affine coordinates, fully validated.
    pub fn peer_point(self, x: &[u8], y: &[u8]) -> Result<EcPoint, EcdhError> {
        let len = self.coordinate_len();
        if x.len() != len || y.len() != len {
            return Err(EcdhError::InvalidPoint("coordinate length does not match the curve"));
        }
        let data = self.data()?;
        let (bx, by) = (BigNum::from_slice(x)?, BigNum::from_slice(y)?);
        // OpenSSL reduces coordinates mod p silently; a value >= p is an alias, refuse it.
        if bx >= data.p || by >= data.p {
            return Err(EcdhError::InvalidPoint("coordinate is not below the field prime"));
        }
        let mut ctx = BigNumContext::new()?;
        let mut point = EcPoint::new(&data.group)?;
        point
            .set_affine_coordinates_gfp(&data.group, &bx, &by, &mut ctx)
            .map_err(|_| EcdhError::InvalidPoint("point is not on the curve"))?;
        // set_affine_coordinates already refuses off-curve points on OpenSSL 3; checked
        // again explicitly because an invalid-curve point would leak our private key.
        if !point.is_on_curve(&data.group, &mut ctx)? {
            return Err(EcdhError::InvalidPoint("point is not on the curve"));
        }
        if point.is_infinity(&data.group) {
            return Err(EcdhError::InvalidPoint("point at infinity"));
        }
        Ok(point)
    }

    /// The ECDH shared secret `Z`: the x coordinate of `own · peer`, fixed width.
    /// `peer` must come from [`Curve::peer_point`] and `own` must be on this curve.
    pub fn shared_secret(
        self,
        own: &EcKeyRef<Private>,
        peer: &EcPointRef,
    ) -> Result<Zeroizing<Vec<u8>>, EcdhError> {
        let data = self.data()?;
        let group = &data.group;
        let mut ctx = BigNumContext::new()?;
        let mut shared = EcPoint::new(group)?;
        shared.mul2(group, peer, own.private_key(), &mut ctx)?;
        if shared.is_infinity(group) {
            return Err(EcdhError::InvalidPoint("shared point is at infinity"));
        }
        let (mut x, mut y) = (BigNum::new()?, BigNum::new()?);
        shared.affine_coordinates(group, &mut x, &mut y, &mut ctx)?;
        let z = Zeroizing::new(x.to_vec_padded(self.coordinate_len() as i32)?);
        // Best effort: BigNum and EcPoint are freed without being cleared, so overwrite
        // the copies of the secret point we own (OpenSSL's ECDH clears its own).
        x.clear();
        y.clear();
        shared.set_affine_coordinates_gfp(group, &data.gx, &data.gy, &mut ctx)?;
        Ok(z)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use openssl::derive::Deriver;
    use openssl::pkey::PKey;

    /// The shared secret equals OpenSSL's own ECDH (EVP derive) on every curve.
    #[test]
    fn matches_openssl_derive() {
        for curve in [Curve::P256, Curve::P384, Curve::P521] {
            let a = curve.generate().unwrap();
            let b = curve.generate().unwrap();
            let (bx, by) = curve.public_coordinates(&b).unwrap();
            assert_eq!(bx.len(), curve.coordinate_len());
            let peer = curve.peer_point(&bx, &by).unwrap();
            let z = curve.shared_secret(&a, &peer).unwrap();
            let pa = PKey::from_ec_key(a).unwrap();
            let pb = PKey::from_ec_key(b).unwrap();
            let mut d = Deriver::new(&pa).unwrap();
            d.set_peer(&pb).unwrap();
            assert_eq!(&z[..], &d.derive_to_vec().unwrap()[..], "{curve:?}");
            assert_eq!(Curve::from_jwk(curve.jwk_name()), Some(curve));
        }
    }

    #[test]
    fn invalid_points_are_refused() {
        let c = Curve::P256;
        let k = c.generate().unwrap();
        let (x, mut y) = c.public_coordinates(&k).unwrap();
        assert!(c.peer_point(&x, &y[..31]).is_err());
        // Off the curve.
        y[31] ^= 1;
        assert!(matches!(c.peer_point(&x, &y), Err(EcdhError::InvalidPoint(_))));
        // x + p is an alias of x that OpenSSL would reduce silently.
        let (_, y) = c.public_coordinates(&k).unwrap();
        let mut p = BigNum::new().unwrap();
        let (mut a, mut b) = (BigNum::new().unwrap(), BigNum::new().unwrap());
        c.group()
            .unwrap()
            .components_gfp(&mut p, &mut a, &mut b, &mut BigNumContext::new().unwrap())
            .unwrap();
        let mut big = BigNum::new().unwrap();
        big.checked_add(&BigNum::from_slice(&x).unwrap(), &p).unwrap();
        let big = big.to_vec();
        if big.len() == 32 {
            assert!(c.peer_point(&big, &y).is_err());
        }
        // All-zero coordinates: (0, 0) is not on P-256.
        assert!(c.peer_point(&[0u8; 32], &[0u8; 32]).is_err());
    }
}
