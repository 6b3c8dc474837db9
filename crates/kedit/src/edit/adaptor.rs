//! A site adaptor: a codebook kept beside the weights (GRACE's). At the chosen positions
//! of a forward pass, a hidden state at `site` that lies within a key's radius is replaced
//! by that key's value. It is data: keys, values and radii, applied through the runtime's
//! codebook intervention.

use std::collections::BTreeMap;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lm::PromptEnds;
use crate::runtime::{Intervention, Site};

/// Which positions of a sequence the adaptor looks at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdaptorPositions {
    /// The prompt's last token only (GRACE's `replace_last`).
    #[default]
    PromptEnd,
    /// The prompt's last token and every token after it (GRACE's `replace_all` restricted
    /// to where the answer is produced).
    FromPromptEnd,
}

/// The whole codebook at one site. Applying an adaptor edit sets the codebook at its site:
/// a method that adds entries (or widens radii) returns the grown codebook, computed from
/// the one already there.
#[derive(Clone, Debug)]
pub struct AdaptorEdit {
    pub site: Site,
    pub positions: AdaptorPositions,
    /// `[n, width]`.
    pub keys: Tensor,
    /// `[n, width]`.
    pub values: Tensor,
    /// One deferral radius per key.
    pub radii: Vec<f64>,
    pub meta: BTreeMap<String, String>,
}

impl AdaptorEdit {
    pub fn len(&self) -> usize {
        self.radii.len()
    }

    pub fn is_empty(&self) -> bool {
        self.radii.is_empty()
    }

    /// Checks that keys, values and radii agree with each other and with the site's width.
    pub fn check(&self, width: usize) -> Result<()> {
        let n = self.radii.len();
        let shape_ok = |t: &Tensor| t.dims() == [n, width];
        if n == 0 {
            return Err(Error::EditRefused(format!(
                "the codebook at `{}` has no entry",
                self.site
            )));
        }
        if !shape_ok(&self.keys) || !shape_ok(&self.values) {
            return Err(Error::EditRefused(format!(
                "the codebook at `{}` has keys {:?} and values {:?}; {n} entries of width {width} \
                 were expected",
                self.site,
                self.keys.dims(),
                self.values.dims()
            )));
        }
        if self.radii.iter().any(|r| !r.is_finite() || *r < 0.0) {
            return Err(Error::EditRefused(format!(
                "the codebook at `{}` has a negative or non-finite radius",
                self.site
            )));
        }
        for (name, t) in [("keys", &self.keys), ("values", &self.values)] {
            if !crate::edit::weights::all_finite(t)? {
                return Err(Error::EditRefused(format!(
                    "the codebook at `{}` has NaN or Inf {name}",
                    self.site
                )));
            }
        }
        Ok(())
    }

    /// The codebook as an intervention on a forward chunk whose prompts end at `ends`.
    pub fn intervention(&self, ends: &PromptEnds) -> Intervention {
        let mut at = ends.last.clone();
        if self.positions == AdaptorPositions::FromPromptEnd {
            at.extend(&ends.after);
        }
        Intervention::codebook(
            self.site,
            at,
            self.keys.clone(),
            self.values.clone(),
            self.radii.clone(),
        )
    }
}
