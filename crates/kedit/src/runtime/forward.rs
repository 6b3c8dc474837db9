//! The forward pass: one implementation for every architecture, observable and steerable
//! at every named site.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::model::config::{BlockLayout, ModelConfig, NormKind, Rope};
use crate::model::params::{BlockParam, ParamId};
use crate::model::Model;
use crate::runtime::batch::TokenBatch;
use crate::runtime::intervention::{Action, Intervention};
use crate::runtime::kernels;
use crate::runtime::kv_cache::{interleave, KvCache, LayerKv};
use crate::runtime::ops::{self, host_tensor, Weight, MASKED};
use crate::runtime::side_memory::{self, Routes};
use crate::runtime::sites::Site;

/// Weights to use instead of the model's own, by canonical id. A weight given here takes
/// part in autograd (pass a `Var`'s tensor to receive its gradient); every other weight is
/// treated as frozen.
pub type WeightOverrides = BTreeMap<ParamId, Tensor>;

/// Where logits are computed. The output projection is the largest matrix of a small
/// model: compute it only where it is read.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum LogitsAt {
    None,
    /// `[rows, len, vocab]`
    All,
    /// The last real token of each row: `[rows, vocab]`.
    #[default]
    Last,
    /// The given `(row, index)` entries: `[n, vocab]`.
    Entries(Vec<(usize, usize)>),
}

/// What a forward pass returns.
#[derive(Debug)]
pub struct ForwardOutput {
    /// Captured site tensors, `[rows, len, width]`, after that site's interventions.
    pub captures: BTreeMap<Site, Tensor>,
    /// The rows' routes at each site where side memories acted.
    pub routes: BTreeMap<Site, Routes>,
    pub logits: Option<Tensor>,
    /// The residual stream where the pass stopped (after its last block, before the final norm).
    pub resid: Tensor,
    /// The cache including this chunk, when asked for with `keep_kv`.
    pub kv: Option<KvCache>,
}

impl ForwardOutput {
    pub fn capture(&self, site: Site) -> Result<&Tensor> {
        self.captures
            .get(&site)
            .ok_or_else(|| Error::invalid(format!("site `{site}` was not captured")))
    }

    pub fn logits(&self) -> Result<&Tensor> {
        self.logits
            .as_ref()
            .ok_or_else(|| Error::invalid("logits were not computed in this forward pass"))
    }
}

/// A forward pass being set up: `model.forward(&batch).capture(..).intervene(..).run()`.
#[must_use = "a forward pass does nothing until `run` is called"]
pub struct Forward<'m> {
    model: &'m Model,
    batch: &'m TokenBatch,
    start: Option<(usize, Tensor)>,
    prefix: Option<&'m KvCache>,
    interventions: Vec<Intervention>,
    capture: BTreeSet<Site>,
    stop_after: Option<usize>,
    logits: LogitsAt,
    overrides: Option<&'m WeightOverrides>,
    keep_kv: bool,
}

// Here rather than in `model`: the runtime is built on the model, not the other way round.
impl Model {
    /// Starts a forward pass over `batch`.
    pub fn forward<'m>(&'m self, batch: &'m TokenBatch) -> Forward<'m> {
        Forward::new(self, batch)
    }
}

impl<'m> Forward<'m> {
    fn new(model: &'m Model, batch: &'m TokenBatch) -> Self {
        Forward {
            model,
            batch,
            start: None,
            prefix: None,
            interventions: Vec::new(),
            capture: BTreeSet::new(),
            stop_after: None,
            logits: LogitsAt::Last,
            overrides: None,
            keep_kv: false,
        }
    }

    pub fn capture(mut self, sites: impl IntoIterator<Item = Site>) -> Self {
        self.capture.extend(sites);
        self
    }

    pub fn intervene(mut self, intervention: Intervention) -> Self {
        self.interventions.push(intervention);
        self
    }

    pub fn interventions(mut self, interventions: impl IntoIterator<Item = Intervention>) -> Self {
        self.interventions.extend(interventions);
        self
    }

