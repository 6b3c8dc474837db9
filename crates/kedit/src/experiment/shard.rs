//! Shards of a run: `K/N` takes every N-th unit of work starting at K, so that N processes
//! (a Slurm job array, Ray tasks) can share one evaluation and `merge` can join their run
//! directories into the run one process would have written.
//!
//! The unit is a case in single mode and a method call (a chunk of `batch_size` cases) in
//! batch mode, so that every shard's batches hold exactly the cases the unsharded run's
//! batches hold. A sequential stream is one system's history and cannot be split.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::experiment::modes::Mode;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// 0-based: which of the `count` shards this is.
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// Whether case `case` belongs to this shard when a run in `mode` edits `batch_size`
    /// requests per call.
    pub fn owns(&self, case: usize, mode: Mode, batch_size: usize) -> bool {
        let unit = match mode {
            Mode::Batch => case / batch_size.max(1),
            Mode::Single | Mode::Sequential => case,
        };
        unit % self.count == self.index
    }

    /// Refuses a mode that cannot be split.
    pub fn check(&self, mode: Mode) -> Result<()> {
        if mode == Mode::Sequential {
            return Err(Error::config(format!(
                "--shard {self}: a sequential run is one stream of edits on one system and \
                 cannot be split into shards; shard single or batch runs"
            )));
        }
        Ok(())
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::config(format!(
                "--shard `{s}`: {why}; write K/N with 0 <= K < N (shard K of N, 0-based)"
            ))
        };
        let (k, n) = s.split_once('/').ok_or_else(|| bad("no `/`"))?;
        let index: usize = k.trim().parse().map_err(|_| bad("K is not a number"))?;
        let count: usize = n.trim().parse().map_err(|_| bad("N is not a number"))?;
        if count == 0 {
            return Err(bad("N is 0"));
        }
        if index >= count {
            return Err(bad("K is not below N"));
        }
        Ok(Shard { index, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_partitions() {
        let s: Shard = "1/3".parse().unwrap();
        assert_eq!(s, Shard { index: 1, count: 3 });
        assert_eq!(s.to_string(), "1/3");
        for bad in ["3/3", "1", "a/2", "0/0", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        // Every case belongs to exactly one shard, in both splittable modes.
        for mode in [Mode::Single, Mode::Batch] {
            for case in 0..50 {
                let owners = (0..3)
                    .filter(|&k| Shard { index: k, count: 3 }.owns(case, mode, 4))
                    .count();
                assert_eq!(owners, 1);
            }
        }
        // Batch mode keeps a call's cases together.
        let s = Shard { index: 0, count: 2 };
        assert!((0..4).all(|c| s.owns(c, Mode::Batch, 4)));
        assert!((4..8).all(|c| !s.owns(c, Mode::Batch, 4)));
        assert!(s.check(Mode::Sequential).is_err());
    }
}
