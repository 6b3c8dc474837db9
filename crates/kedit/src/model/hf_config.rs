//! Reading (and writing) Hugging Face `config.json` for the supported architectures.

use std::path::Path;

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::model::config::{Activation, Biases, BlockLayout, Family, ModelConfig, NormKind, Rope};

/// Field access that names the file and the field in every error.
struct Fields<'a> {
    path: &'a Path,
    v: &'a Value,
}

impl Fields<'_> {
    fn opt(&self, key: &str) -> Option<&Value> {
        self.v.get(key).filter(|v| !v.is_null())
    }

    fn usize(&self, key: &str) -> Result<usize> {
        let v = self.opt(key).ok_or_else(|| self.err(key, "is missing"))?;
        v.as_u64()
            .map(|x| x as usize)
            .ok_or_else(|| self.err(key, &format!("must be a non-negative integer, got {v}")))
    }

    fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        if self.opt(key).is_some() {
            self.usize(key)
        } else {
            Ok(default)
        }
    }

    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.opt(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.err(key, &format!("must be a number, got {v}"))),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.opt(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(key, &format!("must be true or false, got {v}"))),
        }
    }

    fn str_or<'b>(&'b self, key: &str, default: &'b str) -> Result<&'b str> {
        match self.opt(key) {
            None => Ok(default),
            Some(v) => v
                .as_str()
                .ok_or_else(|| self.err(key, &format!("must be a string, got {v}"))),
        }
    }

    fn token_id(&self, key: &str) -> Option<u32> {
        match self.opt(key)? {
            Value::Number(n) => n.as_u64().map(|x| x as u32),
            Value::Array(a) => a.first()?.as_u64().map(|x| x as u32),
            _ => None,
        }
    }

    fn err(&self, key: &str, what: &str) -> Error {
        Error::model(self.path, format!("field `{key}` {what}"))
    }

    /// RoPE base: transformers 5 nests it in `rope_parameters`; older files have `rope_theta`.
    fn rope_theta(&self, legacy_key: &str) -> Result<f64> {
        if let Some(t) = self
            .opt("rope_parameters")
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
        {
            return Ok(t);
        }
        self.f64_or(legacy_key, 10_000.0)
    }

    fn reject_rope_scaling(&self) -> Result<()> {
        let scaling = self
            .opt("rope_scaling")
            .or_else(|| self.opt("rope_parameters"))
            .and_then(|p| p.get("rope_type").or_else(|| p.get("type")))
            .and_then(Value::as_str);
        match scaling {
            None | Some("default") => Ok(()),
            Some(other) => Err(self.err(
                "rope_scaling",
                &format!("uses rope type `{other}`, which kedit does not support yet"),
            )),
        }
    }
}

/// Heads must split the model width evenly when the head size is not given explicitly;
/// otherwise the fused and per-head tensors cannot be cut apart.
fn even_head_dim(f: &Fields, d: usize, heads: usize, heads_key: &str) -> Result<usize> {
    if heads == 0 {
        return Err(f.err(heads_key, "must be positive"));
    }
    if d % heads != 0 {
        return Err(f.err(
            heads_key,
            &format!("({heads}) does not divide the hidden size ({d})"),
        ));
    }
    Ok(d / heads)
}

/// GPT-J without `rotary_dim` rotates whole heads with frequencies computed over the
/// full model width, which the arch-neutral RoPE cannot express.
fn gptj_rotary_dim(f: &Fields) -> Result<usize> {
    match f.opt("rotary_dim") {
        Some(_) => f.usize("rotary_dim"),
        None => Err(f.err(
            "rotary_dim",
            "is missing: GPT-J without a rotary dimension is not supported",
        )),
    }
}

fn activation(f: &Fields, key: &str, default: &str) -> Result<Activation> {
    let name = f.str_or(key, default)?;
    Ok(match name {
        "silu" | "swish" => Activation::Silu,
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
        "gelu" => Activation::GeluErf,
        "relu" => Activation::Relu,
        other => return Err(f.err(key, &format!("activation `{other}` is not supported"))),
    })
}

