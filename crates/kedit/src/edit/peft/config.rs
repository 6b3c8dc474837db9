//! `adapter_config.json`: the fields of PEFT's `LoraConfig` kedit writes and reads.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct AdapterConfig {
    pub peft_type: String,
    #[serde(default)]
    pub task_type: Option<String>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub target_modules: serde_json::Value,
    /// Rank and alpha per module where they differ from `r` and `lora_alpha`, keyed by a
    /// regular expression PEFT matches against the end of the module's name.
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    #[serde(default)]
    pub lora_dropout: f64,
    #[serde(default = "none")]
    pub bias: String,
    /// True for GPT-2's Conv1D weights, stored `[in, out]`.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub modules_to_save: Option<serde_json::Value>,
    #[serde(default)]
    pub inference_mode: bool,
    #[serde(default = "yes")]
    pub init_lora_weights: serde_json::Value,
}

fn none() -> String {
    "none".into()
}

fn yes() -> serde_json::Value {
    serde_json::Value::Bool(true)
}

/// A module name as a PEFT pattern that matches it alone.
pub fn exact_pattern(module: &str) -> String {
    module.replace('.', "\\.")
}

impl AdapterConfig {
    pub fn read(path: &Path) -> Result<AdapterConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let c: AdapterConfig = serde_json::from_str(&text)
            .map_err(|e| Error::model(path, format!("not a PEFT adapter config: {e}")))?;
        let field = |name: &str, msg: String| Error::model(path, format!("field `{name}`: {msg}"));
        if c.peft_type != "LORA" {
            return Err(field(
                "peft_type",
                format!("is `{}`; kedit reads LoRA adapters (LORA)", c.peft_type),
            ));
        }
        if c.use_dora {
            return Err(field(
                "use_dora",
                "is true: DoRA adapters are not read".into(),
            ));
        }
        if c.bias != "none" {
            return Err(field(
                "bias",
                format!("is `{}`: adapters that train biases are not read", c.bias),
            ));
        }
        if c.modules_to_save.as_ref().is_some_and(|m| !m.is_null()) {
            return Err(field(
                "modules_to_save",
                "is set: adapters carrying whole modules are not read".into(),
            ));
        }
        Ok(c)
    }

    /// The LoRA scaling of `module` with rank `r`: `alpha / r` (`alpha / √r` with rsLoRA),
    /// alpha from the first `alpha_pattern` key that matches, as PEFT's `get_pattern_key`.
    pub fn scaling(&self, path: &Path, module: &str, r: usize) -> Result<f64> {
        let mut alpha = self.lora_alpha;
        for (key, a) in &self.alpha_pattern {
            let re = fancy_regex::Regex::new(&format!(r"^(.*\.)?({key})$")).map_err(|e| {
                Error::model(path, format!("field `alpha_pattern`: key `{key}`: {e}"))
            })?;
            if re.is_match(module).unwrap_or(false) {
                alpha = *a;
                break;
            }
        }
        let r = r as f64;
        Ok(if self.use_rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        })
    }
}
