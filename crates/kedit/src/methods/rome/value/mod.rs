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
//!
//! Many requests at once (MEMIT's z*): every request has its own δ, Adam state, clamp and
//! stopping, but their rows share the forward and backward passes, up to `wave` requests
//! at a time — bigger products use the cores far better than one request's few dozen
//! tokens. A request whose loss is small leaves the pool and waiting ones join; each
//! request's rows are frozen once, when it joins, and the step's groups are put together
//! from the frozen rows of the requests in the pool.

mod frozen;
mod groups;

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};

use crate::error::{Error, Result};
use crate::methods::adam::Adam;
use crate::methods::rome::key::Lookup;
use crate::model::Model;
use crate::runtime::threads::on_threads;
use groups::{build_groups, freeze_requests, group_loss, Group, GroupLoss, RequestRows};

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
    /// Requests optimised together in shared forward passes.
    pub wave: usize,
    /// A second δ on the attention output of the same layer, optimised jointly with the
    /// MLP's (PMET); each has its own clamp and weight decay.
    pub attention: bool,
    /// `[vocab]`, 1 for the tokens that end an answer ([`crate::prompts::answer_boundaries`]):
    /// when given, each rewriting prompt also scores −log p(the answer ends after the
    /// target), so that free generation says the target and stops there rather than going
    /// on with the word ("Arctiinae" + "Artemis…").
    pub answer_end: Option<Tensor>,
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
    /// With [`ValueHparams::attention`]: the attention output's (v₀, δ) likewise.
    pub attention: Option<(Tensor, Tensor)>,
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

/// The rows are optimised in this many groups, on as many threads (see
/// [`crate::runtime::threads`]). Fixed, not the core count, so that results do not depend on
/// the machine: the groups' losses and gradients are added in a fixed order. Two for one
/// request's few rows (ROME: 3.8 s an edit on ZsRE against 6.2 s with four).
pub const DEFAULT_GROUPS: usize = 2;

/// Groups for a pool of many requests (MEMIT's z*): rows are grouped by length, and more
/// groups pad less (86% of the tokens real against 71% with two for 16 ZsRE requests; a
/// step 1.10 s against 1.31 s).
pub const POOL_GROUPS: usize = 4;

/// Requests whose δs are optimised together in shared forward passes (the pool). Larger
/// pools use the cores better (bigger products) but hold more activations for the backward
/// pass: 16 requests of ROME's prompts hold about 1.5 GB on SmolLM2.
pub const DEFAULT_WAVE: usize = 16;

/// Requests join the pool once this share of it is free (or nothing else is waiting), so
/// that their rows are frozen a few at a time rather than one by one.
const JOIN_WHEN_FREE: f64 = 0.25;

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
    loss_at_sites(model, prompts, hp, &site_deltas(hp, delta)?)
}

/// [`loss_at`] with a δ per site: `[attention, MLP]` when `hp.attention`, else `[MLP]`.
pub fn loss_at_sites(
    model: &Model,
    prompts: &ValuePrompts,
    hp: &ValueHparams,
    deltas: &[Tensor],
) -> Result<(f64, f64)> {
    let zeros = deltas
        .iter()
        .map(|d| d.zeros_like())
        .collect::<candle_core::Result<Vec<_>>>()?;
    let (mut groups, kl_init) = one_request(model, prompts, hp, zeros)?;
    let deltas = [deltas.to_vec()];
    let parts = on_threads(&mut groups, |g| {
        group_loss(
            model,
            g,
            &deltas,
            &kl_init,
            hp.kl_factor,
            hp.answer_end.as_ref(),
        )
    })?;
    let (mut loss, mut nll) = (0.0, 0.0);
    for p in &parts {
        for &(l, n) in &p.values {
            loss += l;
            nll += n;
        }
    }
    Ok((loss, nll))
}

