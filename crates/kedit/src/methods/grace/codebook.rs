//! GRACE's codebook maintenance (Hartvigsen et al. 2023, Algorithm 1), on plain vectors.
//!
//! A new edit's key h with label y, its nearest entry i (distance d, radius εᵢ) and the
//! initial radius ε:
//! - **add**: d > ε + εᵢ — the new ball would not touch entry i's: a new entry (h, ε, y);
//! - **expand**: the balls touch and y = yᵢ — entry i's radius grows to d (`coverage`), or
//!   its key moves halfway to h and its radius becomes d (`moving_average`); its value is
//!   kept (it already says y);
//! - **split**: the balls touch and y ≠ yᵢ — a new entry (h, y) and both radii shrink to
//!   d/2, so that the two balls meet but do not overlap.
//!
//! Choices where the paper is silent: a radius is never *grown* by a split (EasyEdit sets
//! both to d/2 even when entry i's was smaller), and a key equal to an existing one with a
//! different label (the same prompt edited again) takes that entry over — the newer fact
//! wins — since halving a zero distance would leave two balls of radius 0 that tie.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};

use crate::edit::{AdaptorEdit, AdaptorPositions};
use crate::error::{Error, Result};
use crate::runtime::Site;

use super::hparams::EpsExpand;

/// The meta key of the labels (the target of each entry), as a JSON array.
pub const LABELS_META: &str = "labels";

/// Keys closer than this (relative to the key's norm) are the same key: forwards of one
/// prompt in different batches differ by rounding only.
const SAME_KEY: f64 = 1e-5;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Codebook {
    pub keys: Vec<Vec<f64>>,
    pub values: Vec<Vec<f64>>,
    pub radii: Vec<f64>,
    /// The target each entry says; `None` for an entry another method wrote (it matches no
    /// label, so a new key near it splits).
    pub labels: Vec<Option<String>>,
}

/// What placing a key did to the codebook.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Placement {
    /// A new entry at this index, radius ε.
    Added(usize),
    /// Entry `entry` (same label) now covers the key; nothing to train.
    Expanded { entry: usize, distance: f64 },
    /// A new entry at `entry`; it and `nearest` have radius min(their radius, d/2).
    Split {
        entry: usize,
        nearest: usize,
        distance: f64,
    },
    /// The key equals entry `entry`'s, whose label and value the new edit takes over.
    Replaced(usize),
}

impl Placement {
    /// The entry whose value must be trained for this edit, if any.
    pub fn trains(self) -> Option<usize> {
        match self {
            Placement::Added(e) | Placement::Split { entry: e, .. } | Placement::Replaced(e) => {
                Some(e)
            }
            Placement::Expanded { .. } => None,
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Placement::Added(_) => "added",
            Placement::Expanded { .. } => "expanded",
            Placement::Split { .. } => "split",
            Placement::Replaced(_) => "replaced",
        }
    }
}

fn distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

impl Codebook {
    pub fn len(&self) -> usize {
        self.radii.len()
    }

    pub fn is_empty(&self) -> bool {
        self.radii.is_empty()
    }

