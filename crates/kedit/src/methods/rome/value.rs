//! v*: the MLP output at the subject that makes the model say the target.
//!
//! δ is added to `blocks.{l}.mlp.out` at the subject's looked-up token of every rewriting
//! prompt (context template + prompt + target tokens but the last) and of the KL prompt
//! ("{subject} is a"), and optimised with Adam on
//!
//!   NLL(target) + kl_factor · KL(p_δ ‖ p₀ on the KL prompt) + wd · ‖δ‖ / ‖v₀‖²
//!
//! where the KL prompt's next-token distribution is read at its subject's last token (ROME's
//! code), at its last token (the paper's equation: what follows "{subject} is a"), or both
//! ([`KlAt`]); clamping ‖δ‖ ≤ clamp_norm_factor · ‖v₀‖ after each step and stopping early
//! once the loss (or, optionally, its NLL part alone) is small. v* = v₀ + δ, with v₀ the MLP output at the
//! subject in the plain prompt.
//!
//! Doing less work, exactly: δ enters after layer l's MLP at the looked-up token, so layers
//! up to l (the other positions of layer l never see δ: attention reads the layer's input,
//! the MLP is per position) and every position before that token are the same at every
//! step. They are run once; each step adds δ to the residual entering layer l+1 and runs
//! only the layers above, over the positions from the looked-up token on, attending to the
//! cached keys/values of the earlier ones, with logits only where the loss reads them.

use candle_core::{DType, Tensor, Var};

use crate::error::{Error, Result};
use crate::methods::adam::Adam;
use crate::methods::loss::mean_row_nll;
use crate::methods::rome::key::Lookup;
use crate::model::Model;
use crate::runtime::kv_cache::{KvCache, LayerKv};
use crate::runtime::ops::log_softmax_last;
use crate::runtime::threads::on_threads;
use crate::runtime::{Intervention, LogitsAt, Padding, Site, TokenBatch};

#[derive(Clone, Debug)]
pub struct ValueHparams {
    pub steps: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub clamp_norm_factor: f64,
    pub kl_factor: f64,
    /// Where the KL prompts' distributions are compared.
    pub kl_at: KlAt,
    pub early_stop_loss: f64,
    /// Stop once the NLL part alone is below this (0: never).
    pub early_stop_nll: f64,
    /// Row groups run on their own threads (the split is exact: losses and gradients add).
    pub groups: usize,
}

/// What v* is optimised over: δ at `blocks.{layer}.mlp.out`, the rewriting prompts (each
/// followed by the target's tokens but the last), the target and the KL prompts.
#[derive(Clone, Copy, Debug)]
pub struct ValuePrompts<'a> {
    pub layer: usize,
    pub rewriting: &'a [Lookup],
    pub target: &'a [u32],
    pub kl: &'a [Lookup],
}

/// Where the KL term compares the edited and the original next-token distributions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlAt {
    /// At the looked-up subject token (ROME: the word after the subject).
    #[default]
    Subject,
    /// At the prompt's last token ("{subject} is a" → the word after "a"): what the model
    /// says about the subject, where an edit leaks into other facts.
    Last,
    /// Both.
    Both,
}

impl KlAt {
    fn positions(self, lookup: &Lookup) -> Vec<usize> {
        let last = lookup.ids.len() - 1;
        match self {
            KlAt::Subject => vec![lookup.index],
            KlAt::Last => vec![last],
            KlAt::Both if last == lookup.index => vec![last],
            KlAt::Both => vec![lookup.index, last],
        }
    }
}

/// The outcome of the optimisation.
#[derive(Clone, Debug)]
pub struct ValueStar {
    /// v₀: the MLP output at the subject in the plain prompt (the first rewriting prompt).
    pub v0: Tensor,
    pub delta: Tensor,
    /// Forward passes run (the last one is not followed by a step).
    pub iterations: usize,
    pub loss: f64,
    /// Mean probability of the target tokens at the last evaluation.
    pub target_prob: f64,
}

impl ValueStar {
    pub fn v_star(&self) -> Result<Tensor> {
        Ok((&self.v0 + &self.delta)?)
    }
}

/// Everything about the prompts that stays fixed while δ changes.
struct Frozen {
    /// The layer each step starts at, and the site δ is added to there.
    start: usize,
    site: Site,
    chunk: TokenBatch,
    resid: Tensor,
    prefix: Option<KvCache>,
    entries: Vec<(usize, usize)>,
    targets: Vec<u32>,
    entry_rows: Vec<usize>,
    n_rewrite_rows: usize,
    v0: Tensor,
}