    /// Stop after block `layer`: no final norm and no logits (statistics need only the
    /// lower layers).
    pub fn stop_after(mut self, layer: usize) -> Self {
        self.stop_after = Some(layer);
        self.logits = LogitsAt::None;
        self
    }

    /// Start at block `layer` from a given residual stream `[rows, len, d]` (its
    /// `resid_pre`), skipping the blocks below.
    pub fn start_at(mut self, layer: usize, resid: Tensor) -> Self {
        self.start = Some((layer, resid));
        self
    }

    /// Attend also to the keys/values of earlier positions held in `cache`.
    pub fn prefix(mut self, cache: &'m KvCache) -> Self {
        self.prefix = Some(cache);
        self
    }

    pub fn logits(mut self, at: LogitsAt) -> Self {
        self.logits = at;
        self
    }

    pub fn weights(mut self, overrides: &'m WeightOverrides) -> Self {
        self.overrides = Some(overrides);
        self
    }

    /// Return the KV cache including this chunk (for generation).
    pub fn keep_kv(mut self) -> Self {
        self.keep_kv = true;
        self
    }

    pub fn run(self) -> Result<ForwardOutput> {
        Pass::new(self)?.run()
    }

    /// Runs up to block `layer` and returns the residual stream entering it,
    /// `[rows, len, d]`: what [`Forward::start_at`] takes, so that an optimisation at
    /// `layer` or above runs the blocks below it once rather than at every step.
    pub fn resid_pre(self, layer: usize) -> Result<Tensor> {
        let site = Site::ResidPre(layer);
        let mut out = self.capture([site]).stop_after(layer).run()?;
        Ok(out.captures.remove(&site).expect("captured"))
    }
}

/// The state of one running forward pass.
struct Pass<'m> {
    req: Forward<'m>,
    cfg: &'m ModelConfig,
    device: Device,
    dtype: DType,
    /// The attention bias of the global layers and of the sliding-window ones (each made
    /// only when some layer needs it).
    global_mask: Option<Tensor>,
    local_mask: Option<Tensor>,
    rope: Option<RopeTables>,
    /// The rotary tables of sliding-window layers with a RoPE base of their own.
    local_rope: Option<RopeTables>,
    captures: BTreeMap<Site, Tensor>,
    routes: BTreeMap<Site, Routes>,
}