    /// The nearest entry to `key` and its distance (the first of equals).
    pub fn nearest(&self, key: &[f64]) -> Option<(usize, f64)> {
        self.keys
            .iter()
            .map(|k| distance(k, key))
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// Places `key` labelled `label` (Algorithm 1) with initial radius `eps`. A new entry's
    /// value starts as the key itself until [`Codebook::set_value`] gives the trained one.
    pub fn place(&mut self, key: Vec<f64>, label: &str, eps: f64, expand: EpsExpand) -> Placement {
        let Some((i, d)) = self.nearest(&key) else {
            return self.push(key, label, eps);
        };
        let same_label = self.labels[i].as_deref() == Some(label);
        let norm = key.iter().map(|x| x * x).sum::<f64>().sqrt();
        if d <= SAME_KEY * norm.max(1.0) && !same_label {
            self.labels[i] = Some(label.to_string());
            return Placement::Replaced(i);
        }
        if d > eps + self.radii[i] {
            return self.push(key, label, eps);
        }
        if same_label {
            if d > self.radii[i] {
                if expand == EpsExpand::MovingAverage {
                    for (k, q) in self.keys[i].iter_mut().zip(&key) {
                        *k = 0.5 * (*k + q);
                    }
                }
                self.radii[i] = d;
            }
            return Placement::Expanded {
                entry: i,
                distance: d,
            };
        }
        let half = d / 2.0;
        self.radii[i] = self.radii[i].min(half);
        let entry = match self.push(key, label, eps.min(half)) {
            Placement::Added(e) => e,
            _ => unreachable!("push adds"),
        };
        Placement::Split {
            entry,
            nearest: i,
            distance: d,
        }
    }

    fn push(&mut self, key: Vec<f64>, label: &str, radius: f64) -> Placement {
        self.values.push(key.clone());
        self.keys.push(key);
        self.radii.push(radius);
        self.labels.push(Some(label.to_string()));
        Placement::Added(self.len() - 1)
    }

    pub fn set_value(&mut self, entry: usize, value: Vec<f64>) {
        self.values[entry] = value;
    }

    /// The codebook held at a site (by any method): its entries, and GRACE's labels when
    /// the meta carries them. Only a codebook that acts at the prompt's last token can be
    /// grown: GRACE's values are trained for that position alone.
    pub fn from_adaptor(a: &AdaptorEdit) -> Result<Self> {
        if a.positions != AdaptorPositions::PromptEnd {
            return Err(Error::invalid(format!(
                "the codebook at `{}` acts at {:?}; GRACE (replace_last) can only grow one \
                 that acts at the prompt's last token",
                a.site, a.positions
            )));
        }
        let rows = |t: &Tensor| -> Result<Vec<Vec<f64>>> { Ok(t.to_dtype(DType::F64)?.to_vec2()?) };
        let labels: Vec<Option<String>> = a
            .meta
            .get(LABELS_META)
            .and_then(|s| serde_json::from_str(s).ok())
            .filter(|l: &Vec<Option<String>>| l.len() == a.len())
            .unwrap_or_else(|| vec![None; a.len()]);
        Ok(Codebook {
            keys: rows(&a.keys)?,
            values: rows(&a.values)?,
            radii: a.radii.clone(),
            labels,
        })
    }

    /// The codebook as the adaptor edit that sets it at `site`; the labels go in the meta.
    pub fn to_adaptor(
        &self,
        site: Site,
        dtype: DType,
        device: &Device,
        mut meta: BTreeMap<String, String>,
    ) -> Result<AdaptorEdit> {
        let width = self.keys.first().map_or(0, Vec::len);
        let matrix = |rows: &[Vec<f64>]| -> Result<Tensor> {
            let flat: Vec<f64> = rows.iter().flatten().copied().collect();
            Ok(Tensor::from_vec(flat, (rows.len(), width), device)?.to_dtype(dtype)?)
        };
        meta.insert(
            LABELS_META.into(),
            serde_json::to_string(&self.labels).expect("labels serialise"),
        );
        Ok(AdaptorEdit {
            site,
            positions: AdaptorPositions::PromptEnd,
            keys: matrix(&self.keys)?,
            values: matrix(&self.values)?,
            radii: self.radii.clone(),
            meta,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> Codebook {
        let mut b = Codebook::default();
        assert_eq!(
            b.place(vec![0.0, 0.0], "Paris", 1.0, EpsExpand::Coverage),
            Placement::Added(0)
        );
        b
    }

    #[test]
    fn a_key_whose_ball_touches_no_other_is_a_new_entry_of_radius_eps() {
        let mut b = book();
        // d = 2.5 > ε + ε₀ = 2: apart.
        assert_eq!(
            b.place(vec![2.5, 0.0], "Rome", 1.0, EpsExpand::Coverage),
            Placement::Added(1)
        );
        assert_eq!(b.radii, vec![1.0, 1.0]);
        assert_eq!(b.labels[1].as_deref(), Some("Rome"));
        assert_eq!(b.values[1], vec![2.5, 0.0], "a new value starts at the key");
    }

    #[test]
    fn a_conflicting_label_splits_both_radii_to_half_the_distance() {
        let mut b = book();
        // d = 1.5 ≤ 2: the balls overlap, the labels differ.
        let p = b.place(vec![0.0, 1.5], "Rome", 1.0, EpsExpand::Coverage);
        assert_eq!(
            p,
            Placement::Split {
                entry: 1,
                nearest: 0,
                distance: 1.5
            }
        );
        assert_eq!(b.radii, vec![0.75, 0.75]);
        assert_eq!(p.trains(), Some(1));
        // A split never grows a radius: entry 1 (0.75) meets a key 1.6 away → 0.75, 0.8.
        let p = b.place(vec![0.0, 3.1], "Oslo", 1.0, EpsExpand::Coverage);
        assert!(matches!(p, Placement::Split { nearest: 1, .. }), "{p:?}");
        assert!((b.radii[1] - 0.75).abs() < 1e-12 && (b.radii[2] - 0.8).abs() < 1e-12);
        assert_eq!(b.radii[0], 0.75);
    }

    #[test]
    fn the_same_label_expands_the_nearest_radius_to_cover_the_key() {
        let mut b = book();
        let p = b.place(vec![1.5, 0.0], "Paris", 1.0, EpsExpand::Coverage);
        assert_eq!(
            p,
            Placement::Expanded {
                entry: 0,
                distance: 1.5
            }
        );
        assert_eq!(p.trains(), None);
        assert_eq!(b.len(), 1);
        assert_eq!(b.radii, vec![1.5]);
        assert_eq!(b.keys[0], vec![0.0, 0.0]);
        // Inside the ball already: nothing changes.
        b.place(vec![0.5, 0.0], "Paris", 1.0, EpsExpand::Coverage);
        assert_eq!(b.radii, vec![1.5]);
        // Moving average: the key moves halfway, the radius is the distance to the old key.
        let mut m = book();
        m.place(vec![0.0, 1.2], "Paris", 1.0, EpsExpand::MovingAverage);
        assert_eq!(m.keys[0], vec![0.0, 0.6]);
        assert!((m.radii[0] - 1.2).abs() < 1e-12);
    }

    #[test]
    fn the_same_key_with_another_label_takes_the_entry_over() {
        let mut b = book();
        let p = b.place(vec![0.0, 0.0], "Rome", 1.0, EpsExpand::Coverage);
        assert_eq!(p, Placement::Replaced(0));
        assert_eq!(b.len(), 1);
        assert_eq!(b.labels[0].as_deref(), Some("Rome"));
        assert_eq!(b.radii, vec![1.0]);
    }

    #[test]
    fn entries_without_labels_never_match_and_labels_survive_the_adaptor_round_trip() {
        let mut b = book();
        b.labels[0] = None;
        let p = b.place(vec![1.0, 0.0], "Paris", 1.0, EpsExpand::Coverage);
        assert!(matches!(p, Placement::Split { .. }), "{p:?}");
        b.set_value(1, vec![7.0, 8.0]);
        let a = b
            .to_adaptor(Site::MlpOut(3), DType::F32, &Device::Cpu, BTreeMap::new())
            .unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(Codebook::from_adaptor(&a).unwrap(), b);
    }
}
