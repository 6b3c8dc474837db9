//! The rows of the requests being optimised, split into groups that run on their own threads,
//! and each group's share of every request's loss.
//!
//! The split is exact: a request's loss is a weighted sum over its rows, so the pieces of it
//! that different groups compute add up to it, and so do their gradients.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{Tensor, D};

use crate::error::Result;
use crate::model::Model;
use crate::runtime::nll::target_log_probs;
use crate::runtime::ops::log_softmax_last;
use crate::runtime::{Intervention, LogitsAt};

use super::frozen::{assemble, freeze, Frozen, FrozenRows, RowSpec};
use super::{ValueHparams, ValuePrompts};

/// The rows of one request inside a group (contiguous there).
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

/// One request's frozen rows.
pub(super) struct RequestRows {
    pub frozen: Arc<FrozenRows>,
    /// The rows of its rewriting prompts, in order (the bare prompt first), and of its KL
    /// prompts.
    pub rewriting: Vec<usize>,
    pub kl: Vec<usize>,
}

/// Freezes the rows of `requests` (indices into `prompts`) in one forward pass.
pub(super) fn freeze_requests(
    model: &Model,
    prompts: &[ValuePrompts],
    requests: &[usize],
    hp: &ValueHparams,
) -> Result<Vec<RequestRows>> {
    let mut specs = Vec::new();
    let mut places = Vec::with_capacity(requests.len());
    for &r in requests {
        let p = &prompts[r];
        let rw_weight = 1.0 / p.rewriting.len() as f64;
        let rewriting = (specs.len()..specs.len() + p.rewriting.len()).collect();
        specs.extend(p.rewriting.iter().map(|lookup| RowSpec {
            lookup,
            target: Some(p.target),
            weight: rw_weight,
            end: hp.answer_end.is_some(),
        }));
        let kl_total =
            p.kl.iter()
                .map(|l| hp.kl_at.positions(l).len())
                .sum::<usize>()
                .max(1);
        let kl = (specs.len()..specs.len() + p.kl.len()).collect();
        specs.extend(p.kl.iter().map(|lookup| RowSpec {
            lookup,
            target: None,
            weight: 1.0 / kl_total as f64,
            end: false,
        }));
        places.push((rewriting, kl));
    }
    let layer = prompts[requests[0]].layer;
    let frozen = Arc::new(freeze(model, layer, &specs, hp.kl_at, hp.attention)?);
    Ok(places
        .into_iter()
        .map(|(rewriting, kl)| RequestRows {
            frozen: frozen.clone(),
            rewriting,
            kl,
        })
        .collect())
}

/// Rows that must share a group: one rewriting row, or all the KL rows of a request (its
/// KL reference distributions are kept per request and group).
struct Unit {
    request: usize,
    /// The rewriting row's index in its request; `None` for the KL rows.
    rewriting: Option<usize>,
    rows: Vec<(Arc<FrozenRows>, usize)>,
    /// Tokens a step runs for the longest of its rows.
    len: usize,
}

