//! KnowEdit (zjunlp/KnowEdit): ZsRE, WikiData_recent, WikiData_counterfact and WikiBio.
//!
//! Records are `{subject, prompt, target_new, ground_truth?, rephrase_prompt?,
//! locality?{group: [{prompt, ground_truth}]}, portability?{group: [...]}}`; WikiBio records
//! are `{text, labels, concept, locality}`.
//!
//! Mapping, after EasyEdit's `easyeditor/dataset/knowedit.py` (`KnowEditDataset`) and
//! `examples/run_knowedit_llama2.py`:
//! - WikiBio: `subject` = `concept`, `prompt` = `text`, `target_new` = `labels` (the
//!   dataset's `record["subject"] if "subject" in record else record["concept"]`, and so on
//!   for the other two), no portability; its `Relation_Specificity` locality as for the
//!   others.
//! - `ground_truth` (a string, a list, or a list of alias lists) is kept, flattened, main
//!   answer first. The example script does not pass it to the editor.
//! - `rephrase` = `rephrase_prompt` when present (KnowEdit's ZsRE). The example script does
//!   not pass it, so EasyEdit's KnowEdit tables have no generalization column; ours can.
//! - Locality and portability probes: EasyEdit scores one answer per prompt, reached by
//!   `while isinstance(an, list): an = an[0]`: the first alias of the first answer, also when
//!   `ground_truth` lists several answers (each an alias list). That string is
//!   [`Probe::answer`]; every other alias and every other answer become
//!   [`Probe::aliases`] (accepted spellings for metrics that look at them; EasyEdit's never
//!   do). One probe per prompt, never one per answer, so per-group means weigh prompts as
//!   EasyEdit's do.
//! - A probe whose answer is blank is dropped, as the script does (`if an.strip() == "":
//!   continue`); so is one whose `ground_truth` holds no string at all (`[[]]`, which occurs
//!   in `test_cf`), where EasyEdit's loop would raise `IndexError`. A group left with no
//!   probes is omitted.
//! - Groups keep their names from the file and every group is kept. The script reads only
//!   `Relation_Specificity`, `Forgetfulness` (locality) and `Reasoning`, `Subject_Aliasing`,
//!   `Logical_Generalization` (portability), and reports `Reasoning` as `reasoning`.
//! - A group may be a single `{prompt, ground_truth}` object instead of a list.
//! - `case_id` = the record index (`case_id` when the record has one).

use std::collections::BTreeMap;

use serde_json::Value;

use super::fields::{bad, check_subject, flatten, kind, Obj, Res};
use crate::request::{EditRequest, Probe};

pub(super) fn request(record: &Value, index: usize) -> Res<EditRequest> {
    let r = Obj::record(record)?;
    let subject = either(&r, "subject", "concept")?;
    let prompt = either(&r, "prompt", "text")?;
    let target_new = either(&r, "target_new", "labels")?;
    let subject_field = if r.has("subject") {
        "subject"
    } else {
        "concept"
    };
    check_subject(subject_field, subject, prompt)?;
    Ok(EditRequest {
        case_id: r.case_id(index)?,
        prompt: prompt.to_string(),
        subject: subject.to_string(),
        target_new: target_new.to_string(),
        ground_truth: flatten(r.opt_answers("ground_truth")?),
        rephrase: r.opt_texts("rephrase_prompt")?,
        locality: groups(&r, "locality")?,
        portability: groups(&r, "portability")?,
        generation_prompts: Vec::new(),
    })
}

/// `key`, or WikiBio's name for it when only that is present.
fn either<'a>(r: &Obj<'a>, key: &str, wikibio: &str) -> Res<&'a str> {
    if r.has(key) || !r.has(wikibio) {
        r.text(key)
    } else {
        r.text(wikibio)
    }
}

