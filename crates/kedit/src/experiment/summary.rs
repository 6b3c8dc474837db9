//! Averages, as EasyEdit and its KnowEdit script compute them
//! (`summary_metrics` in easyeditor/editors/utils.py, `eval` in
//! examples/run_knowedit_llama2.py): each case's per-prompt values are averaged first,
//! then the case values are averaged over the cases that have them. Locality and
//! portability: per group, the mean over cases of the group's per-case mean; overall, the
//! mean over cases of the mean over that case's groups.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::evaluate::metrics::Metrics;

/// Mean scores over cases, fractions in [0, 1] (fluency: entropy in bits).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Cases these scores average over.
    pub n: usize,
    pub reliability: Option<f64>,
    pub generalization: Option<f64>,
    pub locality: Option<f64>,
    pub portability: Option<f64>,
    pub fluency: Option<f64>,
    pub locality_groups: BTreeMap<String, f64>,
    pub portability_groups: BTreeMap<String, f64>,
    /// Free-generation exact match.
    pub free_generation: FreeGeneration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counterfact: Option<CounterFactScores>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FreeGeneration {
    pub reliability: Option<f64>,
    pub generalization: Option<f64>,
    pub portability: Option<f64>,
    pub portability_groups: BTreeMap<String, f64>,
}

/// ROME's CounterFact scores; `score` is the harmonic mean of those present.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CounterFactScores {
    pub efficacy: Option<f64>,
    pub paraphrase: Option<f64>,
    pub neighborhood: Option<f64>,
    pub score: Option<f64>,
}

/// The mean of the finite values (`None` when there are none).
pub(crate) fn mean(xs: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (mut sum, mut n) = (0.0, 0usize);
    for x in xs {
        if x.is_finite() {
            sum += x;
            n += 1;
        }
    }
    (n > 0).then(|| sum / n as f64)
}

/// Mean over cases of each case's mean of `values(case)`.
fn case_mean<'a>(
    cases: &[&'a Metrics],
    values: impl Fn(&'a Metrics) -> Option<&'a Vec<f64>>,
) -> Option<f64> {
    mean(
        cases
            .iter()
            .filter_map(|m| values(m).and_then(|v| mean(v.iter().copied()))),
    )
}

/// `(overall, per group)` for a grouped metric.
fn grouped<'a>(
    cases: &[&'a Metrics],
    groups: impl Fn(&'a Metrics) -> &'a BTreeMap<String, Vec<f64>>,
) -> (Option<f64>, BTreeMap<String, f64>) {
    let names: std::collections::BTreeSet<&String> =
        cases.iter().flat_map(|m| groups(m).keys()).collect();
    let per_group = names
        .into_iter()
        .filter_map(|g| case_mean(cases, |m| groups(m).get(g)).map(|v| (g.clone(), v)))
        .collect();
    let overall = mean(
        cases
            .iter()
            .filter_map(|m| mean(groups(m).values().filter_map(|v| mean(v.iter().copied())))),
    );
    (overall, per_group)
}

fn harmonic_mean(xs: &[Option<f64>]) -> Option<f64> {
    let present: Vec<f64> = xs.iter().flatten().copied().collect();
    if present.is_empty() {
        return None;
    }
    if present.iter().any(|&x| x <= 0.0) {
        return Some(0.0);
    }
    Some(present.len() as f64 / present.iter().map(|x| 1.0 / x).sum::<f64>())
}

pub fn summarize(cases: &[&Metrics]) -> Scores {
    let (locality, locality_groups) = grouped(cases, |m| &m.locality_acc);
    let (portability, portability_groups) = grouped(cases, |m| &m.portability_acc);
    let (em_port, em_port_groups) = grouped(cases, |m| &m.portability_em);
    let with_cf: Vec<&crate::evaluate::metrics::CounterFact> = cases
        .iter()
        .filter_map(|m| m.counterfact.as_ref())
        .collect();
    let counterfact = (!with_cf.is_empty()).then(|| {
        let cf_mean = |f: fn(&crate::evaluate::metrics::CounterFact) -> &Vec<f64>| {
            mean(with_cf.iter().filter_map(|c| mean(f(c).iter().copied())))
        };
        let efficacy = cf_mean(|c| &c.efficacy);
        let paraphrase = cf_mean(|c| &c.paraphrase);
        let neighborhood = cf_mean(|c| &c.neighborhood);
        CounterFactScores {
            efficacy,
            paraphrase,
            neighborhood,
            score: harmonic_mean(&[efficacy, paraphrase, neighborhood]),
        }
    });
    Scores {
        n: cases.len(),
        reliability: case_mean(cases, |m| Some(&m.rewrite_acc)),
        generalization: case_mean(cases, |m| Some(&m.rephrase_acc)),
        locality,
        portability,
        fluency: mean(cases.iter().filter_map(|m| m.fluency)),
        locality_groups,
        portability_groups,
        free_generation: FreeGeneration {
            reliability: case_mean(cases, |m| Some(&m.rewrite_em)),
            generalization: case_mean(cases, |m| Some(&m.rephrase_em)),
            portability: em_port,
            portability_groups: em_port_groups,
        },
        counterfact,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_per_case_then_over_cases() {
        let a = Metrics {
            rewrite_acc: vec![1.0],
            rephrase_acc: vec![0.0, 1.0],
            portability_acc: BTreeMap::from([
                ("x".into(), vec![1.0, 0.0]),
                ("y".into(), vec![1.0]),
            ]),
            ..Default::default()
        };
        let b = Metrics {
            rewrite_acc: vec![0.5],
            rephrase_acc: vec![1.0],
            portability_acc: BTreeMap::from([("x".into(), vec![0.0])]),
            ..Default::default()
        };
        let s = summarize(&[&a, &b]);
        assert_eq!(s.reliability, Some(0.75));
        assert_eq!(s.generalization, Some(0.75));
        // Case a: mean(0.5, 1.0) = 0.75; case b: 0.0.
        assert_eq!(s.portability, Some(0.375));
        assert_eq!(s.portability_groups["x"], 0.25);
        assert_eq!(s.portability_groups["y"], 1.0);
        assert_eq!(s.locality, None);
        assert_eq!(
            harmonic_mean(&[Some(1.0), Some(0.5), None]),
            Some(2.0 / 3.0)
        );
    }
}
