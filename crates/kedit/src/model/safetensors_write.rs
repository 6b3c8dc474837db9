//! Writing safetensors files ourselves, streaming one tensor at a time.
//!
//! The safetensors crate writes through a `tempfile` of its own: created mode 0600 whatever
//! the user's umask, and left behind under a random name when the process is killed. Ours
//! is created like any file (the umask applies) and written through [`fsio`]'s atomic
//! rename, whose temporary files are swept.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use candle_core::{DType, Tensor};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::fsio;

fn dtype_name(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::F64 => "F64",
        DType::U8 => "U8",
        DType::U32 => "U32",
        DType::I64 => "I64",
        other => {
            return Err(Error::invalid(format!(
                "cannot write tensors of type {other:?} to safetensors"
            )))
        }
    })
}

/// The little-endian bytes of a tensor, row-major.
fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => flat
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::F64 => flat
            .to_vec1::<f64>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::F16 => flat
            .to_vec1::<half::f16>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::BF16 => flat
            .to_vec1::<half::bf16>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::U8 => flat.to_vec1::<u8>()?,
        DType::U32 => flat
            .to_vec1::<u32>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::I64 => flat
            .to_vec1::<i64>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        other => {
            return Err(Error::invalid(format!(
                "cannot write tensors of type {other:?} to safetensors"
            )))
        }
    })
}

/// The JSON header: each tensor's type, shape and byte range, in name order, and the
/// string `metadata` (`__metadata__`), padded with spaces to a multiple of 8 bytes as the
/// format asks.
fn header(
    tensors: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let mut map = Map::new();
    if !metadata.is_empty() {
        map.insert("__metadata__".into(), json!(metadata));
    }
    let mut offset = 0usize;
    for (name, t) in tensors {
        let bytes = t.elem_count() * t.dtype().size_in_bytes();
        map.insert(
            name.clone(),
            json!({
                "dtype": dtype_name(t.dtype())?,
                "shape": t.dims(),
                "data_offsets": [offset, offset + bytes],
            }),
        );
        offset += bytes;
    }
    let mut text = serde_json::to_vec(&Value::Object(map)).expect("JSON values serialise");
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    Ok(text)
}

/// Writes `tensors` (and string `metadata`) to `path` atomically.
pub fn write(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let head = header(tensors, metadata)?;
    fsio::write_atomic_with(path, |tmp| {
        let file = std::fs::File::create(tmp).map_err(|e| Error::io(tmp, e))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let io = |e| Error::io(tmp, e);
        out.write_all(&(head.len() as u64).to_le_bytes())
            .map_err(io)?;
        out.write_all(&head).map_err(io)?;
        for t in tensors.values() {
            out.write_all(&tensor_bytes(t)?).map_err(io)?;
        }
        out.flush().map_err(io)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn written_files_read_back_with_the_safetensors_crate() {
        let dir = std::env::temp_dir().join(format!("kedit-stw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.safetensors");
        let mut tensors = BTreeMap::new();
        let a = Tensor::arange(0f32, 6., &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        tensors.insert("a".to_string(), a.t().unwrap());
        tensors.insert(
            "b".to_string(),
            Tensor::new(&[7u8, 8, 9], &Device::Cpu).unwrap(),
        );
        tensors.insert(
            "c".to_string(),
            Tensor::new(&[1.5f64], &Device::Cpu)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap(),
        );
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        write(&path, &tensors, &meta).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let (_, md) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(md.metadata().as_ref().unwrap()["format"], "pt");
        let back = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        for (name, t) in &tensors {
            let diff = (back[name].to_dtype(DType::F64).unwrap() - t.to_dtype(DType::F64).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert_eq!(diff, 0.0, "{name}");
            assert_eq!(back[name].dims(), t.dims());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn written_files_follow_the_umask_not_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("kedit-stw-mode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.safetensors");
        let t = Tensor::new(&[1f32], &Device::Cpu).unwrap();
        write(
            &path,
            &BTreeMap::from([("x".to_string(), t)]),
            &BTreeMap::new(),
        )
        .unwrap();
        // What a plain file created now gets: 0666 less the umask.
        let probe = dir.join("probe");
        std::fs::write(&probe, b"").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), mode(&probe));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
