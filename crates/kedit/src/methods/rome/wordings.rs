//! Other wordings of a request's question, borrowed from a training file (`v_wordings`, a
//! kedit key). ZsRE's questions are written from a few templates per relation ("What is
//! the name of {}'s team?", "Which team does {} play for?"): a training record's prompt
//! and its paraphrase, the subject taken out, are two wordings of one relation. A request
//! whose prompt reads as one of those wordings gets the others, filled with its subject,
//! as extra prompts for v* (z*), so that the value it writes is not tied to one wording of
//! the question — the edit's paraphrases are where free generation fails
//! (docs/mass-editing.md, "Free generation"). The keys are left as they are.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cache::Cache;
use crate::data::{self, Format, LoadOptions};
use crate::error::{Error, Result};
use crate::request::EditRequest;

/// Where the wordings come from: the records `[start, end)` of a dataset file (any format
/// `kedit eval` reads), and how many a request takes at most.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WordingSource {
    pub dataset: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<[usize; 2]>,
    pub count: usize,
}

/// Each wording (the subject as `{}`) and the wordings seen with it in one record, each
/// with how many records paired them.
#[derive(Debug, Default)]
pub struct WordingBank {
    pairs: BTreeMap<String, BTreeMap<String, usize>>,
    count: usize,
}

impl WordingBank {
    pub fn load(source: &WordingSource) -> Result<WordingBank> {
        let path = Cache::resolve_relative(Path::new(&source.dataset)).ok_or_else(|| {
            Error::config(format!(
                "v_wordings.dataset: `{}` is not a file (relative paths are read from the \
                 working directory or the repository root)",
                source.dataset
            ))
        })?;
        if source.count == 0 {
            return Err(Error::config("v_wordings.count: must be at least 1"));
        }
        let loaded = data::load(
            &path,
            Format::Auto,
            &LoadOptions {
                skip_invalid: true,
                limit: None,
            },
        )?;
        // Records by their place in the file: a malformed one (set aside) takes its place.
        let total = loaded.requests.len() + loaded.skipped.len();
        let skipped: BTreeSet<usize> = loaded.skipped.iter().map(|(i, _)| *i).collect();
        let mut readable = loaded.requests.iter();
        let by_index: Vec<Option<&EditRequest>> = (0..total)
            .map(|i| {
                if skipped.contains(&i) {
                    None
                } else {
                    readable.next()
                }
            })
            .collect();
        let [start, end] = source.records.unwrap_or([0, total]);
        if start >= end || end > total {
            return Err(Error::data(
                &path,
                format!(
                    "v_wordings.records: [{start}, {end}) is not a range of its {total} records"
                ),
            ));
        }
        let requests: Vec<EditRequest> = by_index[start..end]
            .iter()
            .flatten()
            .map(|r| (*r).clone())
            .collect();
        let bank = WordingBank::from_requests(&requests, source.count);
        if bank.pairs.is_empty() {
            return Err(Error::data(
                &path,
                "v_wordings: no record has a paraphrase that names its subject",
            ));
        }
        Ok(bank)
    }

    /// Pairs each request's prompt with its paraphrases, both with the subject as `{}`.
    pub fn from_requests(requests: &[EditRequest], count: usize) -> WordingBank {
        let mut bank = WordingBank {
            pairs: BTreeMap::new(),
            count,
        };
        for r in requests {
            let Some(prompt) = wording(&r.prompt, &r.subject) else {
                continue;
            };
            for other in r.rephrase.iter().filter_map(|p| wording(p, &r.subject)) {
                if other != prompt {
                    bank.pair(&prompt, &other);
                    bank.pair(&other, &prompt);
                }
            }
        }
        bank
    }

    fn pair(&mut self, a: &str, b: &str) {
        *self
            .pairs
            .entry(a.to_string())
            .or_default()
            .entry(b.to_string())
            .or_default() += 1;
    }

    /// Up to `count` other wordings of the question `template` asks (its subject as `{}`),
    /// the most often paired first; none when the bank does not know the wording.
    pub fn wordings(&self, template: &str) -> Vec<String> {
        let Some(others) = self.pairs.get(template.trim()) else {
            return Vec::new();
        };
        let mut ranked: Vec<(&String, &usize)> = others.iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        ranked
            .into_iter()
            .take(self.count)
            .map(|(w, _)| w.clone())
            .collect()
    }
}