/// The gradient of the loss terms of [`loss_at`] with respect to δ, as each v* step
/// computes it (for checking it against finite differences).
pub fn gradient_at(
    model: &Model,
    prompts: &ValuePrompts,
    hp: &ValueHparams,
    delta: &Tensor,
) -> Result<Tensor> {
    let (groups, kl_init) =
        one_request(model, prompts, hp, site_deltas(hp, &delta.zeros_like()?)?)?;
    let answer_end = hp.answer_end.as_ref();
    let var = Var::from_tensor(delta)?;
    let deltas = [site_deltas(hp, var.as_tensor())?];
    let mut total: Option<Tensor> = None;
    for g in &groups {
        let part = group_loss(model, g, &deltas, &kl_init, hp.kl_factor, answer_end)?;
        let grads = part.loss.sum_all()?.backward()?;
        let grad = grads
            .get(var.as_tensor())
            .cloned()
            .ok_or_else(|| Error::invalid("δ has no gradient"))?;
        total = Some(match total {
            Some(t) => (t + grad)?,
            None => grad,
        });
    }
    total.ok_or_else(|| Error::invalid("no group to differentiate"))
}

/// One request's groups and its KL prompts' distributions before the edit (a first pass at
/// the zero δs `zeros`), for evaluating its loss at chosen δs.
fn one_request(
    model: &Model,
    prompts: &ValuePrompts,
    hp: &ValueHparams,
    zeros: Vec<Tensor>,
) -> Result<(Vec<Group>, HashMap<usize, Tensor>)> {
    check_prompts(std::slice::from_ref(prompts))?;
    let one = std::slice::from_ref(prompts);
    let rows: Vec<Option<RequestRows>> = freeze_requests(model, one, &[0], hp)?
        .into_iter()
        .map(Some)
        .collect();
    let mut groups = build_groups(model, &[0], &rows, hp)?;
    let mut kl_init = HashMap::new();
    let zero = [zeros];
    for part in on_threads(&mut groups, |g| {
        group_loss(
            model,
            g,
            &zero,
            &kl_init,
            hp.kl_factor,
            hp.answer_end.as_ref(),
        )
    })? {
        kl_init.extend(part.new_kl_init);
    }
    Ok((groups, kl_init))
}

/// `delta` at the MLP, with a zero δ at the attention output when `hp` has one.
fn site_deltas(hp: &ValueHparams, delta: &Tensor) -> Result<Vec<Tensor>> {
    Ok(if hp.attention {
        vec![delta.zeros_like()?, delta.clone()]
    } else {
        vec![delta.clone()]
    })
}

fn check_prompts(prompts: &[ValuePrompts]) -> Result<()> {
    for (i, p) in prompts.iter().enumerate() {
        if p.target.is_empty() {
            return Err(Error::invalid(format!(
                "request {i}: the target has no tokens"
            )));
        }
        if p.rewriting.is_empty() {
            return Err(Error::invalid(format!(
                "request {i}: v* needs at least one rewriting prompt"
            )));
        }
        if p.layer != prompts[0].layer {
            return Err(Error::invalid(
                "the v* of requests optimised together must be at one layer",
            ));
        }
    }
    Ok(())
}

/// Finds v* for one request (see the module documentation).
pub fn value_star(
    model: &Model,
    prompts: &ValuePrompts,
    hp: &ValueHparams,
    log: &mut Vec<String>,
) -> Result<ValueStar> {
    let mut all = value_stars(model, std::slice::from_ref(prompts), hp, log)?;
    Ok(all.pop().expect("one request, one result"))
}

/// Finds v* for each request, `hp.wave` requests at a time in shared forward passes, each
/// request stopped as soon as its own loss is small. Each request's δ, Adam state, norm
/// clamp and stopping are its own; sharing the passes changes nothing but the speed.
pub fn value_stars(
    model: &Model,
    prompts: &[ValuePrompts],
    hp: &ValueHparams,
    log: &mut Vec<String>,
) -> Result<Vec<ValueStar>> {
    value_stars_from(model, prompts, &vec![None; prompts.len()], hp, log)
}

