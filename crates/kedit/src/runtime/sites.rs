//! Named intervention sites: one vocabulary shared by tracing, editing and statistics.
//!
//! | name                     | tensor                                                   |
//! |--------------------------|----------------------------------------------------------|
//! | `embed`                  | token (+ learned position) embeddings, `[B, T, d]`       |
//! | `blocks.{l}.resid_pre`   | residual stream entering block `l`                       |
//! | `blocks.{l}.attn.out`    | attention output (after the output projection)           |
//! | `blocks.{l}.mlp.key`     | input of the MLP output projection (`[B, T, d_ff]`)      |
//! | `blocks.{l}.mlp.out`     | MLP output (before it joins the residual stream)         |
//! | `blocks.{l}.resid_post`  | residual stream leaving block `l`                        |
//! | `final_norm`             | the final normalisation's output                         |
//! | `logits`                 | next-token logits (`[B, T, vocab]`)                      |

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Site {
    Embed,
    ResidPre(usize),
    AttnOut(usize),
    MlpKey(usize),
    MlpOut(usize),
    ResidPost(usize),
    FinalNorm,
    Logits,
}

impl Site {
    /// The block a site belongs to (None for `embed`, `final_norm`, `logits`).
    pub fn layer(self) -> Option<usize> {
        match self {
            Site::ResidPre(l)
            | Site::AttnOut(l)
            | Site::MlpKey(l)
            | Site::MlpOut(l)
            | Site::ResidPost(l) => Some(l),
            Site::Embed | Site::FinalNorm | Site::Logits => None,
        }
    }

    /// Every site of a model with `n_layers` blocks, in the order the forward pass meets them.
    pub fn all(n_layers: usize) -> Vec<Site> {
        let mut v = vec![Site::Embed];
        for l in 0..n_layers {
            v.extend([
                Site::ResidPre(l),
                Site::AttnOut(l),
                Site::MlpKey(l),
                Site::MlpOut(l),
                Site::ResidPost(l),
            ]);
        }
        v.extend([Site::FinalNorm, Site::Logits]);
        v
    }

    /// Checks that the site exists in a model with `n_layers` blocks.
    pub fn check(self, n_layers: usize) -> Result<()> {
        match self.layer() {
            Some(l) if l >= n_layers => Err(Error::invalid(format!(
                "site `{self}` does not exist: the model has layers 0..{}",
                n_layers.saturating_sub(1)
            ))),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Site::Embed => f.write_str("embed"),
            Site::ResidPre(l) => write!(f, "blocks.{l}.resid_pre"),
            Site::AttnOut(l) => write!(f, "blocks.{l}.attn.out"),
            Site::MlpKey(l) => write!(f, "blocks.{l}.mlp.key"),
            Site::MlpOut(l) => write!(f, "blocks.{l}.mlp.out"),
            Site::ResidPost(l) => write!(f, "blocks.{l}.resid_post"),
            Site::FinalNorm => f.write_str("final_norm"),
            Site::Logits => f.write_str("logits"),
        }
    }
}

impl FromStr for Site {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "embed" => return Ok(Site::Embed),
            "final_norm" => return Ok(Site::FinalNorm),
            "logits" => return Ok(Site::Logits),
            _ => {}
        }
        let bad = || {
            Error::invalid(format!(
                "unknown site `{s}`; sites are embed, blocks.{{l}}.resid_pre, \
                 blocks.{{l}}.attn.out, blocks.{{l}}.mlp.key, blocks.{{l}}.mlp.out, \
                 blocks.{{l}}.resid_post, final_norm, logits"
            ))
        };
        let rest = s.strip_prefix("blocks.").ok_or_else(bad)?;
        let (layer, what) = rest.split_once('.').ok_or_else(bad)?;
        let l: usize = layer.parse().map_err(|_| bad())?;
        Ok(match what {
            "resid_pre" => Site::ResidPre(l),
            "attn.out" => Site::AttnOut(l),
            "mlp.key" => Site::MlpKey(l),
            "mlp.out" => Site::MlpOut(l),
            "resid_post" => Site::ResidPost(l),
            _ => return Err(bad()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_reject_unknown() {
        for site in Site::all(3) {
            assert_eq!(site.to_string().parse::<Site>().unwrap(), site);
        }
        assert!("blocks.1.mlp.value".parse::<Site>().is_err());
        assert!("blocks.-1.mlp.key".parse::<Site>().is_err());
        assert!(Site::MlpKey(3).check(3).is_err());
        assert!(Site::MlpKey(2).check(3).is_ok());
    }
}