fn freeze(
    model: &Model,
    layer: usize,
    rewriting: &[Lookup],
    target: &[u32],
    kl: &[Lookup],
    kl_at: KlAt,
) -> Result<Frozen> {
    let n_t = target.len();
    let mut seqs = Vec::new();
    let mut cuts = Vec::new();
    let mut scored: Vec<(usize, usize, Option<u32>)> = Vec::new(); // (row, position, target)
    for (b, p) in rewriting.iter().enumerate() {
        let mut ids = p.ids.clone();
        ids.extend_from_slice(&target[..n_t - 1]);
        for (j, &t) in target.iter().enumerate() {
            scored.push((b, p.ids.len() - 1 + j, Some(t)));
        }
        seqs.push(ids);
        cuts.push(p.index);
    }
    for (i, p) in kl.iter().enumerate() {
        let positions = kl_at.positions(p);
        for &pos in &positions {
            scored.push((rewriting.len() + i, pos, None));
        }
        // Tokens after the last position read are never used.
        seqs.push(p.ids[..=positions[positions.len() - 1]].to_vec());
        cuts.push(p.index);
    }
    let pad = model.tokenizer()?.pad_id();
    let full = TokenBatch::new(&seqs, Padding::Right, pad)?;
    // Above the last layer nothing is left to start from: then start at l itself.
    let (start, site) = if layer + 1 < model.config.n_layers {
        (layer + 1, Site::ResidPre(layer + 1))
    } else {
        (layer, Site::MlpOut(layer))
    };
    // The chunk's forward starts from the residual entering block `start`; the same pass
    // also gives v0 and the prefix's keys and values, so it is not a separate `resid_pre`.
    let resid_site = Site::ResidPre(start);
    let out = model
        .forward(&full)
        .capture([resid_site, Site::MlpOut(layer)])
        .logits(LogitsAt::None)
        .keep_kv()
        .run()?;
    let (rows, len, d) = out.capture(resid_site)?.dims3()?;
    let v0 = out
        .capture(Site::MlpOut(layer))?
        .narrow(0, 0, 1)?
        .narrow(1, full.index(0, rewriting[0].index), 1)?
        .reshape(d)?;

    // The chunk: each row from its looked-up token on.
    let suffixes: Vec<Vec<u32>> = seqs
        .iter()
        .zip(&cuts)
        .map(|(s, &c)| s[c..].to_vec())
        .collect();
    let starts: Vec<u32> = cuts.iter().map(|&c| c as u32).collect();
    let chunk = TokenBatch::continuation(&suffixes, &starts, Padding::Right, pad)?;
    let mut gather = Vec::with_capacity(rows * chunk.len);
    for (b, &c) in cuts.iter().enumerate() {
        for i in 0..chunk.len {
            let src = if i < suffixes[b].len() { c + i } else { 0 };
            gather.push((b * len + src) as u32);
        }
    }
    let gather = Tensor::new(gather.as_slice(), model.device())?;
    let resid = out
        .capture(resid_site)?
        .reshape((rows * len, d))?
        .index_select(&gather, 0)?
        .reshape((rows, chunk.len, d))?;

    // The prefix: each row's positions before its looked-up token, from the full cache.
    let p = cuts.iter().copied().max().unwrap_or(0);
    let prefix = if p == 0 {
        None
    } else {
        let cache = out.kv.expect("asked for");
        let mut positions = Vec::with_capacity(rows * p);
        let mut valid = Vec::with_capacity(rows * p);
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
            rows,
            len: p,
            positions,
            valid,
            layers,
        })
    };

    let mut entries = Vec::new();
    let mut targets = Vec::new();
    let mut entry_rows = Vec::new();
    // Rewriting entries first, then the KL entries: the loss splits the logits there.
    for &(b, pos, t) in scored.iter().filter(|s| s.2.is_some()) {
        entries.push((b, pos - cuts[b]));
        targets.push(t.expect("filtered"));
        entry_rows.push(b);
    }
    for &(b, pos, _) in scored.iter().filter(|s| s.2.is_none()) {
        entries.push((b, pos - cuts[b]));
    }
    Ok(Frozen {
        start,
        site,
        chunk,
        resid,
        prefix,
        entries,
        targets,
        entry_rows,
        n_rewrite_rows: rewriting.len(),
        v0,
    })
}

