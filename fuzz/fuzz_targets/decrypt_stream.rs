//! Fuzz the decrypting reader over arbitrary ciphertext and read chunking: it
//! must end in `Ok` only when the HMAC matched, and an error must stay an error.
//! The combined-pass variants (blob digests hashed in the HMAC's SIMD pass) must
//! agree with the plain ones and with OpenSSL.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloak_fuzz_lib::targets::decrypt_stream(data));
