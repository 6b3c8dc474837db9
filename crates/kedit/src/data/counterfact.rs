//! CounterFact in EasyEdit's format (its copy of ROME's CounterFact):
//! `{case_id, prompt, subject, target_new, ground_truth, rephrase_prompt, locality_prompt,
//! locality_ground_truth}`.
//!
//! Mapping, after EasyEdit's `easyeditor/dataset/counterfact.py` (`CounterFactDataset`,
//! which keeps records as they are and reads exactly these fields) and the locality example
//! in its `README.md` ("Step5", CounterFact neighbours under `'neighborhood'`):
//! - `prompt`, `subject`, `target_new`, `case_id` as they are; `ground_truth` =
//!   `[ground_truth]` (the true object, ROME's `target_true`).
//! - `rephrase` = `[rephrase_prompt]`.
//! - locality group `"neighborhood"` = `locality_prompt` answered by
//!   `locality_ground_truth`.

use std::collections::BTreeMap;

use serde_json::Value;

use super::fields::{check_subject, flatten, Obj, Res};
use crate::request::{EditRequest, Probe};

pub(super) fn request(record: &Value, index: usize) -> Res<EditRequest> {
    let r = Obj::record(record)?;
    let prompt = r.text("prompt")?;
    let subject = r.text("subject")?;
    let target_new = r.text("target_new")?;
    let ground_truth = flatten(r.answers("ground_truth")?);
    let rephrase = r.texts("rephrase_prompt")?;
    let neighbor = Probe::new(r.text("locality_prompt")?, r.text("locality_ground_truth")?);
    check_subject("subject", subject, prompt)?;
    Ok(EditRequest {
        case_id: r.case_id(index)?,
        prompt: prompt.to_string(),
        subject: subject.to_string(),
        target_new: target_new.to_string(),
        ground_truth,
        rephrase,
        locality: BTreeMap::from([("neighborhood".to_string(), vec![neighbor])]),
        portability: BTreeMap::new(),
        generation_prompts: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record() -> Value {
        json!({
            "case_id": 0,
            "prompt": "The mother tongue of Danielle Darrieux is",
            "target_new": "English",
            "subject": "Danielle Darrieux",
            "ground_truth": "French",
            "rephrase_prompt": "Where Danielle Darrieux is from, people speak the language of",
            "locality_prompt": "Michel Rocard is a native speaker of",
            "locality_ground_truth": "French"
        })
    }

    #[test]
    fn maps_like_easyedit() {
        let r = request(&record(), 5).unwrap();
        assert_eq!(r.case_id, "0");
        assert_eq!(r.target_new, "English");
        assert_eq!(r.ground_truth, vec!["French"]);
        assert_eq!(r.rephrase.len(), 1);
        assert_eq!(
            r.locality["neighborhood"],
            vec![Probe::new("Michel Rocard is a native speaker of", "French")]
        );
        assert!(r.portability.is_empty());
    }

    #[test]
    fn ground_truth_may_be_a_list_and_case_id_a_string() {
        let mut v = record();
        v["ground_truth"] = json!([["French", "français"]]);
        v["case_id"] = json!("cf-0");
        let r = request(&v, 5).unwrap();
        assert_eq!(r.ground_truth, vec!["French", "français"]);
        assert_eq!(r.case_id, "cf-0");
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("target_new", json!(""), "target_new", "empty"),
            (
                "target_new",
                json!({"str": "x"}),
                "target_new",
                "expected a string, found an object",
            ),
            ("case_id", json!(true), "case_id", "found a boolean"),
            (
                "rephrase_prompt",
                json!([1]),
                "rephrase_prompt[0]",
                "found a number",
            ),
            (
                "locality_ground_truth",
                json!(null),
                "locality_ground_truth",
                "missing",
            ),
            (
                "ground_truth",
                json!({}),
                "ground_truth",
                "expected a string, a list of strings",
            ),
        ];
        for (key, value, field, message) in cases {
            let mut v = record();
            v[key] = value;
            let e = request(&v, 0).unwrap_err();
            assert_eq!(e.field, field, "{key}");
            assert!(e.message.contains(message), "{key}: {}", e.message);
        }
    }
}
