//! Everything about a group of prompt rows that stays fixed while the δs change: the
//! residual entering the first layer a step runs, each row from its looked-up token on, and
//! the keys and values of the positions before it (see the module documentation above).

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
    /// The member (piece of one request) the row belongs to, an index into the group's.
    pub member: usize,
    /// NLL: 1 / (the request's rewriting rows); KL: 1 / (the request's KL positions).
    pub weight: f64,
    /// A rewriting row also scores whether the answer ends after the target.
    pub end: bool,
}

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
    /// Per δ site, `[rows, d]`: the output the δ is added to (the attention's, the MLP's)
    /// at each row's looked-up token.
    pub looked_up: Vec<Tensor>,
}

/// `with_attention`: a δ on the attention output of `layer` too (PMET); the steps then start
/// at `layer` itself, whose attention must run again.
pub(super) fn freeze(
    model: &Model,
    layer: usize,
    rows: &[RowSpec],
    kl_at: KlAt,
    with_attention: bool,
) -> Result<Frozen> {
    let mut seqs = Vec::with_capacity(rows.len());
    let mut cuts = Vec::with_capacity(rows.len());
    // (row, position, target, weight): rewriting entries first, then the KL entries.
    let mut nll: Vec<(usize, usize, u32, f64)> = Vec::new();
    let mut kl: Vec<(usize, usize, f64)> = Vec::new();
    let mut end: Vec<(usize, usize, f64)> = Vec::new();
    for (b, row) in rows.iter().enumerate() {
        let p = row.lookup;
        match row.target {
            Some(target) => {
                let n_t = target.len();
                let scored = n_t + usize::from(row.end);
                let mut ids = p.ids.clone();
                ids.extend_from_slice(&target[..scored - 1]);
                for (j, &t) in target.iter().enumerate() {
                    nll.push((b, p.ids.len() - 1 + j, t, row.weight / scored as f64));
                }
                if row.end {
                    end.push((b, p.ids.len() - 1 + n_t, row.weight / scored as f64));
                }
                seqs.push(ids);
            }
            None => {
                let positions = kl_at.positions(p);
                for &pos in &positions {
                    kl.push((b, pos, row.weight));
                }
                // Tokens after the last position read are never used.
                seqs.push(p.ids[..=positions[positions.len() - 1]].to_vec());
            }
        }
        cuts.push(p.index);
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
    // The chunk's forward starts from the residual entering block `start`; the same pass
    // also gives the looked-up outputs and the prefix's keys and values.
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
    let at_lookup: Vec<u32> = cuts
        .iter()
        .enumerate()
        .map(|(b, &c)| (b * len + full.index(b, c)) as u32)
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

    // The chunk: each row from its looked-up token on.
    let suffixes: Vec<Vec<u32>> = seqs
        .iter()
        .zip(&cuts)
        .map(|(s, &c)| s[c..].to_vec())
        .collect();
    let starts: Vec<u32> = cuts.iter().map(|&c| c as u32).collect();
    let chunk = TokenBatch::continuation(&suffixes, &starts, Padding::Right, pad)?;
    let mut gather = Vec::with_capacity(n_rows * chunk.len);
    for (b, &c) in cuts.iter().enumerate() {
        for i in 0..chunk.len {
            let src = if i < suffixes[b].len() { c + i } else { 0 };
            gather.push((b * len + src) as u32);
        }
    }
    let gather = Tensor::new(gather.as_slice(), model.device())?;
    let resid = out
        .capture(resid_site)?
        .reshape((n_rows * len, d))?
        .index_select(&gather, 0)?
        .reshape((n_rows, chunk.len, d))?;

    // The prefix: each row's positions before its looked-up token, from the full cache.
    let p = cuts.iter().copied().max().unwrap_or(0);
    let prefix = if p == 0 {
        None
    } else {
        let cache = out.kv.expect("asked for");
        let mut positions = Vec::with_capacity(n_rows * p);
        let mut valid = Vec::with_capacity(n_rows * p);
        for (b, &c) in cuts.iter().enumerate() {
            for j in 0..p {
                positions.push(full.positions[b * len + j]);
                valid.push(j < c && full.valid[b * len + j]);
            }
        }
        let layers = cache
            .layers
            .into_iter()
            .enumerate()
            .map(|(l, kv)| match kv {
                Some(kv) if l >= start => Ok(Some(LayerKv {
                    k: kv.k.narrow(2, 0, p)?,
                    v: kv.v.narrow(2, 0, p)?,
                })),
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        Some(KvCache {
            rows: n_rows,
            len: p,
            positions,
            valid,
            layers,
        })
    };

    let member = |b: usize| rows[b].member;
    let mut entries = Vec::with_capacity(nll.len() + kl.len());
    for &(b, pos, _, _) in &nll {
        entries.push((b, pos - cuts[b]));
    }
    for &(b, pos, _) in end.iter().chain(&kl) {
        entries.push((b, pos - cuts[b]));
    }
    Ok(Frozen {
        start,
        sites,
        chunk,
        resid,
        prefix,
        entries,
        targets: nll.iter().map(|e| e.2).collect(),
        nll_member: nll.iter().map(|e| member(e.0)).collect(),
        nll_weight: nll.iter().map(|e| e.3).collect(),
        end_member: end.iter().map(|e| member(e.0)).collect(),
        end_weight: end.iter().map(|e| e.2).collect(),
        kl_member: kl.iter().map(|e| member(e.0)).collect(),
        kl_weight: kl.iter().map(|e| e.2).collect(),
        row_member: rows.iter().map(|r| r.member).collect(),
        looked_up,
    })
}