/// The rows are optimised in this many groups, on as many threads (see
/// [`crate::runtime::threads`]). Fixed, not the core count, so that results do not depend on
/// the machine: the groups' losses and gradients are added in a fixed order.
pub const DEFAULT_GROUPS: usize = 2;

/// One group of rows and what its share of the loss needs.
struct Group {
    frozen: Frozen,
    /// This group's rewriting rows / all rewriting rows: its NLL's weight in the mean.
    nll_weight: f64,
    /// All KL positions, the KL mean's denominator.
    kl_total: usize,
    /// The KL prompts' log-probabilities before the edit (at the first step).
    kl_init: Option<Tensor>,
}

/// A group's share of the loss at the current δ.
struct GroupLoss {
    /// NLL + KL part.
    loss: Tensor,
    nll: Tensor,
}

fn group_loss(model: &Model, g: &mut Group, delta: &Tensor, kl_factor: f64) -> Result<GroupLoss> {
    let f = &g.frozen;
    let at: Vec<(usize, usize)> = (0..f.chunk.rows).map(|b| (b, 0)).collect();
    let mut forward = model
        .forward(&f.chunk)
        .start_at(f.start, f.resid.clone())
        .intervene(Intervention::add(f.site, at, delta.clone()))
        .logits(LogitsAt::Entries(f.entries.clone()));
    if let Some(prefix) = &f.prefix {
        forward = forward.prefix(prefix);
    }
    let logits = forward.run()?.logits.expect("asked for logits");
    let n_rewrite = f.targets.len();
    let n_kl = f.entries.len() - n_rewrite;
    let mut nll = logits.zeros_like()?.sum_all()?;
    if n_rewrite > 0 {
        nll = (mean_row_nll(
            &logits.narrow(0, 0, n_rewrite)?,
            &f.targets,
            &f.entry_rows,
            f.n_rewrite_rows,
        )? * g.nll_weight)?;
    }
    let mut loss = nll.clone();
    if n_kl > 0 && kl_factor != 0.0 {
        let kl_lp = log_softmax_last(&logits.narrow(0, n_rewrite, n_kl)?)?;
        let init = g.kl_init.get_or_insert_with(|| kl_lp.detach()).clone();
        let kl = ((kl_lp.exp()? * (&kl_lp - init)?)?.sum_all()? / g.kl_total as f64)?;
        loss = (loss + (kl * kl_factor)?)?;
    }
    Ok(GroupLoss { loss, nll })
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// ‖t‖₂, accumulated in f64.
fn l2_norm(t: &Tensor) -> Result<f64> {
    scalar(&t.to_dtype(DType::F64)?.sqr()?.sum_all()?.sqrt()?)
}

/// The loss terms (NLL + KL part, NLL part; no weight decay) at `delta`, computed the way
/// each v* step computes them: from the cached residual and prefix, over the rewriting and
/// KL prompts split into `hp.groups`. For checking that split against a full forward.
pub fn loss_at(
    model: &Model,
    prompts: &ValuePrompts,
    hp: &ValueHparams,
    delta: &Tensor,
) -> Result<(f64, f64)> {
    let mut groups = build_groups(model, prompts, hp)?;
    let zero = delta.zeros_like()?;
    // The first pass records the KL prompts' distributions before the edit.
    on_threads(&mut groups, |g| group_loss(model, g, &zero, hp.kl_factor))?;
    let parts = on_threads(&mut groups, |g| group_loss(model, g, delta, hp.kl_factor))?;
    totals(&parts)
}

/// (NLL + KL, NLL) over all groups.
fn totals(parts: &[GroupLoss]) -> Result<(f64, f64)> {
    let (mut loss, mut nll) = (0.0, 0.0);
    for p in parts {
        loss += scalar(&p.loss)?;
        nll += scalar(&p.nll)?;
    }
    Ok((loss, nll))
}

/// The rewriting prompts in `hp.groups` contiguous shares; the KL prompts join the last.
fn build_groups(model: &Model, prompts: &ValuePrompts, hp: &ValueHparams) -> Result<Vec<Group>> {
    let &ValuePrompts {
        layer,
        rewriting,
        target,
        kl,
    } = prompts;
    if target.is_empty() {
        return Err(Error::invalid("the target has no tokens"));
    }
    if rewriting.is_empty() {
        return Err(Error::invalid("v* needs at least one rewriting prompt"));
    }
    let per_group = rewriting.len().div_ceil(hp.groups.max(1));
    let shares: Vec<&[Lookup]> = rewriting.chunks(per_group).collect();
    let kl_total = kl
        .iter()
        .map(|p| hp.kl_at.positions(p).len())
        .sum::<usize>()
        .max(1);
    let mut groups = Vec::with_capacity(shares.len());
    for (i, share) in shares.iter().enumerate() {
        let kl_share = if i + 1 == shares.len() { kl } else { &[] };
        groups.push(Group {
            frozen: freeze(model, layer, share, target, kl_share, hp.kl_at)?,
            nll_weight: share.len() as f64 / rewriting.len() as f64,
            kl_total,
            kl_init: None,
        });
    }
    Ok(groups)
}

/// Finds v* (see the module documentation).
pub fn value_star(
    model: &Model,
    prompts: &ValuePrompts,
    hp: &ValueHparams,
    log: &mut Vec<String>,
) -> Result<ValueStar> {
    let mut groups = build_groups(model, prompts, hp)?;
    let v0 = groups[0].frozen.v0.clone();
    let dtype = model.dtype();
    let v0_norm = l2_norm(&v0)?;
    if !(v0_norm > 0.0 && v0_norm.is_finite()) {
        return Err(Error::EditRefused(format!(
            "the MLP output at the subject has norm {v0_norm}"
        )));
    }
    let delta = Var::zeros(model.config.d_model, dtype, model.device())?;
    let mut opt = Adam::new(vec![delta.clone()], hp.lr, 0.0)?;
    let max_norm = hp.clamp_norm_factor * v0_norm;
    let (mut loss_value, mut target_prob, mut iterations) = (f64::NAN, 0.0, 0);
    for it in 0..hp.steps {
        iterations = it + 1;
        let started = std::time::Instant::now();
        let d = delta.as_tensor();
        let mut parts = on_threads(&mut groups, |g| group_loss(model, g, d, hp.kl_factor))?;
        // ‖δ‖ with a tiny floor: its gradient at δ = 0 is then 0, as PyTorch's norm gives,
        // instead of NaN.
        let norm = (d.sqr()?.sum_all()? + 1e-20)?.sqrt()?;
        let decay = (norm * (hp.weight_decay / (v0_norm * v0_norm)))?;
        let (loss_terms, nll_value) = totals(&parts)?;
        loss_value = loss_terms + scalar(&decay)?;
        target_prob = (-nll_value).exp();
        if !loss_value.is_finite() {
            return Err(Error::EditRefused(format!(
                "the v* loss became {loss_value}"
            )));
        }
        let done =
            loss_value < hp.early_stop_loss || nll_value < hp.early_stop_nll || it + 1 == hp.steps;
        if !done {
            // The decay term rides with the first group's loss; gradients add over groups.
            parts[0].loss = (&parts[0].loss + &decay)?;
            let mut stores = on_threads(&mut parts, |p| Ok(p.loss.backward()?))?;
            let mut total = stores[0]
                .get(d)
                .cloned()
                .expect("δ is in every group's loss");
            for other in &stores[1..] {
                if let Some(g) = other.get(d) {
                    total = (total + g)?;
                }
            }
            let mut store = stores.swap_remove(0);
            store.insert(d, total);
            opt.step(&store)?;
        }
        {
            let f = &groups[0].frozen;
            log.push(format!(
                "v* step {it}: loss {loss_value:.4} (nll {nll_value:.4}), p(target) ≈ {target_prob:.3}, \
                 ‖δ‖/‖v₀‖ {:.2}, {:.2} s for {} groups of ≤{}x{} tokens",
                l2_norm(d)? / v0_norm,
                started.elapsed().as_secs_f64(),
                groups.len(),
                f.chunk.rows,
                f.chunk.len
            ));
        }
        if done {
            break;
        }
        let n = l2_norm(delta.as_tensor())?;
        if n > max_norm {
            delta.set(&(delta.as_tensor() * (max_norm / n))?)?;
        }
    }
    Ok(ValueStar {
        v0,
        delta: delta.as_tensor().detach(),
        iterations,
        loss: loss_value,
        target_prob,
    })
}