/// Parses `config.json` (`path` is used in error messages).
pub fn parse(path: &Path, v: &Value) -> Result<ModelConfig> {
    let f = Fields { path, v };
    let class = v
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            f.err(
                "architectures",
                "is missing (expected e.g. [\"LlamaForCausalLM\"])",
            )
        })?;
    let family = Family::from_hf_class(class).ok_or_else(|| {
        f.err(
            "architectures",
            &format!(
                "names `{class}`; supported: LlamaForCausalLM, MistralForCausalLM, \
                 Qwen2ForCausalLM, GPT2LMHeadModel, GPTJForCausalLM, GPTNeoXForCausalLM"
            ),
        )
    })?;
    let cfg = match family {
        Family::Llama | Family::Mistral | Family::Qwen2 => {
            f.reject_rope_scaling()?;
            let d = f.usize("hidden_size")?;
            let heads = f.usize("num_attention_heads")?;
            if heads == 0 {
                return Err(f.err("num_attention_heads", "must be positive"));
            }
            // An explicit head_dim need not equal hidden_size / heads.
            let head_dim = match f.opt("head_dim") {
                Some(_) => f.usize("head_dim")?,
                None => even_head_dim(&f, d, heads, "num_attention_heads")?,
            };
            let attention_bias = f.bool_or("attention_bias", false)?;
            // HF then biases gate_proj too, a parameter kedit does not have: refuse rather
            // than silently drop it.
            if f.bool_or("mlp_bias", false)? {
                return Err(f.err(
                    "mlp_bias",
                    "is true: MLP biases are not supported for this family",
                ));
            }
            let window = match family {
                Family::Mistral if f.opt("sliding_window").is_some() => {
                    Some(f.usize("sliding_window")?)
                }
                Family::Qwen2 if f.bool_or("use_sliding_window", false)? => {
                    return Err(f.err(
                        "use_sliding_window",
                        "is true; Qwen2's per-layer sliding window is not supported",
                    ))
                }
                _ => None,
            };
            ModelConfig {
                family,
                vocab_size: f.usize("vocab_size")?,
                d_model: d,
                n_layers: f.usize("num_hidden_layers")?,
                n_heads: heads,
                n_kv_heads: f.usize_or("num_key_value_heads", heads)?,
                head_dim,
                d_ff: f.usize("intermediate_size")?,
                norm: NormKind::Rms,
                norm_eps: f.f64_or("rms_norm_eps", 1e-6)?,
                activation: activation(&f, "hidden_act", "silu")?,
                block: BlockLayout::Sequential,
                rope: Some(Rope {
                    theta: f.rope_theta("rope_theta")?,
                    rotary_dim: head_dim,
                    interleaved: false,
                }),
                learned_positions: false,
                max_positions: f.usize_or("max_position_embeddings", 2048)?,
                sliding_window: window,
                tie_embeddings: f.bool_or("tie_word_embeddings", false)?,
                biases: Biases {
                    qkv: family == Family::Qwen2 || attention_bias,
                    attn_out: attention_bias,
                    mlp: false,
                    lm_head: false,
                },
                bos_token_id: f.token_id("bos_token_id"),
                eos_token_id: f.token_id("eos_token_id"),
                pad_token_id: f.token_id("pad_token_id"),
            }
        }
        Family::Gpt2 | Family::GptJ => {
            let d = f.usize("n_embd")?;
            let heads = f.usize("n_head")?;
            let head_dim = even_head_dim(&f, d, heads, "n_head")?;
            if f.bool_or("scale_attn_by_inverse_layer_idx", false)? {
                return Err(f.err("scale_attn_by_inverse_layer_idx", "is true: not supported"));
            }
            if !f.bool_or("scale_attn_weights", true)? {
                return Err(f.err(
                    "scale_attn_weights",
                    "is false: unscaled attention is not supported",
                ));
            }
            let gpt2 = family == Family::Gpt2;
            ModelConfig {
                family,
                vocab_size: f.usize("vocab_size")?,
                d_model: d,
                n_layers: f.usize("n_layer")?,
                n_heads: heads,
                n_kv_heads: heads,
                head_dim,
                d_ff: f.usize_or("n_inner", 4 * d)?,
                norm: NormKind::Layer,
                norm_eps: f.f64_or("layer_norm_epsilon", 1e-5)?,
                activation: activation(&f, "activation_function", "gelu_new")?,
                block: if gpt2 {
                    BlockLayout::Sequential
                } else {
                    BlockLayout::ParallelSharedNorm
                },
                rope: if gpt2 {
                    None
                } else {
                    Some(Rope {
                        theta: 10_000.0,
                        rotary_dim: gptj_rotary_dim(&f)?,
                        interleaved: true,
                    })
                },
                learned_positions: gpt2,
                max_positions: f.usize_or("n_positions", 1024)?,
                sliding_window: None,
                tie_embeddings: f.bool_or("tie_word_embeddings", gpt2)?,
                biases: Biases {
                    qkv: gpt2,
                    attn_out: gpt2,
                    mlp: true,
                    lm_head: !gpt2,
                },
                bos_token_id: f.token_id("bos_token_id"),
                eos_token_id: f.token_id("eos_token_id"),
                pad_token_id: f.token_id("pad_token_id"),
            }
        }
        Family::GptNeoX => {
            f.reject_rope_scaling()?;
            let d = f.usize("hidden_size")?;
            let heads = f.usize("num_attention_heads")?;
            let head_dim = even_head_dim(&f, d, heads, "num_attention_heads")?;
            let pct = f
                .opt("rope_parameters")
                .and_then(|p| p.get("partial_rotary_factor"))
                .and_then(Value::as_f64)
                .map(Ok)
                .unwrap_or_else(|| f.f64_or("rotary_pct", 0.25))?;
            let bias = f.bool_or("attention_bias", true)?;
            ModelConfig {
                family,
                vocab_size: f.usize("vocab_size")?,
                d_model: d,
                n_layers: f.usize("num_hidden_layers")?,
                n_heads: heads,
                n_kv_heads: heads,
                head_dim,
                d_ff: f.usize("intermediate_size")?,
                norm: NormKind::Layer,
                norm_eps: f.f64_or("layer_norm_eps", 1e-5)?,
                activation: activation(&f, "hidden_act", "gelu")?,
                block: if f.bool_or("use_parallel_residual", true)? {
                    BlockLayout::Parallel
                } else {
                    BlockLayout::Sequential
                },
                rope: Some(Rope {
                    theta: f.rope_theta("rotary_emb_base")?,
                    rotary_dim: (head_dim as f64 * pct) as usize,
                    interleaved: false,
                }),
                learned_positions: false,
                max_positions: f.usize_or("max_position_embeddings", 2048)?,
                sliding_window: None,
                tie_embeddings: f.bool_or("tie_word_embeddings", false)?,
                biases: Biases {
                    qkv: bias,
                    attn_out: bias,
                    mlp: true,
                    lm_head: false,
                },
                bos_token_id: f.token_id("bos_token_id"),
                eos_token_id: f.token_id("eos_token_id"),
                pad_token_id: f.token_id("pad_token_id"),
            }
        }
    };
    cfg.validate().map_err(|m| Error::model(path, m))?;
    Ok(cfg)
}