/// [`value_stars`] with each request's MLP δ starting at `init[r]` (`[d_model]`) instead of
/// zero, where given: GRACE starts a value from a random vector or from one already trained.
pub fn value_stars_from(
    model: &Model,
    prompts: &[ValuePrompts],
    init: &[Option<Tensor>],
    hp: &ValueHparams,
    log: &mut Vec<String>,
) -> Result<Vec<ValueStar>> {
    check_prompts(prompts)?;
    if init.len() != prompts.len() {
        return Err(Error::invalid(format!(
            "{} starting δs for {} requests",
            init.len(),
            prompts.len()
        )));
    }
    optimise_pool(model, prompts, init, hp, log)
}

/// One δ of a request: at the MLP output, or at the attention output (PMET).
struct SiteTrack {
    delta: Var,
    v0: Tensor,
    v0_norm: f64,
    /// clamp_norm_factor · ‖v₀‖.
    max_norm: f64,
}

/// One request's optimisation state.
struct Track {
    /// One per site of the frozen rows, in their order (the MLP's last).
    sites: Vec<SiteTrack>,
    opt: Adam,
    done: bool,
    iterations: usize,
    loss: f64,
    target_prob: f64,
}

impl Track {
    fn mlp(&self) -> &SiteTrack {
        self.sites.last().expect("a request has at least one δ")
    }
}

/// A request's optimisation state when it joins: v₀ from its first rewriting row (the bare
/// prompt), δ from `start` or zero.
fn new_track(
    model: &Model,
    rows: &RequestRows,
    start: Option<&Tensor>,
    r: usize,
    hp: &ValueHparams,
) -> Result<Track> {
    let dtype = model.dtype();
    let outputs = rows.frozen.looked_up(rows.rewriting[0])?;
    let n_sites = outputs.len();
    let mut sites = Vec::with_capacity(n_sites);
    for (s, v0) in outputs.into_iter().enumerate() {
        let v0_norm = l2_norm(&v0)?;
        if !(v0_norm > 0.0 && v0_norm.is_finite()) {
            return Err(Error::EditRefused(format!(
                "request {r}: the output the edit changes has norm {v0_norm} at the subject"
            )));
        }
        let delta = match start {
            Some(start) if s + 1 == n_sites => {
                if start.dims() != [model.config.d_model] {
                    return Err(Error::invalid(format!(
                        "request {r}: a starting δ of shape {:?}; [{}] was expected",
                        start.dims(),
                        model.config.d_model
                    )));
                }
                Var::from_tensor(&start.to_dtype(dtype)?)?
            }
            _ => Var::zeros(model.config.d_model, dtype, model.device())?,
        };
        sites.push(SiteTrack {
            delta,
            v0,
            v0_norm,
            max_norm: hp.clamp_norm_factor * v0_norm,
        });
    }
    let vars = sites.iter().map(|s| s.delta.clone()).collect();
    Ok(Track {
        opt: Adam::new(vars, hp.lr, 0.0)?,
        sites,
        done: false,
        iterations: 0,
        loss: f64::NAN,
        target_prob: 0.0,
    })
}

