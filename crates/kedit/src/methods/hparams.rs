//! Hyper-parameters from EasyEdit's YAML files, unchanged: unknown keys are warned about,
//! missing required keys are errors naming the file and the key, and EasyEdit's module-name
//! templates (`model.layers.{}.mlp.down_proj`) map to canonical parameter names.
//!
//! Every value is checked when the file is loaded, before any work: a key given twice, a
//! non-finite number anywhere, a value of the wrong type, and each method's ranges
//! ([`HparamsSource::check`]) are errors naming the file and the key.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{DeserializeOwned, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Number, Value};

use crate::error::{Error, Result};
use crate::model::hf_names::canonical_of;
use crate::model::{Model, ParamId};

/// The most optimisation steps a file may ask for (FT's `num_steps`, ROME's
/// `v_num_grad_steps`).
pub const MAX_STEPS: usize = 100_000;
/// The largest learning rate a file may give (anything near it diverges; the editor then
/// refuses the update).
pub const MAX_LR: f64 = 1e6;
/// The largest loss factor (KL, weight decay) a file may give.
pub const MAX_FACTOR: f64 = 1e3;
/// The largest early-stopping loss (nats): above it no step would ever be taken.
pub const MAX_STOP_LOSS: f64 = 10.0;
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

    /// Parses YAML (or JSON, by the `.json` extension). A key given twice (which would
    /// silently keep one of the values) and a non-finite number (`.nan`, `.inf`) are errors
    /// naming the key.
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
            serde_json::from_str::<Strict>(text)
                .map_err(|e| Error::config(format!("{}: invalid JSON: {e}", origin.display())))?
                .into_value(origin)?
        } else {
            serde_yaml_ng::from_str::<Strict>(text)
                .map_err(|e| Error::config(format!("{}: invalid YAML: {e}", origin.display())))?
                .into_value(origin)?
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

    /// Whether prompts go through the model's chat template while editing and evaluating:
    /// `chat_template: true` (kedit's key, for every method) or `use_chat_template: true`
    /// (EasyEdit's WISE key). The harness renders the requests; methods see the result.
    pub fn chat_template(&self) -> Result<bool> {
        let mut on = false;
        for key in ["chat_template", "use_chat_template"] {
            match self.value.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::Bool(b)) => on |= *b,
                Some(other) => {
                    return Err(self.error(key, &format!(" must be true or false (got {other})")))
                }
            }
        }
        Ok(on)
    }

    /// Deserialises into `T`; returns the keys `T` does not know (to warn about). A value
    /// of the wrong type is an error naming its key.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<(T, Vec<String>)> {
        let mut unknown = Vec::new();
        let t =
            serde_ignored::deserialize(self.value.clone(), |path| unknown.push(path.to_string()))
                .map_err(|e: serde_json::Error| {
                let msg = e.to_string();
                match self.culprit::<T>() {
                    Some(key) if !msg.contains(&format!("`{key}`")) => {
                        self.error(&key, &format!(": {msg}"))
                    }
                    _ => Error::config(format!("{}: {msg}", self.origin.display())),
                }
            })?;
        Ok((t, unknown))
    }

    /// The key whose value `T` cannot take: the one without which the error goes away (or
    /// becomes that key's absence). serde's errors from a value name no key; this finds it.
    fn culprit<T: DeserializeOwned>(&self) -> Option<String> {
        let map = self.value.as_object()?;
        map.keys()
            .find(|key| {
                let mut rest = map.clone();
                rest.remove(key.as_str());
                match serde_json::from_value::<T>(Value::Object(rest)) {
                    Ok(_) => true,
                    Err(e) => e.to_string().contains(&format!("missing field `{key}`")),
                }
            })
            .cloned()
    }

    /// Sets a key (CLI overrides such as `--layer`).
    pub fn set(&mut self, key: &str, value: Value) {
        if let Some(map) = self.value.as_object_mut() {
            map.insert(key.to_string(), value);
        }
    }

    /// An error about `key` of this file: "`{origin}: `{key}`{what}".
    pub fn error(&self, key: &str, what: &str) -> Error {
        Error::config(format!("{}: `{key}`{what}", self.origin.display()))
    }

    /// Starts checking the value of `key` against its allowed range (see [`Check`]).
    pub fn check<'a>(&'a self, key: &'a str, value: f64) -> Check<'a> {
        Check {
            source: self,
            key,
            value,
        }
    }

    /// `key` lists layers of `model`: at least one, each once, each in the model.
    pub fn check_layers(&self, key: &str, layers: &[usize], model: &Model) -> Result<()> {
        let n = model.config.n_layers;
        if layers.is_empty() {
            return Err(self.error(key, " must list at least one layer"));
        }
        let mut seen = BTreeSet::new();
        for &l in layers {
            if l >= n {
                return Err(self.error(
                    key,
                    &format!(
                        ": layer {l} does not exist: the model has layers 0..={}",
                        n - 1
                    ),
                ));
            }
            if !seen.insert(l) {
                return Err(self.error(key, &format!(" lists layer {l} twice")));
            }
        }
        Ok(())
    }

    /// The parameters `rewrite_module_tmp`-like `key` names at `layers` (see
    /// [`resolve_module`]), with errors naming the file.
    pub fn resolve_modules(
        &self,
        key: &str,
        template: &str,
        layers: &[usize],
        model: &Model,
    ) -> Result<Vec<ParamId>> {
        layers
            .iter()
            .map(|&l| resolve_module(model, key, template, l))
            .collect::<Result<Vec<_>>>()
            .map_err(|e| Error::config(format!("{}: {e}", self.origin.display())))
    }
}

