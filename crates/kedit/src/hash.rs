//! A fast, non-cryptographic 64-bit hash for fingerprints of weights and corpus files.
//!
//! Cache keys must change when the bytes change; they need not resist an adversary. Four
//! independent multiply–rotate lanes keep the CPU's multipliers busy, so hashing the
//! 0.5 GB of SmolLM2's f32 weights takes a fraction of a second. The output is fixed by this
//! code (not by a dependency's version), so cache file names stay valid across upgrades.

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;

/// A streaming hasher: feed words or bytes, then `finish`.
#[derive(Clone, Debug)]
pub struct Fast64 {
    lanes: [u64; 4],
    len: u64,
}

impl Default for Fast64 {
    fn default() -> Self {
        Self::new()
    }
}

impl Fast64 {
    pub fn new() -> Self {
        Fast64 {
            lanes: [P1, P2, P3, P1 ^ P2],
            len: 0,
        }
    }

    #[inline(always)]
    fn mix(lane: u64, word: u64) -> u64 {
        (lane ^ word.wrapping_mul(P2))
            .rotate_left(31)
            .wrapping_mul(P1)
    }

    /// Feeds 64-bit words; four at a time go to the four lanes.
    pub fn words(&mut self, words: &[u64]) {
        let mut chunks = words.chunks_exact(4);
        for c in &mut chunks {
            self.lanes[0] = Self::mix(self.lanes[0], c[0]);
            self.lanes[1] = Self::mix(self.lanes[1], c[1]);
            self.lanes[2] = Self::mix(self.lanes[2], c[2]);
            self.lanes[3] = Self::mix(self.lanes[3], c[3]);
        }
        for (i, &w) in chunks.remainder().iter().enumerate() {
            self.lanes[i] = Self::mix(self.lanes[i], w);
        }
        self.len = self.len.wrapping_add(words.len() as u64);
    }

    pub fn u64(&mut self, x: u64) {
        self.words(&[x]);
    }

    /// Feeds f32 values by their bit patterns (so -0.0 and 0.0, or two NaNs, differ).
    pub fn f32s(&mut self, xs: &[f32]) {
        const BLOCK: usize = 1024;
        let mut buf = [0u64; BLOCK / 2];
        for block in xs.chunks(BLOCK) {
            let pairs = block.chunks_exact(2);
            let odd = pairs.remainder().first().map(|x| x.to_bits() as u64);
            let mut n = 0;
            for p in pairs {
                buf[n] = p[0].to_bits() as u64 | (p[1].to_bits() as u64) << 32;
                n += 1;
            }
            if let Some(o) = odd {
                buf[n] = o | 1 << 63;
                n += 1;
            }
            self.words(&buf[..n]);
        }
    }

    pub fn f64s(&mut self, xs: &[f64]) {
        for block in xs.chunks(512) {
            let words: Vec<u64> = block.iter().map(|x| x.to_bits()).collect();
            self.words(&words);
        }
    }

    pub fn bytes(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        let mut buf = [0u64; 256];
        let mut n = 0;
        for c in &mut chunks {
            buf[n] = u64::from_le_bytes(c.try_into().expect("chunks of 8"));
            n += 1;
            if n == buf.len() {
                self.words(&buf);
                n = 0;
            }
        }
        self.words(&buf[..n]);
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            // The length byte tells "ab" from "ab\0".
            self.u64(u64::from_le_bytes(last) ^ (rest.len() as u64) << 59);
        }
    }

    pub fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.bytes(s.as_bytes());
    }

    pub fn finish(&self) -> u64 {
        let mut h = self.len.wrapping_mul(P3);
        for (i, lane) in self.lanes.iter().enumerate() {
            h = (h ^ lane.rotate_left(i as u32 * 16)).wrapping_mul(P1);
            h ^= h >> 29;
        }
        h = h.wrapping_mul(P2);
        h ^ (h >> 32)
    }
}

/// The hash of a byte string.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = Fast64::new();
    h.bytes(bytes);
    h.finish()
}

/// The sha256 of a file's contents, in hex, read in chunks (data files can be large).
pub fn sha256_file(path: &std::path::Path) -> crate::error::Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| crate::error::Error::io(path, e))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| crate::error::Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_sensitive() {
        assert_eq!(hash_bytes(b"kedit"), hash_bytes(b"kedit"));
        assert_ne!(hash_bytes(b"kedit"), hash_bytes(b"kedjt"));
        assert_ne!(hash_bytes(b"ab"), hash_bytes(b"ab\0"));
        assert_ne!(hash_bytes(b""), hash_bytes(b"\0"));
        let mut a = Fast64::new();
        a.f32s(&[1.0, 2.0, 3.0]);
        let mut b = Fast64::new();
        b.f32s(&[1.0, 2.0, 3.0000002]);
        assert_ne!(a.finish(), b.finish());
        let mut z = Fast64::new();
        z.f32s(&[0.0]);
        let mut nz = Fast64::new();
        nz.f32s(&[-0.0]);
        assert_ne!(z.finish(), nz.finish());
    }

    #[test]
    fn position_matters() {
        let mut a = Fast64::new();
        a.words(&[1, 2, 3, 4, 5]);
        let mut b = Fast64::new();
        b.words(&[2, 1, 3, 4, 5]);
        assert_ne!(a.finish(), b.finish());
    }
}