/// Up to `hp.wave` requests optimise together; as they finish, the next ones join, so every
/// step runs a full pool until the last requests.
fn optimise_pool(
    model: &Model,
    prompts: &[ValuePrompts],
    init: &[Option<Tensor>],
    hp: &ValueHparams,
    log: &mut Vec<String>,
) -> Result<Vec<ValueStar>> {
    let n = prompts.len();
    let pool = hp.wave.max(1);
    let join_at = ((pool as f64 * JOIN_WHEN_FREE).ceil() as usize).max(1);
    let mut rows: Vec<Option<RequestRows>> = (0..n).map(|_| None).collect();
    let mut tracks: Vec<Option<Track>> = (0..n).map(|_| None).collect();
    let mut next = 0;
    let mut active: Vec<usize> = Vec::new();
    let mut groups: Vec<Group> = Vec::new();
    let mut kl_init: HashMap<usize, Tensor> = HashMap::new();
    for it in 0.. {
        let started = std::time::Instant::now();
        let before = active.len();
        active.retain(|&r| {
            let done = tracks[r].as_ref().is_some_and(|t| t.done);
            if done {
                // Its frozen rows and KL reference are not needed any more.
                rows[r] = None;
                kl_init.remove(&r);
            }
            !done
        });
        let mut changed = active.len() != before;
        let room = pool - active.len();
        let waiting = n - next;
        if room > 0 && waiting > 0 && (room >= join_at || waiting <= room || active.is_empty()) {
            let joining: Vec<usize> = (next..next + room.min(waiting)).collect();
            let frozen = freeze_requests(model, prompts, &joining, hp)?;
            for (&r, f) in joining.iter().zip(frozen) {
                tracks[r] = Some(new_track(model, &f, init[r].as_ref(), r, hp)?);
                rows[r] = Some(f);
            }
            active.extend(&joining);
            next += joining.len();
            changed = true;
        }
        if active.is_empty() {
            break;
        }
        if changed {
            groups = build_groups(model, &active, &rows, hp)?;
        }
        let deltas: Vec<Vec<Tensor>> = tracks
            .iter()
            .map(|t| match t {
                Some(t) => t
                    .sites
                    .iter()
                    .map(|s| s.delta.as_tensor().clone())
                    .collect(),
                None => Vec::new(),
            })
            .collect();
        let mut parts = on_threads(&mut groups, |g| {
            group_loss(
                model,
                g,
                &deltas,
                &kl_init,
                hp.kl_factor,
                hp.answer_end.as_ref(),
            )
        })?;
        // Each request's loss: its pieces over the groups, plus its weight decay.
        let mut loss = vec![0.0; n];
        let mut nll = vec![0.0; n];
        for (g, part) in groups.iter().zip(&parts) {
            for (m, &(l, nl)) in g.members.iter().zip(&part.values) {
                loss[m.request] += l;
                nll[m.request] += nl;
            }
        }
        for part in &mut parts {
            kl_init.extend(std::mem::take(&mut part.new_kl_init));
        }
        let mut decay_total: Option<Tensor> = None;
        let mut stepping = vec![false; n];
        for &r in &active {
            let t = tracks[r].as_mut().expect("an active request has a track");
            let mut decay = Tensor::new(0f32, model.device())?.to_dtype(model.dtype())?;
            for site in &t.sites {
                let d = site.delta.as_tensor();
                // ‖δ‖ with a tiny floor: its gradient at δ = 0 is then 0, as PyTorch's norm
                // gives, instead of NaN.
                let norm = (d.sqr()?.sum_all()? + 1e-20)?.sqrt()?;
                decay = (decay + (norm * (hp.weight_decay / (site.v0_norm * site.v0_norm)))?)?;
            }
            t.loss = loss[r] + scalar(&decay)?;
            t.target_prob = (-nll[r]).exp();
            t.iterations += 1;
            if !t.loss.is_finite() {
                return Err(Error::EditRefused(format!(
                    "request {r}: the v* loss became {}",
                    t.loss
                )));
            }
            t.done = t.loss < hp.early_stop_loss
                || nll[r] < hp.early_stop_nll
                || t.iterations >= hp.steps;
            if !t.done {
                stepping[r] = true;
                decay_total = Some(match decay_total {
                    Some(sum) => (sum + decay)?,
                    None => decay,
                });
            }
        }
        if stepping.iter().any(|&s| s) {
            step(&groups, &mut parts, &mut tracks, &stepping, decay_total)?;
        }
        log_step(
            log,
            it,
            &tracks,
            &active,
            n - next,
            &groups,
            started,
            n == 1,
        )?;
    }
    Ok(tracks
        .into_iter()
        .map(|t| {
            let t = t.expect("every request joined");
            let attention = (t.sites.len() > 1)
                .then(|| (t.sites[0].v0.clone(), t.sites[0].delta.as_tensor().detach()));
            let mlp = t.mlp();
            ValueStar {
                v0: mlp.v0.clone(),
                delta: mlp.delta.as_tensor().detach(),
                attention,
                iterations: t.iterations,
                loss: t.loss,
                target_prob: t.target_prob,
            }
        })
        .collect())
}

