//! Reading and writing safetensors files (single or sharded), with errors that name the
//! file and the tensor.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::{Dtype as StDtype, SafeTensors};

use crate::error::{Error, Result};

/// The safetensors files of a checkpoint, memory-mapped, with an index of tensor names.
pub struct SafetensorFiles {
    files: Vec<(PathBuf, Mmap)>,
    index: HashMap<String, usize>,
}

impl SafetensorFiles {
    /// Opens `model.safetensors` or the shards listed in `model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let paths: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index_path.exists() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::model(&index_path, format!("invalid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| {
                    Error::model(
                        &index_path,
                        "field `weight_map` is missing or not an object",
                    )
                })?;
            let mut shards: Vec<String> = Vec::new();
            for (name, file) in map {
                let file = file.as_str().ok_or_else(|| {
                    Error::model(
                        &index_path,
                        format!("`weight_map.{name}` is not a file name"),
                    )
                })?;
                // A file named inside a model's files must stay inside its directory.
                let plain = !file.is_empty()
                    && Path::new(file)
                        .components()
                        .all(|c| matches!(c, std::path::Component::Normal(_)));
                if !plain {
                    return Err(Error::model(
                        &index_path,
                        format!(
                            "`weight_map.{name}` names the file `{file}`, which is not a file \
                             inside the model directory (no absolute paths, no `..`)"
                        ),
                    ));
                }
                if !shards.iter().any(|s| s == file) {
                    shards.push(file.to_string());
                }
            }
            shards.into_iter().map(|s| dir.join(s)).collect()
        } else {
            return Err(Error::model(
                dir,
                "no model.safetensors or model.safetensors.index.json (only safetensors checkpoints are supported)",
            ));
        };
        Self::open_paths(paths)
    }

    /// Opens one safetensors file (a checkpoint kedit wrote).
    pub fn open_file(path: &Path) -> Result<Self> {
        Self::open_paths(vec![path.to_path_buf()])
    }

    fn open_paths(paths: Vec<PathBuf>) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for path in paths {
            let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
            // SAFETY: the mapping is read-only and lives as long as `self`; a file changed
            // underneath us while loading is a user error we cannot guard against anyway.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
            let st = SafeTensors::deserialize(&mmap).map_err(|e| {
                truncation(&path, &mmap).unwrap_or_else(|| {
                    Error::model(&path, format!("not a valid safetensors file: {e}"))
                })
            })?;
            for name in st.names() {
                index.insert(name.to_string(), files.len());
            }
            files.push((path, mmap));
        }
        Ok(SafetensorFiles { files, index })
    }

    /// The bytes of every file together.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|(_, m)| m.len() as u64).sum()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// A description of where the tensors come from, for error messages.
    pub fn describe(&self) -> PathBuf {
        match self.files.as_slice() {
            [(p, _)] => p.clone(),
            _ => self
                .files
                .first()
                .and_then(|(p, _)| p.parent())
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        }
    }

    /// Runs `f` on the tensor's view in its memory-mapped file.
    fn with_view<T>(
        &self,
        name: &str,
        f: impl FnOnce(&Path, safetensors::tensor::TensorView<'_>) -> Result<T>,
    ) -> Result<T> {
        let &i = self
            .index
            .get(name)
            .ok_or_else(|| Error::tensor(self.describe(), name, "is missing"))?;
        let (path, mmap) = &self.files[i];
        let st =
            SafeTensors::deserialize(mmap).map_err(|e| Error::tensor(path, name, e.to_string()))?;
        let view = st
            .tensor(name)
            .map_err(|e| Error::tensor(path, name, e.to_string()))?;
        f(path, view)
    }

    /// The bytes of a `u8` tensor (a JSON manifest stored beside the weights).
    pub fn get_raw_u8(&self, name: &str) -> Result<Vec<u8>> {
        self.with_view(name, |path, view| {
            if view.dtype() != StDtype::U8 {
                return Err(Error::tensor(path, name, "is not a u8 tensor"));
            }
            Ok(view.data().to_vec())
        })
    }

    /// The tensor as f32 (bf16/f16/f64 are converted).
    pub fn get(&self, name: &str) -> Result<Tensor> {
        Ok(self.get_stored(name)?.to_dtype(DType::F32)?)
    }

    /// The tensor in the floating-point type it is stored in (f64 statistics stay exact).
    pub fn get_stored(&self, name: &str) -> Result<Tensor> {
        self.with_view(name, |path, view| {
            let dtype = match view.dtype() {
                StDtype::F32 => DType::F32,
                StDtype::F16 => DType::F16,
                StDtype::BF16 => DType::BF16,
                StDtype::F64 => DType::F64,
                other => {
                    return Err(Error::tensor(
                        path,
                        name,
                        format!("dtype {other:?} is not a floating-point type kedit can load"),
                    ))
                }
            };
            Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)
                .map_err(|e| Error::tensor(path, name, e.to_string()))
        })
    }
}

/// Explains a safetensors file that is shorter than its header says, naming the first
/// tensor cut off; `None` when the file is broken in some other way. (The safetensors
/// crate only reports "incomplete metadata", which does not help anyone find the cause.)
fn truncation(path: &Path, bytes: &[u8]) -> Option<Error> {
    const PREFIX: usize = 8;
    let Some(size) = bytes.get(..PREFIX) else {
        return Some(Error::model(
            path,
            format!(
                "the file is truncated: {} bytes, less than the 8-byte header length",
                bytes.len()
            ),
        ));
    };
    let header_len = u64::from_le_bytes(size.try_into().expect("8 bytes"));
    let available = (bytes.len() - PREFIX) as u64;
    // A length beyond any real header (the crate caps it at 100 MB) means "not safetensors".
    if header_len > 100_000_000 {
        return None;
    }
    if header_len > available {
        return Some(Error::model(
            path,
            format!(
                "the file is truncated inside its JSON header: the header is {header_len} bytes, \
                 only {available} follow the length prefix"
            ),
        ));
    }
    let header_end = PREFIX + header_len as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[PREFIX..header_end]).ok()?;
    let data_len = (bytes.len() - header_end) as u64;
    let mut cut: Vec<(u64, u64, &str)> = header
        .as_object()?
        .iter()
        .filter_map(|(name, info)| {
            let offsets = info.get("data_offsets")?.as_array()?;
            let (start, end) = (offsets.first()?.as_u64()?, offsets.get(1)?.as_u64()?);
            (end > data_len).then_some((start, end, name.as_str()))
        })
        .collect();
    cut.sort();
    let &(start, end, name) = cut.first()?;
    Some(Error::tensor(
        path,
        name,
        format!(
            "the file is truncated: this tensor needs bytes {start}..{end} of the data section, \
             which has only {data_len} bytes ({} tensor(s) cut off)",
            cut.len()
        ),
    ))
}

/// Writes `tensors` to `path` atomically, with the `{"format": "pt"}` metadata that
/// transformers expects of a checkpoint.
pub fn save_atomic(tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    crate::model::safetensors_write::write(path, tensors, &metadata)
}
