//! The three grids of causal tracing, [tokens × layers] of restored p(answer): hidden states
//! one (token, layer) at a time, MLP and attention outputs over a window of layers.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::runtime::Site;
use crate::trace::tracer::{Restoration, Tracer};

/// What is restored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The residual stream leaving a block (`blocks.{l}.resid_post`).
    Hidden,
    /// MLP outputs (`blocks.{l}.mlp.out`) over a window of layers.
    Mlp,
    /// Attention outputs (`blocks.{l}.attn.out`) over a window of layers.
    Attn,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Hidden, Kind::Mlp, Kind::Attn];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Hidden => "hidden",
            Kind::Mlp => "mlp",
            Kind::Attn => "attn",
        }
    }
}

/// The layers restored for the cell at layer `l`: `l` alone for hidden states; for MLP and
/// attention the window ROME centres on `l`, `[l − ⌊w/2⌋, l + ⌈w/2⌉)` clipped to the model.
pub fn restored_layers(kind: Kind, l: usize, window: usize, n_layers: usize) -> Range<usize> {
    match kind {
        Kind::Hidden => l..l + 1,
        Kind::Mlp | Kind::Attn => {
            let lo = l.saturating_sub(window / 2);
            let hi = (l + window.div_ceil(2)).min(n_layers);
            lo..hi.max(lo + 1)
        }
    }
}

/// The restoration of one cell and the layer its pass starts at.
fn cell(kind: Kind, t: usize, l: usize, window: usize, n_layers: usize) -> (usize, Restoration) {
    let layers = restored_layers(kind, l, window, n_layers);
    match kind {
        // The residual leaving l is the residual entering l + 1: restoring it there skips
        // recomputing block l.
        Kind::Hidden if l + 1 < n_layers => (l + 1, vec![(Site::ResidPre(l + 1), t)]),
        Kind::Hidden => (l, vec![(Site::ResidPost(l), t)]),
        Kind::Mlp => (layers.start, layers.map(|j| (Site::MlpOut(j), t)).collect()),
        Kind::Attn => (
            layers.start,
            layers.map(|j| (Site::AttnOut(j), t)).collect(),
        ),
    }
}

/// A cell: kind index, token, layer, and what it restores.
type Cell = (usize, usize, usize, Restoration);

/// A cell's kind index, token, layer and restored p(answer).
type Scored = (usize, usize, usize, f64);

/// One forward pass: cells sharing a start layer and a first token.
struct Pass {
    start: usize,
    first_token: usize,
    cells: Vec<Cell>,
    /// Rows × layers run, to schedule the longest passes first.
    cost: usize,
}

/// The passes that compute every cell, longest first.
fn plan(
    tracer: &Tracer,
    kinds: &[Kind],
    window: usize,
    n_layers: usize,
    tokens_per_pass: usize,
) -> Vec<Pass> {
    let len = tracer.len();
    let first = tracer.subject().0;
    let mut by_start: Vec<Vec<Cell>> = vec![Vec::new(); n_layers];
    for (k, &kind) in kinds.iter().enumerate() {
        for l in 0..n_layers {
            for t in first..len {
                let (start, restoration) = cell(kind, t, l, window, n_layers);
                by_start[start].push((k, t, l, restoration));
            }
        }
    }
    let tokens: Vec<usize> = (first..len).collect();
    let mut passes = Vec::new();
    for (start, cells) in by_start.into_iter().enumerate() {
        for group in tokens.chunks(tokens_per_pass.max(1)) {
            let members: Vec<Cell> = cells
                .iter()
                .filter(|c| group.contains(&c.1))
                .cloned()
                .collect();
            if !members.is_empty() {
                passes.push(Pass {
                    start,
                    first_token: group[0],
                    cost: members.len() * (len - group[0]) * (n_layers - start),
                    cells: members,
                });
            }
        }
    }
    passes.sort_by_key(|p| std::cmp::Reverse(p.cost));
    passes
}

/// The [tokens × layers] grids of p(answer) with the cell's states restored, one per kind.
///
/// Cells whose passes start at the same layer run together — all kinds, and
/// `tokens_per_pass` tokens at a time — as more rows of one forward pass: small batches
/// leave a CPU's matrix kernels mostly packing weights. Tokens before the subject see no
/// noise (attention is causal), so restoring them changes nothing: their cells are the
/// corrupted probability, exactly, without a forward pass. The passes are independent:
/// `workers` threads run them (best with single-threaded tensor ops, `RAYON_NUM_THREADS=1`,
/// whose per-op thread barriers dominate such small passes).
pub fn grids(
    tracer: &Tracer,
    kinds: &[Kind],
    window: usize,
    n_layers: usize,
    tokens_per_pass: usize,
    workers: usize,
) -> Result<Vec<Vec<Vec<f64>>>> {
    let passes = plan(tracer, kinds, window, n_layers, tokens_per_pass);
    let next = AtomicUsize::new(0);
    let run_passes = || -> Result<Vec<Scored>> {
        let mut done = Vec::new();
        while let Some(pass) = passes.get(next.fetch_add(1, Ordering::Relaxed)) {
            let restorations: Vec<Restoration> = pass.cells.iter().map(|c| c.3.clone()).collect();
            let scores = tracer.score_many(pass.start, pass.first_token, &restorations)?;
            done.extend(
                pass.cells
                    .iter()
                    .zip(scores)
                    .map(|(c, p)| (c.0, c.1, c.2, p)),
            );
        }
        Ok(done)
    };
    let results: Vec<Result<Vec<Scored>>> = if workers <= 1 {
        vec![run_passes()]
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers).map(|_| scope.spawn(run_passes)).collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::invalid("a tracing worker panicked")))
                })
                .collect()
        })
    };
    let mut out = vec![vec![vec![tracer.corrupted_prob; n_layers]; tracer.len()]; kinds.len()];
    for done in results {
        for (k, t, l, p) in done? {
            out[k][t][l] = p;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_rome() {
        // ROME: range(max(0, l - w // 2), min(L, l - (-w // 2)))
        assert_eq!(restored_layers(Kind::Mlp, 0, 10, 30), 0..5);
        assert_eq!(restored_layers(Kind::Mlp, 12, 10, 30), 7..17);
        assert_eq!(restored_layers(Kind::Attn, 29, 10, 30), 24..30);
        assert_eq!(restored_layers(Kind::Mlp, 5, 3, 30), 4..7);
        assert_eq!(restored_layers(Kind::Hidden, 7, 10, 30), 7..8);
        assert_eq!(restored_layers(Kind::Mlp, 3, 0, 30), 3..4);
    }
}