/// The named probe groups under `key` (`locality` or `portability`); absent means none.
fn groups(r: &Obj, key: &str) -> Res<BTreeMap<String, Vec<Probe>>> {
    let mut out = BTreeMap::new();
    let Some(section) = r.opt_obj(key)? else {
        return Ok(out);
    };
    for (name, value) in section.entries() {
        let path = section.path_of(name);
        let items: Vec<(String, &Value)> = match value {
            Value::Null => continue,
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("{path}[{i}]"), v))
                .collect(),
            Value::Object(_) => vec![(path, value)],
            other => {
                return Err(bad(
                    path,
                    format!(
                        "expected a list of {{prompt, ground_truth}} objects or one such object, found {}",
                        kind(other)
                    ),
                ))
            }
        };
        let mut probes = Vec::with_capacity(items.len());
        for (path, item) in items {
            let item = Obj::at(item, path)?;
            let prompt = item.text("prompt")?;
            if let Some(p) = probe(prompt, item.answers("ground_truth")?) {
                probes.push(p);
            }
        }
        if !probes.is_empty() {
            out.insert(name.clone(), probes);
        }
    }
    Ok(out)
}

/// The probe EasyEdit would score: the first string in reading order is the answer; the
/// other strings are aliases. `None` when that answer is blank or there is none.
fn probe(prompt: &str, answers: Vec<Vec<String>>) -> Option<Probe> {
    let mut strings = answers.into_iter().flatten();
    let answer = strings.next()?;
    if answer.trim().is_empty() {
        return None;
    }
    let mut aliases: Vec<String> = Vec::new();
    for s in strings {
        if !s.trim().is_empty() && s != answer && !aliases.contains(&s) {
            aliases.push(s);
        }
    }
    Some(Probe {
        prompt: prompt.to_string(),
        answer,
        aliases,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn zsre() -> Value {
        json!({
            "subject": "Epaspidoceras",
            "target_new": "Noctuidae",
            "prompt": "Which family does Epaspidoceras belong to?",
            "ground_truth": ["Aspidoceratidae"],
            "rephrase_prompt": "What family are Epaspidoceras?",
            "locality": {"Relation_Specificity": [
                {"prompt": "The taxon rank of Epaspidoceras is", "ground_truth": ["genus"]},
                {"prompt": "Epaspidoceras taxon rank", "ground_truth": ["genus"]}
            ]},
            "portability": {"Reasoning": [
                {"prompt": "What is the common name for that family?", "ground_truth": "Owlet moths"}
            ]}
        })
    }

    #[test]
    fn zsre_record() {
        let r = request(&zsre(), 7).unwrap();
        assert_eq!(r.case_id, "7");
        assert_eq!(r.subject, "Epaspidoceras");
        assert_eq!(r.target_new, "Noctuidae");
        assert_eq!(r.ground_truth, vec!["Aspidoceratidae"]);
        assert_eq!(r.rephrase, vec!["What family are Epaspidoceras?"]);
        let rs = &r.locality["Relation_Specificity"];
        assert_eq!(rs.len(), 2);
        assert_eq!(
            rs[0],
            Probe::new("The taxon rank of Epaspidoceras is", "genus")
        );
        assert_eq!(r.portability["Reasoning"][0].answer, "Owlet moths");
    }

    #[test]
    fn alias_lists_score_the_first_alias_of_the_first_answer() {
        let mut v = zsre();
        v["ground_truth"] = json!([["United States", "USA"], ["Canada"]]);
        v["portability"] = json!({"Logical_Generalization": [{
            "prompt": "The official language of Lac Otelnuk is",
            "ground_truth": [["English", "en"], ["French", "fr", "en"]]
        }]});
        let r = request(&v, 0).unwrap();
        assert_eq!(r.ground_truth, vec!["United States", "USA", "Canada"]);
        let p = &r.portability["Logical_Generalization"][0];
        assert_eq!(p.answer, "English");
        assert_eq!(p.aliases, vec!["en", "French", "fr"]);
    }

    #[test]
    fn empty_answers_drop_the_probe_and_empty_groups_vanish() {
        let mut v = zsre();
        v["locality"] = json!({
            "Relation_Specificity": [
                {"prompt": "2022 ATP Finals is followed by", "ground_truth": [[]]},
                {"prompt": "p", "ground_truth": [[], ["x"]]},
                {"prompt": "q", "ground_truth": " "}
            ],
            "Forgetfulness": [{"prompt": "r", "ground_truth": [[]]}]
        });
        v["portability"] = json!({"Logical_Generalization": [], "Reasoning": null});
        let r = request(&v, 0).unwrap();
        assert_eq!(r.locality.len(), 1);
        assert_eq!(
            r.locality["Relation_Specificity"],
            vec![Probe::new("p", "x")]
        );
        assert!(r.portability.is_empty());
    }

    #[test]
    fn a_group_may_be_one_object_and_sections_may_be_absent() {
        let mut v = zsre();
        v["locality"] = json!({"Relation_Specificity": {"prompt": "p", "ground_truth": "a"}});
        v.as_object_mut().unwrap().remove("portability");
        v.as_object_mut().unwrap().remove("ground_truth");
        let r = request(&v, 0).unwrap();
        assert_eq!(
            r.locality["Relation_Specificity"],
            vec![Probe::new("p", "a")]
        );
        assert!(r.portability.is_empty() && r.ground_truth.is_empty());
    }

    #[test]
    fn wikibio_maps_text_labels_concept() {
        let v = json!({
            "text": "This is a Wikipedia passage about rick mahler. Rick Mahler was a pitcher.",
            "labels": "Mahler was drafted by the Braves.",
            "concept": "rick mahler",
            "locality": {"Relation_Specificity": [
                {"prompt": "The cause of death of rick mahler is", "ground_truth": ["myocardial infarction"]}
            ]}
        });
        let r = request(&v, 0).unwrap();
        assert_eq!(r.subject, "rick mahler");
        assert!(r.prompt.starts_with("This is a Wikipedia passage"));
        assert_eq!(r.target_new, "Mahler was drafted by the Braves.");
        assert_eq!(
            r.locality["Relation_Specificity"][0].answer,
            "myocardial infarction"
        );
        let mut bad = v.clone();
        bad["concept"] = json!("someone else");
        assert_eq!(request(&bad, 0).unwrap_err().field, "concept");
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                json!({"Reasoning": [{"prompt": "p", "ground_truth": 3}]}),
                "portability.Reasoning[0].ground_truth",
                "found a number",
            ),
            (
                json!({"Reasoning": [{"prompt": "p", "ground_truth": [[1]]}]}),
                "portability.Reasoning[0].ground_truth[0][0]",
                "expected a string",
            ),
            (
                json!({"Reasoning": [{"ground_truth": "a"}]}),
                "portability.Reasoning[0].prompt",
                "missing",
            ),
            (
                json!({"Reasoning": [{"prompt": "", "ground_truth": "a"}]}),
                "portability.Reasoning[0].prompt",
                "empty",
            ),
            (
                json!({"Reasoning": {"prompt": "p"}}),
                "portability.Reasoning.ground_truth",
                "missing",
            ),
            (
                json!({"Reasoning": "p"}),
                "portability.Reasoning",
                "expected a list of {prompt, ground_truth}",
            ),
            (
                json!({"Reasoning": [7]}),
                "portability.Reasoning[0]",
                "expected an object",
            ),
            (json!([]), "portability", "expected an object, found a list"),
        ];
        for (portability, field, message) in cases {
            let mut v = zsre();
            v["portability"] = portability;
            let e = request(&v, 12).unwrap_err();
            assert_eq!(e.field, field);
            assert!(e.message.contains(message), "{field}: {}", e.message);
        }
        let mut v = zsre();
        v.as_object_mut().unwrap().remove("prompt");
        assert_eq!(request(&v, 0).unwrap_err().field, "prompt");
        let mut v = zsre();
        v["subject"] = json!(5);
        assert_eq!(
            request(&v, 0).unwrap_err().message,
            "expected a string, found a number"
        );
    }
}
