//! The rows of the requests being optimised, split into groups that run on their own threads,
//! and each group's share of every request's loss.
//!
//! The split is exact: a request's loss is a weighted sum over its rows, so the pieces of it
//! that different groups compute add up to it, and so do their gradients.

use std::collections::HashMap;

use candle_core::{Tensor, D};

use crate::error::Result;
use crate::model::Model;
use crate::runtime::nll::target_log_probs;
use crate::runtime::ops::log_softmax_last;
use crate::runtime::{Intervention, LogitsAt};

use super::frozen::{freeze, Frozen, RowSpec};
use super::{ValueHparams, ValuePrompts};

/// A contiguous piece of one request's rows inside a group.
pub(super) struct Member {
    pub request: usize,
    /// Whether the request's KL rows are in this piece.
    pub has_kl: bool,
}

pub(super) struct Group {
    pub frozen: Frozen,
    pub members: Vec<Member>,
}

impl Group {
    pub fn rows(&self) -> usize {
        self.frozen.chunk.rows
    }
}

/// The rows of the requests `active` (indices into `prompts`) in `hp.groups` groups: the
/// rewriting rows, in order, in contiguous shares of equal size; a request's KL rows join the
/// share that holds its last rewriting row.
pub(super) fn build_groups(
    model: &Model,
    prompts: &[ValuePrompts],
    active: &[usize],
    hp: &ValueHparams,
) -> Result<Vec<Group>> {
    let total: usize = active.iter().map(|&r| prompts[r].rewriting.len()).sum();
    let per_group = total.div_ceil(hp.groups.max(1)).max(1);
    // (share, request, rewriting row range, with KL)
    let mut pieces: Vec<(usize, usize, std::ops::Range<usize>, bool)> = Vec::new();
    let mut seen = 0;
    for &r in active {
        let n = prompts[r].rewriting.len();
        let mut i = 0;
        while i < n {
            let share = (seen + i) / per_group;
            let end = n.min((share + 1) * per_group - seen);
            pieces.push((share, r, i..end, end == n));
            i = end;
        }
        seen += n;
    }
    let shares = pieces.last().map_or(0, |p| p.0 + 1);
    let mut groups = Vec::with_capacity(shares);
    for share in 0..shares {
        let mut rows = Vec::new();
        let mut members = Vec::new();
        for (_, r, range, has_kl) in pieces.iter().filter(|p| p.0 == share) {
            let p = &prompts[*r];
            let m = members.len();
            let rw_weight = 1.0 / p.rewriting.len() as f64;
            for lookup in &p.rewriting[range.clone()] {
                rows.push(RowSpec {
                    lookup,
                    target: Some(p.target),
                    member: m,
                    weight: rw_weight,
                    end: hp.answer_end.is_some(),
                });
            }
            if *has_kl {
                let kl_total =
                    p.kl.iter()
                        .map(|l| hp.kl_at.positions(l).len())
                        .sum::<usize>()
                        .max(1);
                for lookup in p.kl {
                    rows.push(RowSpec {
                        lookup,
                        target: None,
                        member: m,
                        weight: 1.0 / kl_total as f64,
                        end: false,
                    });
                }
            }
            members.push(Member {
                request: *r,
                has_kl: *has_kl && !p.kl.is_empty(),
            });
        }
        let layer = prompts[active[0]].layer;
        groups.push(Group {
            frozen: freeze(model, layer, &rows, hp.kl_at, hp.attention)?,
            members,
        });
    }
    Ok(groups)
}

/// A group's share of each member's loss at the current δs.
pub(super) struct GroupLoss {
    /// `[members]`: NLL + kl_factor · KL.
    pub loss: Tensor,
    /// Per member, as numbers: (loss, NLL).
    pub values: Vec<(f64, f64)>,
    /// The KL prompts' log-probabilities of requests seen here for the first time (taken as
    /// the distributions before the edit: the first pass runs at δ = 0).
    pub new_kl_init: Vec<(usize, Tensor)>,
}