impl<'m> Pass<'m> {
    fn new(req: Forward<'m>) -> Result<Self> {
        let model = req.model;
        let cfg = &model.config;
        let batch = req.batch;
        let (rows, len) = (batch.rows, batch.len);
        for site in req
            .capture
            .iter()
            .chain(req.interventions.iter().map(|i| &i.site))
        {
            site.check(cfg.n_layers)?;
        }
        if let Some(iv) = req.interventions.iter().find(|i| {
            matches!(i.action, Action::SideMemory { .. }) && !matches!(i.site, Site::MlpOut(_))
        }) {
            return Err(Error::invalid(format!(
                "side memories act at an MLP output site; `{}` is not one",
                iv.site
            )));
        }
        if let Some(l) = req.stop_after {
            if l >= cfg.n_layers {
                return Err(Error::invalid(format!(
                    "cannot stop after layer {l}: the model has {} layers",
                    cfg.n_layers
                )));
            }
        }
        let first = req.start.as_ref().map(|(l, _)| *l).unwrap_or(0);
        if first >= cfg.n_layers || req.stop_after.is_some_and(|s| s < first) {
            return Err(Error::invalid(format!(
                "start layer {first} is outside the layers to run"
            )));
        }
        if let Some((_, resid)) = &req.start {
            if resid.dims() != [rows, len, cfg.d_model] {
                return Err(Error::invalid(format!(
                    "the starting residual has shape {:?}; expected [{rows}, {len}, {}]",
                    resid.dims(),
                    cfg.d_model
                )));
            }
        }
        // Positions beyond the model's context: refused before any attention is sized.
        let last = batch
            .positions
            .iter()
            .copied()
            .max()
            .map_or(0, |p| p as usize + 1);
        if last > cfg.max_positions || len > cfg.max_positions {
            return Err(Error::invalid(format!(
                "a sequence of {} positions is longer than the model's context length \
                 ({}, max_position_embeddings / context_length)",
                last.max(len),
                cfg.max_positions
            )));
        }
        let (key_positions, key_valid, key_len) = match req.prefix {
            Some(p) => {
                if p.rows != rows {
                    return Err(Error::invalid(format!(
                        "the KV cache has {} rows; the batch has {rows}",
                        p.rows
                    )));
                }
                (
                    interleave(&p.positions, p.len, &batch.positions, len, rows),
                    interleave(&p.valid, p.len, &batch.valid, len, rows),
                    p.len + len,
                )
            }
            None => (batch.positions.clone(), batch.valid.clone(), len),
        };
        let dtype = model.dtype();
        let device = model.device().clone();
        let sliding: Vec<bool> = (0..cfg.n_layers).map(|l| cfg.is_sliding(l)).collect();
        let mask = |window: Option<usize>| -> Result<Tensor> {
            let m = attention_mask(
                &batch.positions,
                &key_positions,
                &key_valid,
                (rows, len, key_len),
                window,
            );
            host_tensor(m, (rows, 1, len, key_len), dtype, &device)
        };
        let global_mask = if sliding.iter().any(|s| !s) {
            Some(mask(None)?)
        } else {
            None
        };
        let local_mask = if sliding.iter().any(|s| *s) {
            Some(mask(cfg.sliding_window)?)
        } else {
            None
        };
        let tables =
            |rope: Rope| RopeTables::new(rope, &batch.positions, rows, len, dtype, &device);
        let rope = cfg.rope.map(tables).transpose()?;
        let local_rope = match (cfg.rope, cfg.local_rope_theta) {
            (Some(r), Some(theta)) if sliding.iter().any(|s| *s) => {
                Some(tables(Rope { theta, ..r })?)
            }
            _ => None,
        };
        Ok(Pass {
            cfg,
            device,
            dtype,
            global_mask,
            local_mask,
            rope,
            local_rope,
            captures: BTreeMap::new(),
            routes: BTreeMap::new(),
            req,
        })
    }

