//! Everything about prompt rows that stays fixed while the δs change: the residual entering
//! the first layer a step runs, each row from its looked-up token on, and the keys and
//! values of the positions before it (see the module documentation above).
//!
//! Rows are frozen once, when their request joins the optimisation ([`freeze`]); a group
//! of rows for one step is put together from them ([`assemble`]) as requests finish and
//! others join, without running the layers below again.

use std::sync::Arc;

use candle_core::Tensor;

use crate::error::Result;
use crate::methods::rome::key::Lookup;
use crate::model::Model;
use crate::runtime::kv_cache::{KvCache, LayerKv};
use crate::runtime::{LogitsAt, Padding, Site, TokenBatch};

use super::KlAt;

/// One prompt row: a rewriting prompt scored on the target's tokens, or a KL prompt.
pub(super) struct RowSpec<'a> {
    pub lookup: &'a Lookup,
    /// The target for a rewriting row; `None` for a KL row.
    pub target: Option<&'a [u32]>,
    /// NLL: 1 / (the request's rewriting rows); KL: 1 / (the request's KL positions).
    pub weight: f64,
    /// A rewriting row also scores whether the answer ends after the target.
    pub end: bool,
}

/// What a step needs of one frozen row besides its tensors. Positions are relative to the
/// looked-up token.
struct RowInfo {
    /// The tokens from the looked-up one on.
    suffix: Vec<u32>,
    /// The looked-up token's index: the row's prefix length.
    cut: usize,
    /// The prefix's position ids and validity.
    prefix_positions: Vec<u32>,
    prefix_valid: Vec<bool>,
    /// (position, target token, weight in the member's NLL).
    nll: Vec<(usize, u32, f64)>,
    /// (position, weight) of the answer-end entries and of the KL entries.
    end: Vec<(usize, f64)>,
    kl: Vec<(usize, f64)>,
}

/// Rows frozen in one forward pass.
pub(super) struct FrozenRows {
    start: usize,
    sites: Vec<Site>,
    rows: Vec<RowInfo>,
    /// `[rows, len, d]`: each row from its looked-up token on (pads after its suffix).
    resid: Tensor,
    /// Each row's positions before its looked-up token, `[rows, heads, p, head_dim]` per
    /// layer from `start` on.
    prefix: Option<KvCache>,
    /// Per δ site, `[rows, d]`: the output the δ is added to at each row's looked-up token.
    looked_up: Vec<Tensor>,
}

impl FrozenRows {
    /// The tokens a step runs for row `b`.
    pub fn suffix_len(&self, b: usize) -> usize {
        self.rows[b].suffix.len()
    }

    /// Per δ site, the output it is added to at row `b`'s looked-up token.
    pub fn looked_up(&self, b: usize) -> Result<Vec<Tensor>> {
        self.looked_up.iter().map(|t| Ok(t.get(b)?)).collect()
    }
}

/// A group of rows, put together for the steps: what [`super::groups::group_loss`] runs.
pub(super) struct Frozen {
    /// The layer each step starts at, and the sites the δs are added to (the MLP's last).
    pub start: usize,
    pub sites: Vec<Site>,
    pub chunk: TokenBatch,
    pub resid: Tensor,
    pub prefix: Option<KvCache>,
    /// Where logits are read: the NLL entries first, then the answer-end entries, then the
    /// KL entries.
    pub entries: Vec<(usize, usize)>,
    /// Per NLL entry: its target token, member and weight in its member's NLL.
    pub targets: Vec<u32>,
    pub nll_member: Vec<usize>,
    pub nll_weight: Vec<f64>,
    /// Per answer-end entry (after the target): its member and weight in its member's NLL.
    pub end_member: Vec<usize>,
    pub end_weight: Vec<f64>,
    /// Per KL entry: its member and weight in its member's KL.
    pub kl_member: Vec<usize>,
    pub kl_weight: Vec<f64>,
    /// Per row: its member.
    pub row_member: Vec<usize>,
}

