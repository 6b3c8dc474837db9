//! Loading GGUF files: every tensor dequantised to f32 and converted to the canonical
//! layout by its architecture (see [`crate::model::arch`]); the tokenizer and chat
//! template come from the metadata.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::Device;

use crate::error::{Error, Result};
use crate::model::arch::{self, GgufMeta};
use crate::model::config::ModelConfig;
use crate::model::gguf_header;
use crate::model::params::{ParamId, Params};

/// What a GGUF file holds, read and checked.
pub struct GgufModel {
    pub config: ModelConfig,
    pub params: Params,
    pub metadata: HashMap<String, Value>,
}

/// candle's error without the backtrace it appends when RUST_BACKTRACE is set.
fn plain(e: &candle_core::Error) -> &candle_core::Error {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => plain(inner),
        other => other,
    }
}

/// An unreadable header. A file that simply ends too early (an interrupted download or
/// copy) is the common case, so say so.
fn header_error(path: &Path, file_len: u64, e: &candle_core::Error) -> Error {
    let e = plain(e);
    let ended = match e {
        candle_core::Error::Io(io) => io.kind() == std::io::ErrorKind::UnexpectedEof,
        // candle's own bounds checks: "... exceeds remaining file bytes", "only N remaining".
        other => other.to_string().contains("remaining"),
    };
    if ended {
        Error::model(
            path,
            format!(
                "the file is truncated: it ends at byte {file_len}, inside the GGUF header \
                 (metadata and tensor list): {e}"
            ),
        )
    } else {
        Error::model(path, format!("not a readable GGUF file: bad header: {e}"))
    }
}

/// Every tensor the model needs must lie inside the file. Checked before anything is
/// dequantised, so that a truncated file fails at once and names the first tensor cut off.
fn check_extents<'a>(
    path: &Path,
    content: &Content,
    names: impl Iterator<Item = &'a str>,
    file_len: u64,
) -> Result<()> {
    let mut cut = Vec::new();
    for name in names {
        // A missing tensor is reported when it is read.
        let Some(info) = content.tensor_infos.get(name) else {
            continue;
        };
        let dtype = info.ggml_dtype;
        // Bounded by the header walk: no overflow.
        let size = (info.shape.elem_count() / dtype.block_size() * dtype.type_size()) as u64;
        let start = content.tensor_data_offset.saturating_add(info.offset);
        let end = start.saturating_add(size);
        if end > file_len {
            cut.push((start, end, name));
        }
    }
    cut.sort();
    match cut.first() {
        None => Ok(()),
        Some(&(start, end, name)) => Err(Error::tensor(
            path,
            name,
            format!(
                "the file is truncated: this tensor's data spans bytes {start}..{end}, but the \
                 file ends at byte {file_len} ({} tensor(s) cut off)",
                cut.len()
            ),
        )),
    }
}

pub fn load(path: &Path) -> Result<GgufModel> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut reader = BufReader::new(file);
    // Every length in the header is checked against the file before candle reads it.
    let header = gguf_header::scan(path, &mut reader, file_len)?;
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(path, e))?;
    let content = Content::read(&mut reader).map_err(|e| header_error(path, file_len, &e))?;
    let name = content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .ok_or_else(|| Error::model(path, "metadata `general.architecture` is missing"))?;
    let (_, spec) = arch::gguf_arch(path, &name)?;
    let meta = GgufMeta {
        path,
        content: &content,
        arch: &name,
    };
    let config = (spec.parse)(&meta)?;
    config
        .validate()
        .map_err(|m| Error::model(path, format!("invalid model configuration: {m}")))?;
    // The weights must be in the file: at least 2 bits each (Q2_K, the smallest type).
    config
        .check_fits(file_len.saturating_sub(header.tensor_data_offset), 2)
        .map_err(|m| Error::model(path, m))?;
    let names: Vec<(ParamId, Vec<usize>, String)> = config
        .param_shapes()
        .into_iter()
        .map(|(id, shape)| {
            let name = (spec.tensor)(id).ok_or_else(|| {
                Error::model(
                    path,
                    format!("no GGUF tensor is known for `{id}` in `{name}`"),
                )
            })?;
            Ok((id, shape, name))
        })
        .collect::<Result<_>>()?;
    check_extents(path, &content, names.iter().map(|n| n.2.as_str()), file_len)?;
    let device = Device::Cpu;
    let mut params = Params::new();
    for (id, shape, name) in names {
        if !content.tensor_infos.contains_key(&name) {
            return Err(Error::tensor(path, &name, "is missing"));
        }
        let q = content
            .tensor(&mut reader, &name, &device)
            .map_err(|e| Error::tensor(path, &name, plain(&e).to_string()))?;
        let t = q
            .dequantize(&device)
            .map_err(|e| Error::tensor(path, &name, format!("cannot dequantise: {}", plain(&e))))?;
        if t.dims() != shape.as_slice() {
            return Err(Error::tensor(
                path,
                &name,
                format!("has shape {:?}; expected {:?}", t.dims(), shape),
            ));
        }
        let t = (spec.convert)(&config, id, t)
            .map_err(|e| Error::tensor(path, &name, e.to_string()))?;
        params.insert(id, t);
    }
    Ok(GgufModel {
        config,
        params,
        metadata: content.metadata,
    })
}
