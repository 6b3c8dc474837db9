//! ZsRE in the MEND / EasyEdit format:
//! `{subject, src, rephrase, alt, answers, loc, loc_ans, portability?{New Question, New Answer}}`
//! (also `pred`, `cond` and `portability."Recalled Relation"`, which no metric reads).
//!
//! Mapping, after EasyEdit's `examples/run_zsre_llama2.py` and
//! `easyeditor/dataset/zsre.py` (`ZsreDataset`):
//! - `prompt` = `src`, `target_new` = `alt`, `rephrase` = `[rephrase]`, `subject` = `subject`.
//! - `ground_truth` = `answers` (all of them; `ZsreDataset` keeps `answers[0]`, the example
//!   passes none).
//! - locality group `"neighborhood"` = `loc` answered by `loc_ans`, with its
//!   `"nq question: "` prefix kept verbatim: EasyEdit feeds `loc` unchanged and
//!   `ZsreDataset` even asserts the prefix is there.
//! - portability group `"one_hop"` = `New Question` answered by `New Answer`.
//! - `case_id` = the record index, as in `ZsreDataset`.
//! - An empty `alt` is an invalid record here; `ZsreDataset` drops such records silently
//!   (`if record["alt"] == "": continue`), `skip_invalid` drops them visibly.

use std::collections::BTreeMap;

use serde_json::Value;

use super::fields::{check_subject, flatten, Obj, Res};
use crate::request::{EditRequest, Probe};

pub(super) fn request(record: &Value, index: usize) -> Res<EditRequest> {
    let r = Obj::record(record)?;
    let subject = r.text("subject")?;
    let prompt = r.text("src")?;
    let target_new = r.text("alt")?;
    let ground_truth = flatten(r.answers("answers")?);
    let rephrase = r.texts("rephrase")?;
    let neighborhood = Probe::new(r.text("loc")?, r.text("loc_ans")?);
    let mut portability = BTreeMap::new();
    if let Some(p) = r.opt_obj("portability")? {
        let probe = Probe::new(p.text("New Question")?, p.text("New Answer")?);
        portability.insert("one_hop".to_string(), vec![probe]);
    }
    check_subject("subject", subject, prompt)?;
    Ok(EditRequest {
        case_id: r.case_id(index)?,
        prompt: prompt.to_string(),
        subject: subject.to_string(),
        target_new: target_new.to_string(),
        ground_truth,
        rephrase,
        locality: BTreeMap::from([("neighborhood".to_string(), vec![neighborhood])]),
        portability,
        generation_prompts: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record() -> Value {
        json!({
            "subject": "IAAF Combined Events Challenge",
            "src": "When was the inception of IAAF Combined Events Challenge?",
            "pred": "2011",
            "rephrase": "When was the IAAF Combined Events Challenge launched?",
            "alt": "2006",
            "answers": ["1998", "1998 AD"],
            "loc": "nq question: what is the name of the last episode of spongebob",
            "loc_ans": "The String",
            "cond": "2011 >> 2006 || When was the inception of IAAF Combined Events Challenge?",
            "portability": {
                "Recalled Relation": "(IAAF Combined Events Challenge, event type, athletics)",
                "New Question": "What type of sports event is the IAAF Combined Events Challenge?",
                "New Answer": "Athletics"
            }
        })
    }

    #[test]
    fn maps_like_easyedit() {
        let r = request(&record(), 3).unwrap();
        assert_eq!(r.case_id, "3");
        assert_eq!(
            r.prompt,
            "When was the inception of IAAF Combined Events Challenge?"
        );
        assert_eq!(r.target_new, "2006");
        assert_eq!(r.ground_truth, vec!["1998", "1998 AD"]);
        assert_eq!(r.rephrase.len(), 1);
        let loc = &r.locality["neighborhood"][0];
        assert!(loc.prompt.starts_with("nq question: "));
        assert_eq!(loc.answer, "The String");
        assert_eq!(r.portability["one_hop"][0].answer, "Athletics");
    }

    #[test]
    fn portability_is_optional_and_answers_may_be_a_string() {
        let mut v = record();
        v.as_object_mut().unwrap().remove("portability");
        v["answers"] = json!("1998");
        let r = request(&v, 0).unwrap();
        assert!(r.portability.is_empty());
        assert_eq!(r.ground_truth, vec!["1998"]);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("alt", json!(""), "alt", "empty"),
            (
                "subject",
                json!(["x"]),
                "subject",
                "expected a string, found a list",
            ),
            ("answers", json!([1]), "answers[0]", "found a number"),
            (
                "portability",
                json!({"New Question": "q"}),
                "portability.New Answer",
                "missing",
            ),
            (
                "portability",
                json!("q"),
                "portability",
                "expected an object",
            ),
            (
                "subject",
                json!("Nobody"),
                "subject",
                "does not occur in the prompt",
            ),
        ];
        for (key, value, field, message) in cases {
            let mut v = record();
            v[key] = value;
            let e = request(&v, 0).unwrap_err();
            assert_eq!(e.field, field, "{key}");
            assert!(e.message.contains(message), "{key}: {}", e.message);
        }
        let mut v = record();
        v.as_object_mut().unwrap().remove("loc_ans");
        assert_eq!(request(&v, 0).unwrap_err().field, "loc_ans");
    }
}
