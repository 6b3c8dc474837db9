//! Token batches: padded rows with their validity and position ids.
//!
//! Positions are `start + cumsum(valid) - 1` per row (pads take the neighbouring position),
//! so left- and right-padded rows, and continuation chunks after a KV cache, all give each
//! sequence exactly the result it has when run alone.

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Padding {
    /// Pads before the tokens: the last position of every row is real (generation).
    #[default]
    Left,
    /// Pads after the tokens: token `i` of every row sits at index `i`.
    Right,
}

/// A padded batch of token rows (or of positions only, when a forward starts from a
/// residual stream).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenBatch {
    pub rows: usize,
    pub len: usize,
    /// `[rows * len]`, pads filled with the pad id.
    pub ids: Vec<u32>,
    /// `[rows * len]`, false at pads.
    pub valid: Vec<bool>,
    /// `[rows * len]` position ids.
    pub positions: Vec<u32>,
    /// Real tokens per row.
    pub lengths: Vec<usize>,
    pub padding: Padding,
}

impl TokenBatch {
    /// Pads `seqs` to a common length. Empty rows are allowed (all pads).
    pub fn new(seqs: &[Vec<u32>], padding: Padding, pad_id: u32) -> Result<Self> {
        Self::continuation(seqs, &vec![0; seqs.len()], padding, pad_id)
    }

    /// One unpadded row.
    pub fn single(ids: &[u32]) -> Self {
        Self::new(&[ids.to_vec()], Padding::Left, 0).expect("one row never fails")
    }

    /// A chunk that continues sequences whose first `start[b]` positions are already in a
    /// KV cache.
    pub fn continuation(
        seqs: &[Vec<u32>],
        start: &[u32],
        padding: Padding,
        pad_id: u32,
    ) -> Result<Self> {
        if seqs.is_empty() {
            return Err(Error::invalid("a token batch needs at least one row"));
        }
        if start.len() != seqs.len() {
            return Err(Error::invalid("one start position per row is required"));
        }
        let rows = seqs.len();
        let len = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = vec![pad_id; rows * len];
        let mut valid = vec![false; rows * len];
        let mut positions = vec![0u32; rows * len];
        for (b, seq) in seqs.iter().enumerate() {
            let offset = match padding {
                Padding::Left => len - seq.len(),
                Padding::Right => 0,
            };
            for (i, &id) in seq.iter().enumerate() {
                ids[b * len + offset + i] = id;
                valid[b * len + offset + i] = true;
            }
            let mut seen = 0u32;
            for t in 0..len {
                if valid[b * len + t] {
                    seen += 1;
                }
                positions[b * len + t] = start[b] + seen.saturating_sub(1);
            }
        }
        Ok(TokenBatch {
            rows,
            len,
            ids,
            valid,
            positions,
            lengths: seqs.iter().map(Vec::len).collect(),
            padding,
        })
    }

    /// Index within the padded row of the `token`-th real token of `row`.
    pub fn index(&self, row: usize, token: usize) -> usize {
        match self.padding {
            Padding::Left => self.len - self.lengths[row] + token,
            Padding::Right => token,
        }
    }

    /// Index of the last real token of `row`.
    pub fn last(&self, row: usize) -> usize {
        self.index(row, self.lengths[row].saturating_sub(1))
    }

    /// `(row, index)` of the last real token of every row.
    pub fn last_entries(&self) -> Vec<(usize, usize)> {
        (0..self.rows).map(|b| (b, self.last(b))).collect()
    }

    /// Position id one past the last real token of each row (where a continuation starts).
    pub fn next_positions(&self) -> Vec<u32> {
        (0..self.rows)
            .map(|b| {
                if self.lengths[b] == 0 {
                    self.positions[b * self.len]
                } else {
                    self.positions[b * self.len + self.last(b)] + 1
                }
            })
            .collect()
    }

    pub fn ids_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(
            self.ids.clone(),
            (self.rows, self.len),
            device,
        )?)
    }

    pub fn num_tokens(&self) -> usize {
        self.lengths.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn left_and_right_padding_positions() {
        let seqs = vec![vec![5, 6, 7], vec![9]];
        let l = TokenBatch::new(&seqs, Padding::Left, 0).unwrap();
        assert_eq!(l.ids, vec![5, 6, 7, 0, 0, 9]);
        assert_eq!(l.positions, vec![0, 1, 2, 0, 0, 0]);
        assert_eq!(l.last(1), 2);
        assert_eq!(l.next_positions(), vec![3, 1]);
        let r = TokenBatch::new(&seqs, Padding::Right, 0).unwrap();
        assert_eq!(r.ids, vec![5, 6, 7, 9, 0, 0]);
        assert_eq!(r.valid, vec![true, true, true, true, false, false]);
        assert_eq!(r.positions, vec![0, 1, 2, 0, 0, 0]);
        assert_eq!(r.last_entries(), vec![(0, 2), (1, 0)]);
        let c =
            TokenBatch::continuation(&[vec![1, 2], vec![3]], &[4, 7], Padding::Right, 0).unwrap();
        assert_eq!(c.positions, vec![4, 5, 7, 7]);
    }
}
