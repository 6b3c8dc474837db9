//! CounterFact in ROME's own format (kmeng01/rome, `dsets/counterfact.py`):
//! `{case_id, requested_rewrite{prompt, subject, target_new{str}, target_true{str}},
//! paraphrase_prompts, neighborhood_prompts, attribute_prompts, generation_prompts}`.
//!
//! EasyEdit has no loader for this format; the mapping follows ROME's
//! `experiments/py/eval_utils_counterfact.py` (`compute_rewrite_quality_counterfact`):
//! - `prompt` = `requested_rewrite.prompt.format(subject)`: the template must hold `{}`
//!   exactly once, which is replaced by the subject.
//! - `target_new` = `target_new.str`; `ground_truth` = `[target_true.str]`.
//! - `rephrase` = `paraphrase_prompts`.
//! - locality group `"neighborhood"`: each neighbourhood prompt answered by
//!   `target_true.str`. These are other subjects that share the true object; ROME scores
//!   them by "is `target_true` still more likely than `target_new`".
//! - locality group `"attribute"`: each attribute prompt answered by `target_new.str`.
//!   These are other subjects for which `target_new` is *already* true (the edit's new
//!   object is their real attribute); ROME computes their probabilities but its summary
//!   leaves them out. As a locality group they measure whether the edit disturbs facts
//!   that already point at the new object.
//! - `generation_prompts` kept (fluency and consistency).
//! - A plain string is accepted where ROME has `{str, id}`.

use std::collections::BTreeMap;

use serde_json::Value;

use super::fields::{bad, Obj, Res};
use crate::request::{EditRequest, Probe};

pub(super) fn request(record: &Value, index: usize) -> Res<EditRequest> {
    let r = Obj::record(record)?;
    let rw = r.obj("requested_rewrite")?;
    let template = rw.text("prompt")?;
    let subject = rw.text("subject")?;
    let target_new = object_str(&rw, "target_new")?;
    let target_true = object_str(&rw, "target_true")?;
    if template.matches("{}").count() != 1 {
        return Err(bad(
            rw.path_of("prompt"),
            format!(
                "expected a template with `{{}}` exactly once for the subject, found {template:?}"
            ),
        ));
    }
    let probes = |key: &str, answer: &str| -> Res<Vec<Probe>> {
        Ok(r.texts(key)?
            .into_iter()
            .map(|p| Probe::new(p, answer))
            .collect())
    };
    let mut locality = BTreeMap::new();
    for (group, key, answer) in [
        ("neighborhood", "neighborhood_prompts", target_true),
        ("attribute", "attribute_prompts", target_new),
    ] {
        let group_probes = probes(key, answer)?;
        if !group_probes.is_empty() {
            locality.insert(group.to_string(), group_probes);
        }
    }
    Ok(EditRequest {
        case_id: r.case_id(index)?,
        prompt: template.replacen("{}", subject, 1),
        subject: subject.to_string(),
        target_new: target_new.to_string(),
        ground_truth: vec![target_true.to_string()],
        rephrase: r.texts("paraphrase_prompts")?,
        locality,
        portability: BTreeMap::new(),
        generation_prompts: r.texts("generation_prompts")?,
    })
}

/// ROME's `{"str": …, "id": …}` target, or a plain string.
fn object_str<'a>(rw: &Obj<'a>, key: &str) -> Res<&'a str> {
    match rw.get(key) {
        Some(Value::String(_)) => rw.text(key),
        _ => rw.obj(key)?.text("str"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record() -> Value {
        json!({
            "case_id": 34,
            "pararel_idx": 23021,
            "requested_rewrite": {
                "prompt": "{} was employed in",
                "relation_id": "P937",
                "target_new": {"str": "Philadelphia", "id": "Q1345"},
                "target_true": {"str": "Paris", "id": "Q90"},
                "subject": "Laurent Cars"
            },
            "paraphrase_prompts": ["Hybrid vehicles. Laurent Cars found employment in"],
            "neighborhood_prompts": ["Victor Hugo was employed in", "Claude Monet took up work in"],
            "attribute_prompts": ["Thomas Cole worked in the city of"],
            "generation_prompts": ["Laurent Cars's work office is surrounded by"]
        })
    }

    #[test]
    fn maps_like_rome() {
        let r = request(&record(), 0).unwrap();
        assert_eq!(r.case_id, "34");
        assert_eq!(r.prompt, "Laurent Cars was employed in");
        assert_eq!(r.subject, "Laurent Cars");
        assert_eq!(r.target_new, "Philadelphia");
        assert_eq!(r.ground_truth, vec!["Paris"]);
        assert_eq!(r.rephrase.len(), 1);
        let n = &r.locality["neighborhood"];
        assert_eq!(n.len(), 2);
        assert!(n.iter().all(|p| p.answer == "Paris"));
        assert_eq!(
            r.locality["attribute"],
            vec![Probe::new(
                "Thomas Cole worked in the city of",
                "Philadelphia"
            )]
        );
        assert_eq!(r.generation_prompts.len(), 1);
    }

    #[test]
    fn plain_string_targets_and_empty_lists() {
        let mut v = record();
        v["requested_rewrite"]["target_new"] = json!("Rome");
        v["attribute_prompts"] = json!([]);
        let r = request(&v, 0).unwrap();
        assert_eq!(r.target_new, "Rome");
        assert!(!r.locality.contains_key("attribute"));
    }

    #[test]
    fn errors_name_the_field() {
        let mut cases: Vec<(Value, &str, &str)> = Vec::new();
        let mut v = record();
        v["requested_rewrite"]["prompt"] = json!("Laurent Cars was employed in");
        cases.push((v, "requested_rewrite.prompt", "exactly once"));
        let mut v = record();
        v["requested_rewrite"]["prompt"] = json!("{} and {} were employed in");
        cases.push((v, "requested_rewrite.prompt", "exactly once"));
        let mut v = record();
        v["requested_rewrite"]["subject"] = json!(["Laurent Cars"]);
        cases.push((
            v,
            "requested_rewrite.subject",
            "expected a string, found a list",
        ));
        let mut v = record();
        v["requested_rewrite"]["target_true"] = json!({"id": "Q90"});
        cases.push((v, "requested_rewrite.target_true.str", "missing"));
        let mut v = record();
        v["requested_rewrite"]["target_new"] = json!(3);
        cases.push((v, "requested_rewrite.target_new", "expected an object"));
        let mut v = record();
        v["neighborhood_prompts"] = json!(["ok", {"prompt": "x"}]);
        cases.push((v, "neighborhood_prompts[1]", "found an object"));
        let mut v = record();
        v.as_object_mut().unwrap().remove("generation_prompts");
        cases.push((v, "generation_prompts", "missing"));
        let mut v = record();
        v["requested_rewrite"] = json!("x");
        cases.push((v, "requested_rewrite", "expected an object"));
        for (v, field, message) in cases {
            let e = request(&v, 0).unwrap_err();
            assert_eq!(e.field, field);
            assert!(e.message.contains(message), "{field}: {}", e.message);
        }
    }
}