/// `with_attention`: a δ on the attention output of `layer` too (PMET); the steps then start
/// at `layer` itself, whose attention must run again.
pub(super) fn freeze(
    model: &Model,
    layer: usize,
    rows: &[RowSpec],
    kl_at: KlAt,
    with_attention: bool,
) -> Result<FrozenRows> {
    let mut seqs = Vec::with_capacity(rows.len());
    let mut infos = Vec::with_capacity(rows.len());
    for row in rows {
        let p = row.lookup;
        let c = p.index;
        let mut info = RowInfo {
            suffix: Vec::new(),
            cut: c,
            prefix_positions: Vec::new(),
            prefix_valid: Vec::new(),
            nll: Vec::new(),
            end: Vec::new(),
            kl: Vec::new(),
        };
        match row.target {
            Some(target) => {
                let n_t = target.len();
                let scored = n_t + usize::from(row.end);
                let mut ids = p.ids.clone();
                ids.extend_from_slice(&target[..scored - 1]);
                let w = row.weight / scored as f64;
                for (j, &t) in target.iter().enumerate() {
                    info.nll.push((p.ids.len() - 1 + j - c, t, w));
                }
                if row.end {
                    info.end.push((p.ids.len() - 1 + n_t - c, w));
                }
                seqs.push(ids);
            }
            None => {
                let positions = kl_at.positions(p);
                for &pos in &positions {
                    info.kl.push((pos - c, row.weight));
                }
                // Tokens after the last position read are never used.
                seqs.push(p.ids[..=positions[positions.len() - 1]].to_vec());
            }
        }
        info.suffix = seqs.last().expect("pushed")[c..].to_vec();
        infos.push(info);
    }
    let pad = model.tokenizer()?.pad_id();
    let full = TokenBatch::new(&seqs, Padding::Right, pad)?;
    // Above the last layer nothing is left to start from: then start at l itself.
    let (start, sites) = if with_attention {
        (layer, vec![Site::AttnOut(layer), Site::MlpOut(layer)])
    } else if layer + 1 < model.config.n_layers {
        (layer + 1, vec![Site::ResidPre(layer + 1)])
    } else {
        (layer, vec![Site::MlpOut(layer)])
    };
    let outputs: Vec<Site> = if with_attention {
        vec![Site::AttnOut(layer), Site::MlpOut(layer)]
    } else {
        vec![Site::MlpOut(layer)]
    };
    // One pass gives the residual entering block `start`, the looked-up outputs and the
    // prefix's keys and values.
    let resid_site = Site::ResidPre(start);
    let mut captured = outputs.clone();
    if !captured.contains(&resid_site) {
        captured.push(resid_site);
    }
    let out = model
        .forward(&full)
        .capture(captured)
        .logits(LogitsAt::None)
        .keep_kv()
        .run()?;
    let (n_rows, len, d) = out.capture(resid_site)?.dims3()?;
    let at_lookup: Vec<u32> = infos
        .iter()
        .enumerate()
        .map(|(b, info)| (b * len + full.index(b, info.cut)) as u32)
        .collect();
    let at_lookup = Tensor::new(at_lookup.as_slice(), model.device())?;
    let looked_up = outputs
        .iter()
        .map(|&site| {
            Ok(out
                .capture(site)?
                .reshape((n_rows * len, d))?
                .index_select(&at_lookup, 0)?)
        })
        .collect::<Result<Vec<_>>>()?;

    // Each row from its looked-up token on.
    let chunk_len = infos.iter().map(|i| i.suffix.len()).max().unwrap_or(0);
    let mut gather = Vec::with_capacity(n_rows * chunk_len);
    for (b, info) in infos.iter().enumerate() {
        for i in 0..chunk_len {
            let src = if i < info.suffix.len() {
                info.cut + i
            } else {
                0
            };
            gather.push((b * len + src) as u32);
        }
    }
    let gather = Tensor::new(gather.as_slice(), model.device())?;
    let resid = out
        .capture(resid_site)?
        .reshape((n_rows * len, d))?
        .index_select(&gather, 0)?
        .reshape((n_rows, chunk_len, d))?;

    // The prefix: each row's positions before its looked-up token, from the full cache.
    let p = infos.iter().map(|i| i.cut).max().unwrap_or(0);
    for (b, info) in infos.iter_mut().enumerate() {
        info.prefix_positions = full.positions[b * len..b * len + info.cut].to_vec();
        info.prefix_valid = full.valid[b * len..b * len + info.cut].to_vec();
    }
    let prefix = if p == 0 {
        None
    } else {
        let cache = out.kv.expect("asked for");
        let layers = cache
            .layers
            .into_iter()
            .enumerate()
            .map(|(l, kv)| match kv {
                Some(kv) if l >= start => Ok(Some(LayerKv {
                    k: kv.k.narrow(2, 0, p)?.contiguous()?,
                    v: kv.v.narrow(2, 0, p)?.contiguous()?,
                })),
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        // Positions and validity are per row (`RowInfo`); the cache's own are rebuilt when
        // rows are put together.
        Some(KvCache {
            rows: n_rows,
            len: p,
            positions: Vec::new(),
            valid: Vec::new(),
            layers,
        })
    };
    Ok(FrozenRows {
        start,
        sites,
        rows: infos,
        resid,
        prefix,
        looked_up,
    })
}

/// `t` cut or zero-padded to `size` along `dim`.
fn fit(t: &Tensor, dim: usize, size: usize) -> Result<Tensor> {
    let have = t.dim(dim)?;
    Ok(if have > size {
        t.narrow(dim, 0, size)?
    } else if have < size {
        let mut shape = t.dims().to_vec();
        shape[dim] = size - have;
        let zeros = Tensor::zeros(shape, t.dtype(), t.device())?;
        Tensor::cat(&[t, &zeros], dim)?
    } else {
        t.clone()
    })
}

/// The rows `picks` — (frozen rows, row, member) — as one group, in that order. All frozen
/// at the same layer and sites.
pub(super) fn assemble(model: &Model, picks: &[(Arc<FrozenRows>, usize, usize)]) -> Result<Frozen> {
    let first = &picks.first().expect("a group has rows").0;
    let (start, sites) = (first.start, first.sites.clone());
    let info = |i: usize| &picks[i].0.rows[picks[i].1];
    let len = (0..picks.len())
        .map(|i| info(i).suffix.len())
        .max()
        .unwrap_or(0);
    let p = (0..picks.len()).map(|i| info(i).cut).max().unwrap_or(0);
    // Consecutive picks from the same frozen rows are taken in one selection.
    let mut runs: Vec<(&FrozenRows, Vec<u32>)> = Vec::new();
    for (src, b, _) in picks {
        match runs.last_mut() {
            Some((s, idx)) if std::ptr::eq(*s, src.as_ref()) => idx.push(*b as u32),
            _ => runs.push((src.as_ref(), vec![*b as u32])),
        }
    }
    let device = model.device();
    let mut resid = Vec::with_capacity(runs.len());
    let mut kv: Vec<Vec<(Tensor, Tensor)>> = Vec::new();
    let layer_shape = runs
        .iter()
        .find_map(|(s, _)| s.prefix.as_ref())
        .map(|c| c.layer(start).map(|kv| kv.k.dims().to_vec()))
        .transpose()?;
    for (src, idx) in &runs {
        let rows = idx.len();
        let idx = Tensor::new(idx.as_slice(), device)?;
        resid.push(fit(&src.resid.index_select(&idx, 0)?, 1, len)?);
        if p == 0 {
            continue;
        }
        let shape = layer_shape.as_ref().expect("a prefix exists when p > 0");
        let per_layer = (start..model.config.n_layers)
            .map(|l| match &src.prefix {
                Some(cache) => {
                    let layer = cache.layer(l)?;
                    Ok((
                        fit(&layer.k.index_select(&idx, 0)?, 2, p)?,
                        fit(&layer.v.index_select(&idx, 0)?, 2, p)?,
                    ))
                }
                None => {
                    let zeros =
                        Tensor::zeros((rows, shape[1], p, shape[3]), src.resid.dtype(), device)?;
                    Ok((zeros.clone(), zeros))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        kv.push(per_layer);
    }
    let cat = |parts: &[Tensor]| -> Result<Tensor> { Ok(Tensor::cat(parts, 0)?) };
    let prefix = if p == 0 {
        None
    } else {
        let mut positions = Vec::with_capacity(picks.len() * p);
        let mut valid = Vec::with_capacity(picks.len() * p);
        for i in 0..picks.len() {
            let r = info(i);
            for j in 0..p {
                positions.push(r.prefix_positions.get(j).copied().unwrap_or(0));
                valid.push(r.prefix_valid.get(j).copied().unwrap_or(false));
            }
        }
        let mut layers = vec![None; model.config.n_layers];
        for (k, l) in (start..model.config.n_layers).enumerate() {
            let ks: Vec<Tensor> = kv.iter().map(|run| run[k].0.clone()).collect();
            let vs: Vec<Tensor> = kv.iter().map(|run| run[k].1.clone()).collect();
            layers[l] = Some(LayerKv {
                k: cat(&ks)?,
                v: cat(&vs)?,
            });
        }
        Some(KvCache {
            rows: picks.len(),
            len: p,
            positions,
            valid,
            layers,
        })
    };
    let suffixes: Vec<Vec<u32>> = (0..picks.len()).map(|i| info(i).suffix.clone()).collect();
    let starts: Vec<u32> = (0..picks.len()).map(|i| info(i).cut as u32).collect();
    let pad = model.tokenizer()?.pad_id();
    let chunk = TokenBatch::continuation(&suffixes, &starts, Padding::Right, pad)?;

    let mut group = Frozen {
        start,
        sites,
        chunk,
        resid: cat(&resid)?,
        prefix,
        entries: Vec::new(),
        targets: Vec::new(),
        nll_member: Vec::new(),
        nll_weight: Vec::new(),
        end_member: Vec::new(),
        end_weight: Vec::new(),
        kl_member: Vec::new(),
        kl_weight: Vec::new(),
        row_member: picks.iter().map(|pick| pick.2).collect(),
    };
    for (i, pick) in picks.iter().enumerate() {
        for &(pos, t, w) in &info(i).nll {
            group.entries.push((i, pos));
            group.targets.push(t);
            group.nll_member.push(pick.2);
            group.nll_weight.push(w);
        }
    }
    for (i, pick) in picks.iter().enumerate() {
        for &(pos, w) in &info(i).end {
            group.entries.push((i, pos));
            group.end_member.push(pick.2);
            group.end_weight.push(w);
        }
    }
    for (i, pick) in picks.iter().enumerate() {
        for &(pos, w) in &info(i).kl {
            group.entries.push((i, pos));
            group.kl_member.push(pick.2);
            group.kl_weight.push(w);
        }
    }
    Ok(group)
}