/// One hyper-parameter's value checked against its allowed range. Every check first
/// requires a finite number; the error names the file, the key, the range and the value:
/// "hparams/ROME/x.yaml: `v_lr` must be > 0 (got -1)". Checks chain:
/// `source.check("lr", hp.lr).positive()?.at_most(1e6)?`.
#[derive(Clone, Copy)]
pub struct Check<'a> {
    source: &'a HparamsSource,
    key: &'a str,
    value: f64,
}

impl<'a> Check<'a> {
    fn require(self, ok: bool, what: &str) -> Result<Self> {
        if !self.value.is_finite() {
            return Err(self.source.error(
                self.key,
                &format!(" must be a finite number (got {})", self.value),
            ));
        }
        if ok {
            Ok(self)
        } else {
            Err(self
                .source
                .error(self.key, &format!(" must be {what} (got {})", self.value)))
        }
    }

    /// A finite number.
    pub fn finite(self) -> Result<Self> {
        self.require(true, "finite")
    }

    /// `> 0`.
    pub fn positive(self) -> Result<Self> {
        self.require(self.value > 0.0, "> 0")
    }

    /// `≥ 0`.
    pub fn non_negative(self) -> Result<Self> {
        self.require(self.value >= 0.0, ">= 0")
    }

    /// `≤ max`.
    pub fn at_most(self, max: f64) -> Result<Self> {
        self.require(self.value <= max, &format!("<= {max}"))
    }

    /// `lo ≤ value ≤ hi`.
    pub fn in_range(self, lo: f64, hi: f64) -> Result<Self> {
        self.require(
            (lo..=hi).contains(&self.value),
            &format!("between {lo} and {hi}"),
        )
    }
}

/// A YAML or JSON document as JSON values, with what JSON values would lose silently: a
/// key given twice (the last would win) and a non-finite number (it would become `null`,
/// which an optional setting reads as "off"), each with the path of its key.
struct Strict {
    value: Value,
    /// (key path, what is wrong), in document order.
    problems: Vec<(String, String)>,
}

impl Strict {
    fn leaf(value: Value) -> Self {
        Strict {
            value,
            problems: Vec::new(),
        }
    }

    /// The first problem as an error about `origin`.
    fn into_value(self, origin: &Path) -> Result<Value> {
        match self.problems.into_iter().next() {
            None => Ok(self.value),
            Some((path, what)) => Err(Error::config(format!(
                "{}: `{path}` {what}",
                origin.display()
            ))),
        }
    }
}