/// One Adam step for every request in `stepping`, from the gradients of their losses (the
/// groups' pieces added), then each δ clamped to its norm bound.
fn step(
    groups: &[Group],
    parts: &mut [GroupLoss],
    tracks: &mut [Option<Track>],
    stepping: &[bool],
    decay: Option<Tensor>,
) -> Result<()> {
    let mut objectives = Vec::with_capacity(parts.len());
    for (g, part) in groups.iter().zip(parts.iter()) {
        let mask: Vec<f32> = g
            .members
            .iter()
            .map(|m| if stepping[m.request] { 1.0 } else { 0.0 })
            .collect();
        let mask = Tensor::new(mask.as_slice(), part.loss.device())?.to_dtype(part.loss.dtype())?;
        objectives.push((&part.loss * mask)?.sum_all()?);
    }
    if let Some(decay) = decay {
        // The decay terms ride with the first group's objective; gradients add over groups.
        objectives[0] = (&objectives[0] + decay)?;
    }
    let mut stores = on_threads(&mut objectives, |o| Ok(o.backward()?))?;
    let mut totals = Vec::new();
    let stepped = tracks
        .iter()
        .enumerate()
        .filter(|(r, _)| stepping[*r])
        .filter_map(|(_, t)| t.as_ref());
    for t in stepped {
        for site in &t.sites {
            let d = site.delta.as_tensor();
            let mut total: Option<Tensor> = None;
            for s in &stores {
                if let Some(g) = s.get(d) {
                    total = Some(match total {
                        Some(sum) => (sum + g)?,
                        None => g.clone(),
                    });
                }
            }
            if let Some(total) = total {
                totals.push((d.clone(), total));
            }
        }
    }
    let mut store = stores.swap_remove(0);
    for (d, total) in totals {
        store.insert(&d, total);
    }
    for (_, t) in tracks.iter_mut().enumerate().filter(|(r, _)| stepping[*r]) {
        let t = t.as_mut().expect("a stepping request has a track");
        t.opt.step(&store)?;
        for site in &t.sites {
            let norm = l2_norm(site.delta.as_tensor())?;
            if norm > site.max_norm {
                site.delta
                    .set(&(site.delta.as_tensor() * (site.max_norm / norm))?)?;
            }
        }
    }
    Ok(())
}

#[allow(
    clippy::too_many_arguments,
    reason = "one log line from the step's whole state"
)]
fn log_step(
    log: &mut Vec<String>,
    it: usize,
    tracks: &[Option<Track>],
    active: &[usize],
    waiting: usize,
    groups: &[Group],
    started: std::time::Instant,
    single: bool,
) -> Result<()> {
    let seconds = started.elapsed().as_secs_f64();
    let rows = groups.iter().map(Group::rows).max().unwrap_or(0);
    let len = groups.iter().map(|g| g.frozen.chunk.len).max().unwrap_or(0);
    let (real, padded) = groups.iter().fold((0, 0), |(r, p), g| {
        let c = &g.frozen.chunk;
        (r + c.lengths.iter().sum::<usize>(), p + c.rows * c.len)
    });
    let shape = format!(
        "{} groups of ≤{rows}x{len} tokens ({:.0}% real)",
        groups.len(),
        100.0 * real as f64 / padded.max(1) as f64
    );
    let track = |r: usize| tracks[r].as_ref().expect("an active request has a track");
    if single {
        let t = track(0);
        let nll = -t.target_prob.ln();
        log.push(format!(
            "v* step {it}: loss {:.4} (nll {nll:.4}), p(target) ≈ {:.3}, ‖δ‖/‖v₀‖ {:.2}, \
             {seconds:.2} s for {shape}",
            t.loss,
            t.target_prob,
            l2_norm(t.mlp().delta.as_tensor())? / t.mlp().v0_norm,
        ));
    } else {
        let mean = |f: &dyn Fn(&Track) -> f64| {
            active.iter().map(|&r| f(track(r))).sum::<f64>() / active.len() as f64
        };
        let done = tracks.iter().flatten().filter(|t| t.done).count();
        log.push(format!(
            "v* step {it}: {} requests in this step, mean loss {:.4}, mean p(target) {:.3}; \
             {done} of {} done, {waiting} waiting; {seconds:.2} s for {shape}",
            active.len(),
            mean(&|t| t.loss),
            mean(&|t| t.target_prob),
            tracks.len(),
        ));
    }
    Ok(())
}
