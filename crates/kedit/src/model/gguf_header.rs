//! A bounded walk over a GGUF header, run before candle's reader.
//!
//! Every count and length in a GGUF header is read from the file, and a hostile file can
//! make them anything. candle's reader bounds most of them by the bytes left in the file,
//! but not all: `general.alignment = 0` divides by zero inside it, tensor dimensions
//! whose product overflows wrap around, and its in-memory metadata is ~32 bytes per
//! element whatever the element's size on disk. This walk reads the header as candle
//! does, allocating nothing beyond a small per-tensor list, and refuses it (naming the
//! file and the field) unless every length fits the file, every tensor's data lies inside
//! the file, and the metadata candle would build stays under [`MAX_METADATA_BYTES`].

use std::io::Read;
use std::path::Path;

use candle_core::quantized::GgmlDType;

use crate::error::{Error, Result};

/// The most memory the parsed metadata may take (the largest real tokenizers take ~40 MB).
pub const MAX_METADATA_BYTES: u64 = 1 << 30;
/// Deeper arrays of arrays than this are no real metadata.
const MAX_DEPTH: usize = 4;
/// Elements of one tensor: 2^40 f32 weights would be 4 TiB.
const MAX_TENSOR_ELEMENTS: u64 = 1 << 40;
/// What candle keeps per metadata value (`gguf_file::Value`) and per map entry.
const VALUE_BYTES: u64 = 32;
const ENTRY_BYTES: u64 = 64;

/// What the walk learned: where the tensor data starts.
#[derive(Debug)]
pub struct Header {
    pub tensor_count: u64,
    pub metadata_count: u64,
    pub tensor_data_offset: u64,
}

struct Walk<'a, R> {
    path: &'a Path,
    r: R,
    pos: u64,
    len: u64,
    /// Lengths are u32 in version 1, u64 after.
    v1: bool,
    memory: u64,
}

impl<R: Read> Walk<'_, R> {
    fn err(&self, what: impl std::fmt::Display) -> Error {
        Error::model(
            self.path,
            format!(
                "not a readable GGUF file: bad header at byte {}: {what}",
                self.pos
            ),
        )
    }

    /// Something runs past the end of the file: most often the file was cut short.
    fn past_end(&self, what: impl std::fmt::Display) -> Error {
        Error::model(
            self.path,
            format!(
                "the file is truncated (or a length in it is corrupt): {what}, past its end at \
                 byte {}, inside the GGUF header (metadata and tensor list)",
                self.len
            ),
        )
    }

    fn left(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        if self.left() < N as u64 {
            return Err(self.past_end(format!("{N} bytes at byte {}", self.pos)));
        }
        self.r
            .read_exact(&mut b)
            .map_err(|e| Error::io(self.path, e))?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    fn length(&mut self) -> Result<u64> {
        if self.v1 {
            Ok(self.u32()? as u64)
        } else {
            self.u64()
        }
    }

    fn prefix(&self) -> u64 {
        if self.v1 {
            4
        } else {
            8
        }
    }

    /// Skips `n` bytes, which must be in the file.
    fn skip(&mut self, n: u64, what: &str) -> Result<()> {
        if n > self.left() {
            return Err(self.past_end(format!("{what} of {n} bytes at byte {}", self.pos)));
        }
        let copied = std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink())
            .map_err(|e| Error::io(self.path, e))?;
        if copied != n {
            return Err(self.err("the file ended early"));
        }
        self.pos += n;
        Ok(())
    }

    fn charge(&mut self, bytes: u64, what: &str) -> Result<()> {
        self.memory = self.memory.saturating_add(bytes);
        if self.memory > MAX_METADATA_BYTES {
            return Err(self.err(format!(
                "{what}: the metadata would take more than {MAX_METADATA_BYTES} bytes of memory"
            )));
        }
        Ok(())
    }

    /// A string: its length must fit the file; returns it when `keep` (keys), else skips.
    fn string(&mut self, what: &str, keep: bool) -> Result<Option<String>> {
        let n = self.length()?;
        if n > self.left() {
            return Err(self.past_end(format!(
                "{what}: a string of {n} bytes at byte {}",
                self.pos
            )));
        }
        self.charge(n, what)?;
        if keep {
            if n > 1 << 16 {
                return Err(self.err(format!("{what}: a name of {n} bytes")));
            }
            let mut b = vec![0u8; n as usize];
            self.r
                .read_exact(&mut b)
                .map_err(|e| Error::io(self.path, e))?;
            self.pos += n;
            Ok(Some(String::from_utf8_lossy(&b).into_owned()))
        } else {
            self.skip(n, what)?;
            Ok(None)
        }
    }

    /// The smallest size on disk of one value of type `ty`.
    fn min_size(&self, ty: u32) -> u64 {
        match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 => self.prefix(),
            9 => 4 + self.prefix(),
            _ => 8,
        }
    }

    /// One value of type `ty`; an unsigned integer value is returned (for the alignment).
    fn value(&mut self, ty: u32, depth: usize, key: &str) -> Result<Option<i128>> {
        self.charge(VALUE_BYTES, key)?;
        Ok(match ty {
            0 => Some(self.bytes::<1>()?[0] as i128),
            1 => Some(self.bytes::<1>()?[0] as i8 as i128),
            2 => Some(u16::from_le_bytes(self.bytes()?) as i128),
            3 => Some(i16::from_le_bytes(self.bytes()?) as i128),
            4 => Some(self.u32()? as i128),
            5 => Some(self.u32()? as i32 as i128),
            6 => {
                self.bytes::<4>()?;
                None
            }
            7 => {
                let b = self.bytes::<1>()?[0];
                if b > 1 {
                    return Err(self.err(format!("`{key}`: boolean byte {b}")));
                }
                None
            }
            8 => {
                self.string(&format!("`{key}`"), false)?;
                None
            }
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(self.err(format!("`{key}`: arrays nested deeper than {MAX_DEPTH}")));
                }
                let inner = self.u32()?;
                if inner > 12 {
                    return Err(self.err(format!("`{key}`: unknown array element type {inner}")));
                }
                let n = self.length()?;
                if n.saturating_mul(self.min_size(inner)) > self.left() {
                    return Err(self.past_end(format!(
                        "`{key}`: an array of {n} elements at byte {}",
                        self.pos
                    )));
                }
                // The vector candle grows may hold twice its length while it grows.
                self.charge(n.saturating_mul(VALUE_BYTES), key)?;
                for _ in 0..n {
                    self.value(inner, depth + 1, key)?;
                }
                None
            }
            10 | 11 => Some(match ty {
                10 => self.u64()? as i128,
                _ => self.u64()? as i64 as i128,
            }),
            12 => {
                self.bytes::<8>()?;
                None
            }
            other => return Err(self.err(format!("`{key}`: unknown value type {other}"))),
        })
    }
}