    /// The weight to use for `id`: an override as it is, else the model's own, frozen with its
    /// transpose when `matrix` (a linear layer's; norms and tables are used as they are).
    fn weight(&self, id: ParamId, matrix: bool) -> Result<Weight<'_>> {
        if let Some(t) = self.req.overrides.and_then(|o| o.get(&id)) {
            return Ok(Weight::Plain(t));
        }
        let id = match id {
            ParamId::LmHeadWeight if self.cfg.tie_embeddings => ParamId::TokenEmbed,
            other => other,
        };
        let params = &self.req.model.params;
        let w = params.require(id)?;
        if !matrix {
            return Ok(Weight::Plain(w));
        }
        Ok(Weight::Frozen {
            w,
            transposed: params.transposed(id)?,
        })
    }

    fn bias(&self, id: ParamId) -> Option<&Tensor> {
        self.req
            .overrides
            .and_then(|o| o.get(&id))
            .or_else(|| self.req.model.params.get(id))
    }

    fn linear(&self, x: &Tensor, w: ParamId, b: Option<ParamId>) -> Result<Tensor> {
        // The model's own matrices are multiplied by their contiguous transposes whether or
        // not a gradient flows: see `Params::transposed`.
        let weight = self.weight(w, true)?;
        let bias = b.and_then(|b| self.bias(b));
        ops::linear(x, weight, bias)
    }

    fn norm(&self, x: &Tensor, w: ParamId, b: ParamId) -> Result<Tensor> {
        let weight = self.weight(w, false)?.tensor();
        match self.cfg.norm {
            NormKind::Rms => ops::rms_norm(x, weight, self.cfg.norm_eps),
            NormKind::Layer => ops::layer_norm(x, weight, self.bias(b), self.cfg.norm_eps),
        }
    }

    /// RMSNorm with weight `w` whatever the model's norm kind (Gemma's q/k and output norms).
    fn rms_norm(&self, x: &Tensor, w: ParamId) -> Result<Tensor> {
        ops::rms_norm(x, self.weight(w, false)?.tensor(), self.cfg.norm_eps)
    }

    /// Applies the interventions at `site`, records it if captured.
    fn site(&mut self, site: Site, mut h: Tensor) -> Result<Tensor> {
        let here =
            |i: &&Intervention| i.site == site && !matches!(i.action, Action::SideMemory { .. });
        for iv in self.req.interventions.iter().filter(here) {
            h = iv.apply(&h)?;
        }
        if self.req.capture.contains(&site) {
            self.captures.insert(site, h.clone());
        }
        Ok(h)
    }

    fn embed(&mut self) -> Result<Tensor> {
        let batch = self.req.batch;
        let (rows, len) = (batch.rows, batch.len);
        let ids = Tensor::from_vec(batch.ids.clone(), rows * len, &self.device)?;
        let table = self.weight(ParamId::TokenEmbed, false)?.tensor();
        let vocab = table.dim(0)?;
        if let Some(bad) = batch.ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(Error::invalid(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        let mut h = table.index_select(&ids, 0)?;
        if self.cfg.learned_positions {
            let pos_table = self.weight(ParamId::PositionEmbed, false)?.tensor();
            let max = pos_table.dim(0)?;
            if let Some(bad) = batch.positions.iter().find(|&&p| p as usize >= max) {
                return Err(Error::invalid(format!(
                    "position {bad} is beyond the model's {max} learned positions"
                )));
            }
            let pos = Tensor::from_vec(batch.positions.clone(), rows * len, &self.device)?;
            h = (h + pos_table.index_select(&pos, 0)?)?;
        }
        if let Some(scale) = self.cfg.embed_scale {
            // candle rounds the factor to the tensor's type, as transformers does with its
            // `embed_scale` buffer.
            h = (h * scale)?;
        }
        let h = h.reshape((rows, len, self.cfg.d_model))?;
        self.site(Site::Embed, h)
    }

    #[allow(
        clippy::needless_range_loop,
        reason = "`l` is the layer number the blocks and sites are named by, not only an index"
    )]
    fn run(mut self) -> Result<ForwardOutput> {
        let n_layers = self.cfg.n_layers;
        let (first, mut h) = match self.req.start.take() {
            Some((l, resid)) => (l, resid.to_dtype(self.dtype)?),
            None => (0, self.embed()?),
        };
        let last = self.req.stop_after.unwrap_or(n_layers - 1);
        let mut new_kv: Vec<Option<LayerKv>> = vec![None; n_layers];
        for l in first..=last {
            h = self.site(Site::ResidPre(l), h)?;
            let (next, kv) = self.block(l, &h)?;
            h = self.site(Site::ResidPost(l), next)?;
            if self.req.keep_kv {
                new_kv[l] = Some(kv);
            }
        }
        let kv = if self.req.keep_kv {
            Some(self.extend_cache(new_kv)?)
        } else {
            None
        };
        let logits = if self.req.stop_after.is_some() || self.req.logits == LogitsAt::None {
            None
        } else {
            Some(self.head(&h)?)
        };
        Ok(ForwardOutput {
            captures: self.captures,
            routes: self.routes,
            logits,
            resid: h,
            kv,
        })
    }

    fn block(&mut self, l: usize, h: &Tensor) -> Result<(Tensor, LayerKv)> {
        use BlockParam::*;
        let p = |b| ParamId::Block(l, b);
        let x = self.norm(h, p(AttnNormWeight), p(AttnNormBias))?;
        let (attn, kv) = self.attention(l, &x)?;
        let attn = self.site(Site::AttnOut(l), attn)?;
        let next = match self.cfg.block {
            BlockLayout::Sequential => {
                let mid = (h + &attn)?;
                let m = self.norm(&mid, p(MlpNormWeight), p(MlpNormBias))?;
                let out = self.mlp(l, &m)?;
                (mid + out)?
            }
            BlockLayout::ParallelSharedNorm => {
                let out = self.mlp(l, &x)?;
                ((h + attn)? + out)?
            }
            BlockLayout::Parallel => {
                let m = self.norm(h, p(MlpNormWeight), p(MlpNormBias))?;
                let out = self.mlp(l, &m)?;
                ((h + attn)? + out)?
            }
            BlockLayout::Sandwich => {
                let mid = (h + self.rms_norm(&attn, p(AttnPostNormWeight))?)?;
                let m = self.norm(&mid, p(MlpNormWeight), p(MlpNormBias))?;
                let out = self.mlp(l, &m)?;
                (mid + self.rms_norm(&out, p(MlpPostNormWeight))?)?
            }
        };
        Ok((next, kv))
    }

    fn mlp(&mut self, l: usize, x: &Tensor) -> Result<Tensor> {
        use BlockParam::*;
        let p = |b| ParamId::Block(l, b);
        let pre = self.linear(x, p(InWeight), Some(p(InBias)))?;
        let key = if self.cfg.gated_mlp() {
            let gate = self.linear(x, p(GateWeight), None)?;
            ops::gated_activation(&gate, &pre, self.cfg.activation)?
        } else {
            ops::activation(&pre, self.cfg.activation)?
        };
        let key = self.site(Site::MlpKey(l), key)?;
        let mut out = self.linear(&key, p(OutWeight), Some(p(OutBias)))?;
        // Side memories read the key as well as the output, so they act here, before the
        // site's other interventions.
        for iv in &self.req.interventions {
            if let (
                Action::SideMemory {
                    memories,
                    activation,
                    forced,
                },
                true,
            ) = (&iv.action, iv.site == Site::MlpOut(l))
            {
                let (routed, routes) = side_memory::route(
                    &out,
                    &key,
                    &side_memory::routed_tokens(self.req.batch),
                    memories,
                    *activation,
                    forced.as_deref(),
                )?;
                out = routed;
                self.routes.insert(Site::MlpOut(l), routes);
            }
        }
        self.site(Site::MlpOut(l), out)
    }

    fn attention(&mut self, l: usize, x: &Tensor) -> Result<(Tensor, LayerKv)> {
        use BlockParam::*;
        let p = |b| ParamId::Block(l, b);
        let cfg = self.cfg;
        let (rows, len, _) = x.dims3()?;
        let (h, kvh, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let q = self
            .linear(x, p(QWeight), Some(p(QBias)))?
            .reshape((rows, len, h, hd))?;
        let k = self
            .linear(x, p(KWeight), Some(p(KBias)))?
            .reshape((rows, len, kvh, hd))?;
        let v = self
            .linear(x, p(VWeight), Some(p(VBias)))?
            .reshape((rows, len, kvh, hd))?;
        let (q, k) = if cfg.qk_norm {
            (
                self.rms_norm(&q, p(QNormWeight))?,
                self.rms_norm(&k, p(KNormWeight))?,
            )
        } else {
            (q, k)
        };
        let sliding = cfg.is_sliding(l);
        let rope = match &self.local_rope {
            Some(local) if sliding => Some(local),
            _ => self.rope.as_ref(),
        };
        // Queries and keys go to [rows, heads, len, head_dim], the queries scaled.
        let (q, k) = match rope {
            Some(r) if kernels::fusable(&q) => (
                r.apply_heads_first(&q, cfg.query_scale())?,
                r.apply_heads_first(&k, 1.0)?,
            ),
            Some(r) => (
                (r.apply(&q)?.transpose(1, 2)?.contiguous()? * cfg.query_scale())?,
                r.apply(&k)?.transpose(1, 2)?.contiguous()?,
            ),
            None => (
                (q.transpose(1, 2)?.contiguous()? * cfg.query_scale())?,
                k.transpose(1, 2)?.contiguous()?,
            ),
        };
        let v = v.transpose(1, 2)?.contiguous()?;
        let new = LayerKv {
            k: k.clone(),
            v: v.clone(),
        };
        let (k_all, v_all) = match self.req.prefix {
            Some(cache) => {
                let old = cache.layer(l)?;
                (
                    Tensor::cat(&[&old.k, &k], 2)?,
                    Tensor::cat(&[&old.v, &v], 2)?,
                )
            }
            None => (k, v),
        };
        let key_len = k_all.dim(2)?;
        // Grouped-query attention without copying keys: the query heads sharing one
        // key/value head are stacked along the sequence axis.
        let group = cfg.kv_group();
        let q = q.reshape((rows, kvh, group * len, hd))?;
        let scores = q
            .matmul(&k_all.transpose(2, 3)?)?
            .reshape((rows, h, len, key_len))?;
        let probs = ops::masked_softmax(&scores, self.mask_of(sliding))?.reshape((
            rows,
            kvh,
            group * len,
            key_len,
        ))?;
        let out = probs
            .matmul(&v_all)?
            .reshape((rows, h, len, hd))?
            .transpose(1, 2)?
            .reshape((rows, len, h * hd))?;
        let out = self.linear(&out, p(OWeight), Some(p(OBias)))?;
        Ok((out, new))
    }

    fn mask_of(&self, sliding: bool) -> &Tensor {
        let mask = if sliding {
            &self.local_mask
        } else {
            &self.global_mask
        };
        mask.as_ref().expect("made for every kind of layer present")
    }

    fn head(&mut self, h: &Tensor) -> Result<Tensor> {
        let f = self.norm(h, ParamId::FinalNormWeight, ParamId::FinalNormBias)?;
        let f = self.site(Site::FinalNorm, f)?;
        let (rows, len, d) = f.dims3()?;
        let entries = match &self.req.logits {
            LogitsAt::None => unreachable!("checked by the caller"),
            LogitsAt::All => {
                let logits = self.linear(&f, ParamId::LmHeadWeight, Some(ParamId::LmHeadBias))?;
                return self.site(Site::Logits, logits);
            }
            LogitsAt::Last => self.req.batch.last_entries(),
            LogitsAt::Entries(e) => e.clone(),
        };
        if self
            .req
            .interventions
            .iter()
            .any(|i| i.site == Site::Logits)
            || self.req.capture.contains(&Site::Logits)
        {
            return Err(Error::invalid(
                "the `logits` site can be captured or changed only with LogitsAt::All",
            ));
        }
        let mut idx = Vec::with_capacity(entries.len());
        for &(b, t) in &entries {
            if b >= rows || t >= len {
                return Err(Error::invalid(format!(
                    "logits requested at ({b}, {t}), outside the batch [{rows}, {len}]"
                )));
            }
            idx.push((b * len + t) as u32);
        }
        let n = idx.len();
        let idx = Tensor::from_vec(idx, n, &self.device)?;
        let picked = f.reshape((rows * len, d))?.index_select(&idx, 0)?;
        self.linear(&picked, ParamId::LmHeadWeight, Some(ParamId::LmHeadBias))
    }

    fn extend_cache(&self, new: Vec<Option<LayerKv>>) -> Result<KvCache> {
        let batch = self.req.batch;
        match self.req.prefix {
            Some(p) => p.extend(&batch.positions, &batch.valid, batch.len, new),
            None => Ok(KvCache {
                rows: batch.rows,
                len: batch.len,
                positions: batch.positions.clone(),
                valid: batch.valid.clone(),
                layers: new,
            }),
        }
    }
}