/// The `hidden_act` / `activation_function` name of an activation.
fn activation_name(act: Activation) -> &'static str {
    match act {
        Activation::Silu => "silu",
        Activation::GeluTanh => "gelu_new",
        Activation::GeluErf => "gelu",
        Activation::Relu => "relu",
    }
}

/// A `config.json` for a model that did not come with one (GGUF, or built in memory), in
/// its family's own format, so that [`parse`] reads back the same configuration.
pub fn synthesize(cfg: &ModelConfig) -> Value {
    let rope = cfg.rope.unwrap_or(Rope {
        theta: 10_000.0,
        rotary_dim: cfg.head_dim,
        interleaved: false,
    });
    let mut v = match cfg.family {
        Family::Llama | Family::Mistral | Family::Qwen2 => json!({
            "hidden_size": cfg.d_model,
            "intermediate_size": cfg.d_ff,
            "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.n_kv_heads,
            "head_dim": cfg.head_dim,
            "hidden_act": activation_name(cfg.activation),
            "max_position_embeddings": cfg.max_positions,
            "rms_norm_eps": cfg.norm_eps,
            "rope_theta": rope.theta,
            "rope_parameters": {"rope_theta": rope.theta, "rope_type": "default"},
            "attention_bias": cfg.family != Family::Qwen2 && cfg.biases.qkv,
            "mlp_bias": false,
            "sliding_window": cfg.sliding_window,
            "use_sliding_window": false,
        }),
        Family::Gpt2 | Family::GptJ => json!({
            "n_embd": cfg.d_model,
            "n_inner": cfg.d_ff,
            "n_layer": cfg.n_layers,
            "n_head": cfg.n_heads,
            "n_positions": cfg.max_positions,
            "layer_norm_epsilon": cfg.norm_eps,
            "activation_function": activation_name(cfg.activation),
        }),
        Family::GptNeoX => {
            let pct = rope.rotary_dim as f64 / cfg.head_dim as f64;
            json!({
                "hidden_size": cfg.d_model,
                "intermediate_size": cfg.d_ff,
                "num_hidden_layers": cfg.n_layers,
                "num_attention_heads": cfg.n_heads,
                "hidden_act": activation_name(cfg.activation),
                "max_position_embeddings": cfg.max_positions,
                "layer_norm_eps": cfg.norm_eps,
                "rotary_pct": pct,
                "rotary_emb_base": rope.theta,
                "rope_parameters": {
                    "rope_theta": rope.theta,
                    "partial_rotary_factor": pct,
                    "rope_type": "default",
                },
                "use_parallel_residual": cfg.block == BlockLayout::Parallel,
                "attention_bias": cfg.biases.qkv,
            })
        }
    };
    let common = json!({
        "architectures": [cfg.family.hf_class()],
        "model_type": cfg.family.model_type(),
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "torch_dtype": "float32",
    });
    let obj = v.as_object_mut().expect("built as an object above");
    if let Value::Object(common) = common {
        obj.extend(common);
    }
    if cfg.family == Family::GptJ {
        obj.insert("rotary_dim".into(), rope.rotary_dim.into());
    }
    v
}