/// candle's tensor types by their GGUF number.
fn ggml_dtype(n: u32) -> Option<GgmlDType> {
    use GgmlDType::*;
    Some(match n {
        0 => F32,
        1 => F16,
        2 => Q4_0,
        3 => Q4_1,
        6 => Q5_0,
        7 => Q5_1,
        8 => Q8_0,
        9 => Q8_1,
        10 => Q2K,
        11 => Q3K,
        12 => Q4K,
        13 => Q5K,
        14 => Q6K,
        15 => Q8K,
        30 => BF16,
        _ => return None,
    })
}

/// Walks the header of the GGUF file `r` (positioned at its start) of `len` bytes.
pub fn scan(path: &Path, r: impl Read, len: u64) -> Result<Header> {
    let mut w = Walk {
        path,
        r,
        pos: 0,
        len,
        v1: false,
        memory: 0,
    };
    let magic = w.u32()?;
    if magic != 0x4655_4747 && magic != 0x4747_5546 {
        return Err(w.err(format!("magic 0x{magic:08x} is not GGUF's")));
    }
    match w.u32()? {
        1 => w.v1 = true,
        2 | 3 => {}
        v => return Err(w.err(format!("GGUF version {v} is not supported (1, 2 or 3)"))),
    }
    let tensor_count = w.length()?;
    let metadata_count = w.length()?;
    let per_kv = w.prefix() + 4 + 1;
    let per_tensor = w.prefix() + 4 + 4 + 8;
    let needed = metadata_count
        .saturating_mul(per_kv)
        .saturating_add(tensor_count.saturating_mul(per_tensor));
    if needed > w.left() {
        return Err(w.past_end(format!(
            "it declares {tensor_count} tensors and {metadata_count} metadata entries, which \
             need at least {needed} bytes after byte {}",
            w.pos
        )));
    }
    w.charge(
        (metadata_count + tensor_count).saturating_mul(ENTRY_BYTES),
        "the entry counts",
    )?;
    let mut alignment = 32u64;
    for i in 0..metadata_count {
        let key = w
            .string(&format!("metadata key {i}"), true)?
            .unwrap_or_default();
        let ty = w.u32()?;
        let v = w.value(ty, 0, &key)?;
        if key == "general.alignment" {
            // candle uses an alignment of an 8-, 16- or 32-bit integer type, else 32.
            if let (Some(a), 0..=5) = (v, ty) {
                if a <= 0 || (a as u64).count_ones() != 1 {
                    return Err(Error::model(
                        path,
                        format!(
                            "metadata `general.alignment` is {a}; it must be a positive power of two"
                        ),
                    ));
                }
                alignment = a as u64;
            }
        }
    }
    let mut spans = Vec::new();
    for i in 0..tensor_count {
        let name = w
            .string(&format!("tensor name {i}"), true)?
            .unwrap_or_default();
        let n_dims = w.u32()?;
        if n_dims > 4 {
            return Err(Error::tensor(
                path,
                &name,
                format!("has {n_dims} dimensions; GGUF allows at most 4"),
            ));
        }
        let mut elements = 1u64;
        for _ in 0..n_dims {
            let d = w.length()?;
            elements = elements.saturating_mul(d);
        }
        if elements > MAX_TENSOR_ELEMENTS {
            return Err(Error::tensor(
                path,
                &name,
                format!("has {elements} or more elements; at most {MAX_TENSOR_ELEMENTS} are read"),
            ));
        }
        let ty = w.u32()?;
        let dtype = ggml_dtype(ty)
            .ok_or_else(|| Error::tensor(path, &name, format!("has unknown type {ty}")))?;
        let block = dtype.block_size() as u64;
        if elements % block != 0 {
            return Err(Error::tensor(
                path,
                &name,
                format!("has {elements} elements, not a multiple of its type's block of {block}"),
            ));
        }
        let bytes = elements / block * dtype.type_size() as u64;
        let offset = w.u64()?;
        spans.push((offset, bytes, name));
    }
    let data = w.pos.div_ceil(alignment).saturating_mul(alignment);
    for (offset, bytes, name) in spans {
        let end = data.saturating_add(offset).saturating_add(bytes);
        if end > len {
            return Err(Error::tensor(
                path,
                &name,
                format!(
                    "the file is truncated: this tensor's data spans bytes {}..{end}, but the \
                     file ends at byte {len}",
                    data.saturating_add(offset)
                ),
            ));
        }
    }
    Ok(Header {
        tensor_count,
        metadata_count,
        tensor_data_offset: data,
    })
}