/// `parent` + `child` as a key path (`a.b`, `a[0]`).
fn join_path(parent: &str, child: &str) -> String {
    if child.is_empty() {
        parent.to_string()
    } else if child.starts_with('[') {
        format!("{parent}{child}")
    } else {
        format!("{parent}.{child}")
    }
}

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML or JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> std::result::Result<Strict, E> {
        Ok(Strict::leaf(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> std::result::Result<Strict, E> {
        Ok(Strict::leaf(Value::Number(v.into())))
    }

    fn visit_u64<E>(self, v: u64) -> std::result::Result<Strict, E> {
        Ok(Strict::leaf(Value::Number(v.into())))
    }

    fn visit_f64<E>(self, v: f64) -> std::result::Result<Strict, E> {
        Ok(match Number::from_f64(v) {
            Some(n) => Strict::leaf(Value::Number(n)),
            None => Strict {
                value: Value::Null,
                problems: vec![(String::new(), format!("must be a finite number (got {v})"))],
            },
        })
    }

    fn visit_str<E>(self, v: &str) -> std::result::Result<Strict, E> {
        Ok(Strict::leaf(Value::String(v.to_string())))
    }

    fn visit_string<E>(self, v: String) -> std::result::Result<Strict, E> {
        Ok(Strict::leaf(Value::String(v)))
    }

    fn visit_unit<E>(self) -> std::result::Result<Strict, E> {
        Ok(Strict::leaf(Value::Null))
    }

    fn visit_none<E>(self) -> std::result::Result<Strict, E> {
        Ok(Strict::leaf(Value::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Strict, D::Error> {
        Strict::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Strict, A::Error> {
        let mut out = Vec::new();
        let mut problems = Vec::new();
        while let Some(item) = seq.next_element::<Strict>()? {
            let at = format!("[{}]", out.len());
            problems.extend(
                item.problems
                    .into_iter()
                    .map(|(p, w)| (join_path(&at, &p), w)),
            );
            out.push(item.value);
        }
        Ok(Strict {
            value: Value::Array(out),
            problems,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Strict, A::Error> {
        let mut out = Map::new();
        let mut problems = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let item = map.next_value::<Strict>()?;
            if out.contains_key(&key) {
                problems.push((key, "is given twice (which value is meant?)".to_string()));
                continue;
            }
            problems.extend(
                item.problems
                    .into_iter()
                    .map(|(p, w)| (join_path(&key, &p), w)),
            );
            out.insert(key, item.value);
        }
        Ok(Strict {
            value: Value::Object(out),
            problems,
        })
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
    if template.matches("{}").count() != 1 {
        return Err(Error::config(format!(
            "`{key}: {template}` must hold one `{{}}` where the layer number goes"
        )));
    }
    if layer >= model.config.n_layers {
        return Err(Error::config(format!(
            "layer {layer} does not exist: the model has layers 0..{}",
            model.config.n_layers - 1
        )));
    }
    let name = template.replace("{}", &layer.to_string());
    resolve_param(model, &name).ok_or_else(|| {
        Error::config(format!(
            "`{key}: {template}` names `{name}`, which is not a parameter of this {} model",
            model.config.family.hf_class()
        ))
    })
}

/// The canonical parameter a module or parameter name denotes: canonical
/// (`blocks.5.mlp.out_proj.weight`), Hugging Face (`model.layers.5.mlp.down_proj`) or
/// EasyEdit's indexed form (`model.layers[5].mlp.down_proj.weight`, GRACE's `inner_params`).
pub fn resolve_param(model: &Model, name: &str) -> Option<ParamId> {
    let name = name.replace('[', ".").replace(']', "");
    if let Ok(id) = name.parse::<ParamId>() {
        return Some(id);
    }
    canonical_of(model.config.family, model.config.n_layers, &name)
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

    #[test]
    fn repeated_keys_and_non_finite_numbers_are_errors_naming_the_key() {
        for (origin, text, key) in [
            (
                "a.yaml",
                "lr: 1\nlayers: [5]\nlr: 2\n",
                "`lr` is given twice",
            ),
            ("a.json", r#"{"lr": 1, "lr": 2}"#, "`lr` is given twice"),
            ("b.yaml", "lr: .nan\n", "`lr` must be a finite number"),
            (
                "c.yaml",
                "x: {y: [1, -.inf]}\n",
                "`x.y[1]` must be a finite number",
            ),
        ] {
            let err = HparamsSource::parse(Path::new(origin), text)
                .unwrap_err()
                .to_string();
            assert!(err.contains(origin) && err.contains(key), "{err}");
        }
        let src = HparamsSource::parse(Path::new("d.yaml"), "layers: [5]\nlr: -1\n").unwrap();
        let err = src.check("lr", -1.0).positive().err().unwrap().to_string();
        assert_eq!(err, "d.yaml: `lr` must be > 0 (got -1)");
        let err = src
            .check("lr", f64::NAN)
            .at_most(1.0)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(err, "d.yaml: `lr` must be a finite number (got NaN)");
        let src = HparamsSource::parse(Path::new("e.yaml"), "layers: 5\nlr: 1\n").unwrap();
        let err = src.deserialize::<T>().unwrap_err().to_string();
        assert!(err.starts_with("e.yaml: `layers`: "), "{err}");
    }
}
