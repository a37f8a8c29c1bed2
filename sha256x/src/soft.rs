//! One stream at a time through the `sha2` crate's compression function, which
//! uses SHA-NI (or the ARMv8 SHA2 instructions) when the CPU has them.

use sha2::digest::generic_array::GenericArray;

/// Compress whole 64-byte blocks into `state`.
pub(crate) fn compress(state: &mut [u32; 8], blocks: &[u8]) {
    debug_assert!(blocks.len().is_multiple_of(crate::BLOCK));
    for block in blocks.chunks_exact(crate::BLOCK) {
        sha2::compress256(state, std::slice::from_ref(GenericArray::from_slice(block)));
    }
}