/// The rows of the requests `active` (`rows[r]` holds request r's) in `hp.groups` groups.
/// Rows are padded to their group's longest, so the groups take rows of like length:
/// sorted by length and cut where the slowest group is fastest (a group costs rows × its
/// longest row). Within a group each request's rows are contiguous, its KL rows last.
pub(super) fn build_groups(
    model: &Model,
    active: &[usize],
    rows: &[Option<RequestRows>],
    hp: &ValueHparams,
) -> Result<Vec<Group>> {
    let mut units: Vec<Unit> = Vec::new();
    for &r in active {
        let own = rows[r]
            .as_ref()
            .expect("an active request's rows are frozen");
        let f = &own.frozen;
        for (i, &b) in own.rewriting.iter().enumerate() {
            units.push(Unit {
                request: r,
                rewriting: Some(i),
                rows: vec![(f.clone(), b)],
                len: f.suffix_len(b),
            });
        }
        if !own.kl.is_empty() {
            units.push(Unit {
                request: r,
                rewriting: None,
                rows: own.kl.iter().map(|&b| (f.clone(), b)).collect(),
                len: own.kl.iter().map(|&b| f.suffix_len(b)).max().unwrap_or(0),
            });
        }
    }
    // Ties in request order, so that the groups do not depend on the sort's whims.
    units.sort_by_key(|u| u.len);
    let costs: Vec<(usize, usize)> = units.iter().map(|u| (u.rows.len(), u.len)).collect();
    let cuts = balanced_cuts(&costs, hp.groups.max(1));
    let order: HashMap<usize, usize> = active.iter().enumerate().map(|(i, &r)| (r, i)).collect();
    let mut groups = Vec::with_capacity(cuts.len());
    let mut units = units.into_iter();
    let mut from = 0;
    for to in cuts {
        let mut share: Vec<Unit> = units.by_ref().take(to - from).collect();
        from = to;
        // Request order, each request's rewriting rows in order and its KL rows last.
        share.sort_by_key(|u| (order[&u.request], u.rewriting.unwrap_or(usize::MAX)));
        let mut picks = Vec::new();
        let mut members: Vec<Member> = Vec::new();
        for unit in share {
            if members.last().map(|m| m.request) != Some(unit.request) {
                members.push(Member {
                    request: unit.request,
                    has_kl: false,
                });
            }
            let m = members.len() - 1;
            if unit.rewriting.is_none() {
                members[m].has_kl = true;
            }
            picks.extend(unit.rows.into_iter().map(|(f, b)| (f, b, m)));
        }
        groups.push(Group {
            frozen: assemble(model, &picks)?,
            members,
        });
    }
    Ok(groups)
}

/// Where to cut `units` (each (rows, tokens), sorted by tokens) into at most `groups`
/// contiguous shares so that the costliest share, rows × its longest row, is cheapest:
/// the end of each share.
fn balanced_cuts(units: &[(usize, usize)], groups: usize) -> Vec<usize> {
    let n = units.len();
    let groups = groups.min(n).max(1);
    let mut rows_before = vec![0; n + 1];
    for (i, &(rows, _)) in units.iter().enumerate() {
        rows_before[i + 1] = rows_before[i] + rows;
    }
    // Sorted by tokens, so a share i..j is padded to units[j - 1]'s.
    let cost = |i: usize, j: usize| (rows_before[j] - rows_before[i]) * units[j - 1].1;
    // best[g][j]: the cheapest worst share of units[..j] in g + 1 shares; from[g][j] its
    // last share's start.
    let mut best = vec![vec![usize::MAX; n + 1]; groups];
    let mut from = vec![vec![0; n + 1]; groups];
    for (j, b) in best[0].iter_mut().enumerate().skip(1) {
        *b = cost(0, j);
    }
    for g in 1..groups {
        for j in g + 1..=n {
            for i in g..j {
                let worst = best[g - 1][i].max(cost(i, j));
                if worst < best[g][j] {
                    best[g][j] = worst;
                    from[g][j] = i;
                }
            }
        }
    }
    let mut cuts = vec![n];
    let mut j = n;
    for g in (1..groups).rev() {
        j = from[g][j];
        cuts.push(j);
    }
    cuts.reverse();
    cuts
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

#[cfg(test)]
mod tests {
    use super::balanced_cuts;

    #[test]
    fn rows_are_cut_where_the_costliest_group_is_cheapest() {
        // Ten short rows and two long ones: the long ones alone (2 × 10), the short ones
        // together (10 × 2), rather than halves padded to the longest (6 × 10).
        let mut units = vec![(1, 2); 10];
        units.extend([(1, 10), (1, 10)]);
        assert_eq!(balanced_cuts(&units, 2), vec![10, 12]);
        // Equal rows split evenly; more groups than units give one unit each.
        assert_eq!(balanced_cuts(&[(1, 5); 8], 4), vec![2, 4, 6, 8]);
        assert_eq!(balanced_cuts(&[(3, 4), (1, 9)], 4), vec![1, 2]);
        // A unit of several rows costs them all.
        assert_eq!(balanced_cuts(&[(1, 3), (1, 3), (6, 4)], 2), vec![2, 3]);
    }
}
