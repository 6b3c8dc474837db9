//! Hyper-parameters from EasyEdit's YAML files, unchanged: unknown keys are warned about,
//! missing required keys are errors naming the file and the key, and EasyEdit's module-name
//! templates (`model.layers.{}.mlp.down_proj`) map to canonical parameter names.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::hf_names::canonical_of;
use crate::model::{Model, ParamId};

/// The largest hyper-parameter file read (EasyEdit's are under 2 KB).
pub const MAX_HPARAMS_BYTES: usize = 1 << 18;

/// A hyper-parameter file, read.
#[derive(Clone, Debug)]
pub struct HparamsSource {
    /// Where it came from (a path, or `built-in:<name>` for shipped defaults).
    pub origin: PathBuf,
    pub value: Value,
}

impl HparamsSource {
    /// Reads a `.yaml`/`.yml` or `.json` file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(path, &text)
    }

    pub fn parse(origin: &Path, text: &str) -> Result<Self> {
        // The YAML parser takes ~100 times a deeply nested file's size in memory: a
        // hostile file must not get that far. Real files are a few kilobytes.
        if text.len() > MAX_HPARAMS_BYTES {
            return Err(Error::config(format!(
                "{}: {} bytes; a hyper-parameter file of more than {MAX_HPARAMS_BYTES} bytes \
                 is refused",
                origin.display(),
                text.len()
            )));
        }
        let value: Value = if origin.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(text)
                .map_err(|e| Error::config(format!("{}: invalid JSON: {e}", origin.display())))?
        } else {
            serde_yaml_ng::from_str(text)
                .map_err(|e| Error::config(format!("{}: invalid YAML: {e}", origin.display())))?
        };
        if !value.is_object() {
            return Err(Error::config(format!(
                "{}: hyper-parameters must be a mapping of keys to values",
                origin.display()
            )));
        }
        Ok(HparamsSource {
            origin: origin.to_path_buf(),
            value,
        })
    }

    pub fn alg_name(&self) -> Option<&str> {
        self.value.get("alg_name").and_then(Value::as_str)
    }

    /// Deserialises into `T`; returns the keys `T` does not know (to warn about).
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<(T, Vec<String>)> {
        let mut unknown = Vec::new();
        let t =
            serde_ignored::deserialize(self.value.clone(), |path| unknown.push(path.to_string()))
                .map_err(|e| Error::config(format!("{}: {e}", self.origin.display())))?;
        Ok((t, unknown))
    }

    /// Sets a key (CLI overrides such as `--layer`).
    pub fn set(&mut self, key: &str, value: Value) {
        if let Some(map) = self.value.as_object_mut() {
            map.insert(key.to_string(), value);
        }
    }
}

/// Accepts a number or a numeric string ("5e-1": PyYAML reads such values as strings and
/// EasyEdit converts them, so files written for it carry either form).
pub fn lenient_f64<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        F(f64),
        S(String),
    }
    match Num::deserialize(d)? {
        Num::F(x) => Ok(x),
        Num::S(s) => s
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("expected a number, got \"{s}\""))),
    }
}

/// Like [`lenient_f64`], where EasyEdit also allows `false` to mean "off".
pub fn lenient_optional_f64<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Opt {
        B(bool),
        F(f64),
        S(String),
        N(()),
    }
    match Option::<Opt>::deserialize(d)? {
        None | Some(Opt::N(())) | Some(Opt::B(false)) => Ok(None),
        Some(Opt::B(true)) => Err(serde::de::Error::custom(
            "expected a number or false, got true",
        )),
        Some(Opt::F(x)) => Ok(Some(x)),
        Some(Opt::S(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("expected a number, got \"{s}\""))),
    }
}

/// The canonical parameter named by a module template (EasyEdit's `rewrite_module_tmp`,
/// e.g. `model.layers.{}.mlp.down_proj`, or our own `blocks.{}.mlp.out_proj`) at `layer`.
pub fn resolve_module(model: &Model, key: &str, template: &str, layer: usize) -> Result<ParamId> {
    if layer >= model.config.n_layers {
        return Err(Error::config(format!(
            "layer {layer} does not exist: the model has layers 0..{}",
            model.config.n_layers - 1
        )));
    }
    let name = template.replace("{}", &layer.to_string());
    if let Ok(id) = name.parse::<ParamId>() {
        return Ok(id);
    }
    canonical_of(model.config.family, model.config.n_layers, &name).ok_or_else(|| {
        Error::config(format!(
            "`{key}: {template}` names `{name}`, which is not a parameter of this {} model",
            model.config.family.hf_class()
        ))
    })
}

/// Parses one of the EasyEdit YAML files shipped with kedit.
pub fn builtin(name: &str, text: &str) -> HparamsSource {
    HparamsSource::parse(Path::new(&format!("built-in:{name}")), text)
        .expect("shipped hyper-parameters parse")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug)]
    struct T {
        layers: Vec<usize>,
        #[serde(deserialize_with = "lenient_f64")]
        lr: f64,
        #[serde(default, deserialize_with = "lenient_optional_f64")]
        norm_constraint: Option<f64>,
    }

    #[test]
    fn unknown_keys_are_reported_missing_keys_are_errors_numbers_are_lenient() {
        let src = HparamsSource::parse(
            Path::new("x.yaml"),
            "layers: [5]\nlr: \"5e-1\"\nnorm_constraint: false\nfoo: 1\n",
        )
        .unwrap();
        let (t, unknown): (T, _) = src.deserialize().unwrap();
        assert_eq!(t.layers, vec![5]);
        assert_eq!(t.lr, 0.5);
        assert_eq!(t.norm_constraint, None);
        assert_eq!(unknown, vec!["foo".to_string()]);
        let src = HparamsSource::parse(Path::new("y.yaml"), "lr: 1e-3\n").unwrap();
        let err = src.deserialize::<T>().unwrap_err().to_string();
        assert!(err.contains("y.yaml") && err.contains("layers"), "{err}");
        assert!(HparamsSource::parse(Path::new("z.yaml"), "- a\n- b\n").is_err());
    }
}
