//! Writing GGUF files (version 3) of f32 and f16 tensors, streamed one tensor at a time and
//! written atomically ([`fsio`]).
//!
//! candle has a GGUF writer, but it takes quantised tensors held in memory all at once and
//! keeps its value serialiser private; this one converts each tensor as it writes it.

use std::io::Write;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::fsio;

/// GGUF's default alignment of tensor data (`general.alignment` is not written).
const ALIGNMENT: u64 = 32;

/// The type a tensor is stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgufDtype {
    F32,
    F16,
}

impl GgufDtype {
    /// ggml's type number.
    fn id(self) -> u32 {
        match self {
            GgufDtype::F32 => 0,
            GgufDtype::F16 => 1,
        }
    }

    fn size(self) -> u64 {
        match self {
            GgufDtype::F32 => 4,
            GgufDtype::F16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GgufDtype::F32 => "f32",
            GgufDtype::F16 => "f16",
        }
    }
}

impl std::str::FromStr for GgufDtype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(GgufDtype::F32),
            "f16" => Ok(GgufDtype::F16),
            other => Err(Error::invalid(format!(
                "GGUF type `{other}`: expected f32 or f16"
            ))),
        }
    }
}

/// One tensor to write: its GGUF name, its values in kedit's row-major layout (GGUF lists
/// the dimensions innermost first; the writer reverses them) and its stored type.
pub struct GgufTensor {
    pub name: String,
    pub tensor: Tensor,
    pub dtype: GgufDtype,
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// GGUF's type code of a metadata value (the fuzzer writes hostile files with it too).
pub fn value_type(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn value(out: &mut Vec<u8>, key: &str, v: &Value) -> Result<()> {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend(x.to_le_bytes()),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => string(out, s),
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
        Value::Array(items) => {
            // An empty array still needs an element type; GGUF readers ignore it.
            let ty = items.first().map_or(4, value_type);
            if items.iter().any(|x| value_type(x) != ty) {
                return Err(Error::invalid(format!(
                    "GGUF metadata `{key}`: an array's elements must all have one type"
                )));
            }
            out.extend(ty.to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for item in items {
                value(out, key, item)?;
            }
        }
    }
    Ok(())
}

fn padding(n: u64) -> u64 {
    n.div_ceil(ALIGNMENT) * ALIGNMENT - n
}

/// The header: magic, version, counts, metadata, tensor infos, padded to the alignment.
fn header(metadata: &[(String, Value)], tensors: &[GgufTensor]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    out.extend(0x4655_4747u32.to_le_bytes()); // "GGUF"
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (key, v) in metadata {
        string(&mut out, key);
        out.extend(value_type(v).to_le_bytes());
        value(&mut out, key, v)?;
    }
    let mut offset = 0u64;
    for t in tensors {
        string(&mut out, &t.name);
        let dims = t.tensor.dims();
        out.extend((dims.len() as u32).to_le_bytes());
        for d in dims.iter().rev() {
            out.extend((*d as u64).to_le_bytes());
        }
        out.extend(t.dtype.id().to_le_bytes());
        out.extend(offset.to_le_bytes());
        let bytes = t.tensor.elem_count() as u64 * t.dtype.size();
        offset += bytes + padding(bytes);
    }
    let pad = padding(out.len() as u64);
    out.extend(std::iter::repeat_n(0u8, pad as usize));
    Ok(out)
}

fn tensor_bytes(t: &GgufTensor) -> Result<Vec<u8>> {
    let flat = t.tensor.flatten_all()?;
    Ok(match t.dtype {
        GgufDtype::F32 => flat
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        GgufDtype::F16 => flat
            .to_dtype(DType::F16)?
            .to_vec1::<half::f16>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
    })
}

/// Writes a GGUF file at `path` atomically.
pub fn write(path: &Path, metadata: &[(String, Value)], tensors: &[GgufTensor]) -> Result<()> {
    let head = header(metadata, tensors)?;
    fsio::write_atomic_with(path, |tmp| {
        let file = std::fs::File::create(tmp).map_err(|e| Error::io(tmp, e))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let io = |e| Error::io(tmp, e);
        out.write_all(&head).map_err(io)?;
        for t in tensors {
            let bytes = tensor_bytes(t)?;
            out.write_all(&bytes).map_err(io)?;
            let pad = padding(bytes.len() as u64) as usize;
            out.write_all(&vec![0u8; pad]).map_err(io)?;
        }
        out.flush().map_err(io)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::Content;
    use candle_core::Device;

    #[test]
    fn candle_reads_back_what_is_written() {
        let dir = std::env::temp_dir().join(format!("kedit-ggufw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.gguf");
        let a = Tensor::arange(0f32, 15., &Device::Cpu)
            .unwrap()
            .reshape((3, 5))
            .unwrap();
        let b = Tensor::new(&[0.5f32, -2.0, 3.25], &Device::Cpu).unwrap();
        let metadata = vec![
            (
                "general.architecture".to_string(),
                Value::String("x".into()),
            ),
            (
                "x.list".to_string(),
                Value::Array(vec![Value::String("a b".into()), Value::String("c".into())]),
            ),
            ("x.n".to_string(), Value::U32(7)),
            ("x.eps".to_string(), Value::F32(1e-5)),
        ];
        let tensors = vec![
            GgufTensor {
                name: "a".into(),
                tensor: a.clone(),
                dtype: GgufDtype::F16,
            },
            GgufTensor {
                name: "b".into(),
                tensor: b.clone(),
                dtype: GgufDtype::F32,
            },
        ];
        write(&path, &metadata, &tensors).unwrap();
        let mut f = std::fs::File::open(&path).unwrap();
        let content = Content::read(&mut f).unwrap();
        assert_eq!(content.metadata["x.n"].to_u32().unwrap(), 7);
        assert_eq!(content.metadata["x.list"].to_vec().unwrap().len(), 2);
        for (name, want) in [("a", &a), ("b", &b)] {
            let got = content
                .tensor(&mut f, name, &Device::Cpu)
                .unwrap()
                .dequantize(&Device::Cpu)
                .unwrap();
            assert_eq!(got.dims(), want.dims());
            let d = (got - want)
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(d, 0.0, "{name}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