/// `text` with its one mention of `subject` as `{}`; none if the subject is not in it once,
/// or the text has braces of its own.
fn wording(text: &str, subject: &str) -> Option<String> {
    let text = text.trim();
    if subject.is_empty() || text.contains(['{', '}']) || text.matches(subject).count() != 1 {
        return None;
    }
    Some(text.replacen(subject, "{}", 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(prompt: &str, subject: &str, rephrase: &str) -> EditRequest {
        EditRequest {
            case_id: "0".into(),
            prompt: prompt.into(),
            subject: subject.into(),
            target_new: "x".into(),
            ground_truth: vec![],
            rephrase: vec![rephrase.into()],
            locality: Default::default(),
            portability: Default::default(),
            generation_prompts: vec![],
        }
    }

    #[test]
    fn a_known_wording_brings_the_others_filled_with_the_subject() {
        let bank = WordingBank::from_requests(
            &[
                record(
                    "What is the name of Ann's team?",
                    "Ann",
                    "Which team does Ann play for?",
                ),
                record(
                    "What is the name of Bo's team?",
                    "Bo",
                    "What's Bo's team called?",
                ),
                record(
                    "What is the name of Cy's team?",
                    "Cy",
                    "Which team does Cy play for?",
                ),
                record("Who wrote Dune?", "Dune", "Dune was written by whom?"),
            ],
            5,
        );
        // The wording paired twice comes first.
        assert_eq!(
            bank.wordings("What is the name of {}'s team?"),
            vec![
                "Which team does {} play for?".to_string(),
                "What's {}'s team called?".to_string(),
            ]
        );
        // Pairs go both ways.
        assert_eq!(
            bank.wordings("{} was written by whom?"),
            vec!["Who wrote {}?".to_string()]
        );
        assert!(bank.wordings("Where is {}?").is_empty());
        let first = WordingBank::from_requests(
            &[
                record("What is Ann's team?", "Ann", "Which team has Ann?"),
                record("What is Bo's team?", "Bo", "Bo plays for which team?"),
                record("What is Cy's team?", "Cy", "Which team has Cy?"),
            ],
            1,
        );
        assert_eq!(
            first.wordings("What is {}'s team?"),
            vec!["Which team has {}?".to_string()]
        );
        // A record whose prompt names its subject twice, or not at all, pairs nothing.
        let none = WordingBank::from_requests(
            &[
                record("Who wrote Dune, Dune?", "Dune", "Dune's author?"),
                record("Who wrote it?", "Dune", "Dune's author?"),
            ],
            3,
        );
        assert!(none.pairs.is_empty());
    }

    fn source(dataset: &str, records: Option<[usize; 2]>, count: usize) -> WordingSource {
        WordingSource {
            dataset: dataset.into(),
            records,
            count,
        }
    }

    const ZSRE_TRAIN: &str = "../shared/data/zsre/zsre_mend_train-1k.json";

    /// The ZsRE train file's records pair wordings the dev records ask in (record 534,
    /// whose target is empty, is set aside, and the records keep their places).
    #[test]
    fn the_zsre_train_file_gives_wordings_and_bad_sources_are_named() {
        let bank = WordingBank::load(&source(ZSRE_TRAIN, Some([0, 1000]), 3)).unwrap();
        // Dev record 3's question ("What country is Shmavon Shmavonyan from?").
        assert_eq!(
            bank.wordings("What country is {} from?"),
            vec!["What is the country {} is from?".to_string()]
        );
        // A slice holds fewer pairs than the whole file.
        let part = WordingBank::load(&source(ZSRE_TRAIN, Some([0, 10]), 3)).unwrap();
        assert!(part.pairs.len() < bank.pairs.len());

        let err = |s: WordingSource| WordingBank::load(&s).unwrap_err().to_string();
        let e = err(source("no/such/file.json", None, 3));
        assert!(
            e.contains("v_wordings.dataset") && e.contains("no/such/file.json"),
            "{e}"
        );
        let e = err(source(ZSRE_TRAIN, None, 0));
        assert!(e.contains("v_wordings.count"), "{e}");
        let e = err(source(ZSRE_TRAIN, Some([990, 1001]), 3));
        assert!(
            e.contains("zsre_mend_train-1k.json") && e.contains("[990, 1001)"),
            "{e}"
        );

        let dir = std::env::temp_dir().join(format!("kedit-wordings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("no-pairs.json");
        std::fs::write(
            &file,
            r#"[{"subject": "Dune", "src": "Who wrote Dune?", "rephrase": "Who wrote it?",
                 "alt": "Frank", "answers": ["Frank Herbert"], "loc": "nq question: x",
                 "loc_ans": "y"}]"#,
        )
        .unwrap();
        let e = err(source(file.to_str().unwrap(), None, 3));
        assert!(
            e.contains("no-pairs.json") && e.contains("no record"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