/// `[n, m]` with `w` at (member, entry), as a matrix that sums entries into members.
fn member_sums(members: usize, of: &[usize], w: &[f64], like: &Tensor) -> Result<Tensor> {
    let mut m = vec![0f32; members * of.len()];
    for (e, (&member, &weight)) in of.iter().zip(w).enumerate() {
        m[member * of.len() + e] = weight as f32;
    }
    Ok(Tensor::from_vec(m, (members, of.len()), like.device())?.to_dtype(like.dtype())?)
}

/// The loss of every member of `g` with request r's δs being `deltas[r]` (one per site of
/// the frozen rows, in their order).
pub(super) fn group_loss(
    model: &Model,
    g: &Group,
    deltas: &[Vec<Tensor>],
    kl_init: &HashMap<usize, Tensor>,
    kl_factor: f64,
    answer_end: Option<&Tensor>,
) -> Result<GroupLoss> {
    let f = &g.frozen;
    let at: Vec<(usize, usize)> = (0..f.chunk.rows).map(|b| (b, 0)).collect();
    let mut forward = model
        .forward(&f.chunk)
        .start_at(f.start, f.resid.clone())
        .logits(LogitsAt::Entries(f.entries.clone()));
    for (s, &site) in f.sites.iter().enumerate() {
        let rows: Vec<Tensor> = f
            .row_member
            .iter()
            .map(|&m| deltas[g.members[m].request][s].clone())
            .collect();
        let values = Tensor::stack(&rows, 0)?;
        forward = forward.intervene(Intervention::add(site, at.clone(), values));
    }
    if let Some(prefix) = &f.prefix {
        forward = forward.prefix(prefix);
    }
    let logits = forward.run()?.logits.expect("asked for logits");
    let n_members = g.members.len();
    let n_nll = f.targets.len();
    let n_end = f.end_member.len();
    let n_kl = f.entries.len() - n_nll - n_end;
    let picked = target_log_probs(&logits.narrow(0, 0, n_nll)?, &f.targets)?;
    let sums = member_sums(n_members, &f.nll_member, &f.nll_weight, &logits)?;
    let mut nll = sums.matmul(&picked.unsqueeze(1)?)?.squeeze(1)?.neg()?;
    if let (Some(ends), true) = (answer_end, n_end > 0) {
        // log p(the answer ends here) = log Σ over the ending tokens of p(token).
        let p = log_softmax_last(&logits.narrow(0, n_nll, n_end)?)?.exp()?;
        let ended = p
            .matmul(&ends.to_dtype(p.dtype())?.unsqueeze(1)?)?
            .squeeze(1)?;
        let sums = member_sums(n_members, &f.end_member, &f.end_weight, &logits)?;
        let end_nll = sums
            .matmul(&ended.log()?.unsqueeze(1)?)?
            .squeeze(1)?
            .neg()?;
        nll = (nll + end_nll)?;
    }
    let mut loss = nll.clone();
    let mut new_kl_init = Vec::new();
    if n_kl > 0 && kl_factor != 0.0 {
        let kl_lp = log_softmax_last(&logits.narrow(0, n_nll + n_end, n_kl)?)?;
        // Each member's KL entries are contiguous and in member order.
        let mut init = Vec::new();
        let mut offset = 0;
        for (i, m) in g.members.iter().enumerate().filter(|(_, m)| m.has_kl) {
            let count = f.kl_member.iter().filter(|&&e| e == i).count();
            let piece = match kl_init.get(&m.request) {
                Some(t) => t.clone(),
                None => {
                    let t = kl_lp.narrow(0, offset, count)?.detach();
                    new_kl_init.push((m.request, t.clone()));
                    t
                }
            };
            init.push(piece);
            offset += count;
        }
        let init = Tensor::cat(&init, 0)?;
        let per_entry = (kl_lp.exp()? * (&kl_lp - init)?)?.sum(D::Minus1)?;
        let sums = member_sums(n_members, &f.kl_member, &f.kl_weight, &logits)?;
        let kl = sums.matmul(&per_entry.unsqueeze(1)?)?.squeeze(1)?;
        loss = (loss + (kl * kl_factor)?)?;
    }
    let loss_v = loss.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
    let nll_v = nll.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
    Ok(GroupLoss {
        loss,
        values: loss_v.into_iter().zip(nll_v).collect(),
        new_kl_init,
    })
}