/// Additive attention bias `[rows, 1, len, key_len]` (flattened): query `i` sees key `j`
/// iff the key is real, not in the future (by position) and inside the sliding window.
fn attention_mask(
    q_pos: &[u32],
    k_pos: &[u32],
    k_valid: &[bool],
    (rows, len, key_len): (usize, usize, usize),
    window: Option<usize>,
) -> Vec<f32> {
    let mut mask = vec![MASKED as f32; rows * len * key_len];
    for b in 0..rows {
        for i in 0..len {
            let qp = q_pos[b * len + i] as usize;
            for j in 0..key_len {
                let kp = k_pos[b * key_len + j] as usize;
                let visible =
                    k_valid[b * key_len + j] && kp <= qp && window.is_none_or(|w| qp - kp < w);
                if visible {
                    mask[(b * len + i) * key_len + j] = 0.0;
                }
            }
        }
    }
    mask
}

/// cos/sin of every (row, position, frequency), computed once per pass.
struct RopeTables {
    rope: Rope,
    cos: Tensor,
    sin: Tensor,
}

impl RopeTables {
    fn new(
        rope: Rope,
        positions: &[u32],
        rows: usize,
        len: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let half = rope.rotary_dim / 2;
        let mut cos = Vec::with_capacity(rows * len * half);
        let mut sin = Vec::with_capacity(rows * len * half);
        for &p in positions {
            for i in 0..half {
                let exponent = (2 * i) as f64 / rope.rotary_dim as f64;
                if dtype == DType::F64 {
                    let angle = p as f64 / rope.theta.powf(exponent);
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                } else {
                    // Hugging Face computes the angles in f32; so do we, to match it.
                    let inv_freq = (1.0 / rope.theta.powf(exponent)) as f32;
                    let angle = p as f32 * inv_freq;
                    cos.push(angle.cos() as f64);
                    sin.push(angle.sin() as f64);
                }
            }
        }
        let shape = (rows, len, 1, half);
        Ok(RopeTables {
            rope,
            cos: Tensor::from_vec(cos, shape, device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, shape, device)?.to_dtype(dtype)?,
        })
    }

    /// `x: [rows, len, heads, head_dim]` rotated, laid out `[rows, heads, len, head_dim]`
    /// and scaled, by the fused kernel.
    fn apply_heads_first(&self, x: &Tensor, scale: f64) -> Result<Tensor> {
        let rotation = kernels::rope::Rotation {
            rotary_dim: self.rope.rotary_dim,
            interleaved: self.rope.interleaved,
            scale,
        };
        Ok(kernels::rope::rope_heads_first(
            x, &self.cos, &self.sin, rotation,
        )?)
    }

    /// Rotates the first `rotary_dim` dimensions of `x: [rows, len, heads, head_dim]`.
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let (rows, len, heads, hd) = x.dims4()?;
        let rot = self.rope.rotary_dim;
        let half = rot / 2;
        let x_rot = x.narrow(3, 0, rot)?;
        let rotated = if self.rope.interleaved {
            let pairs = x_rot.reshape((rows, len, heads, half, 2))?;
            let even = pairs.narrow(4, 0, 1)?.squeeze(4)?;
            let odd = pairs.narrow(4, 1, 1)?.squeeze(4)?;
            let new_even = (even.broadcast_mul(&self.cos)? - odd.broadcast_mul(&self.sin)?)?;
            let new_odd = (odd.broadcast_mul(&self.cos)? + even.broadcast_mul(&self.sin)?)?;
            Tensor::stack(&[new_even, new_odd], 4)?.reshape((rows, len, heads, rot))?
        } else {
            let x1 = x_rot.narrow(3, 0, half)?;
            let x2 = x_rot.narrow(3, half, half)?;
            let a = (x1.broadcast_mul(&self.cos)? - x2.broadcast_mul(&self.sin)?)?;
            let b = (x2.broadcast_mul(&self.cos)? + x1.broadcast_mul(&self.sin)?)?;
            Tensor::cat(&[a, b], 3)?
        };
        if rot == hd {
            Ok(rotated)
        } else {
            Ok(Tensor::cat(&[rotated, x.narrow(3, rot, hd - rot)?], 3)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_is_causal_by_position_and_respects_window_and_pads() {
        // one row, keys: [pad, t0, t1, t2]; queries = same
        let pos = [0, 0, 1, 2];
        let valid = [false, true, true, true];
        let m = attention_mask(&pos, &pos, &valid, (1, 4, 4), Some(2));
        let seen = |i: usize, j: usize| m[i * 4 + j] == 0.0;
        assert!(!seen(3, 0)); // pad key
        assert!(seen(3, 3) && seen(3, 2) && !seen(3, 1)); // window 2
        assert!(seen(2, 1) && !seen(1, 2)); // causal
    }
}
