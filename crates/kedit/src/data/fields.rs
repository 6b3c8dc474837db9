//! Typed access to the fields of one JSON record, where every failure names the field by
//! its path inside the record (`portability.Reasoning[0].ground_truth`).

use serde_json::{Map, Value};

/// What is wrong with one field of a record. `load` adds the file and the record index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Bad {
    pub field: String,
    pub message: String,
}

pub(super) type Res<T> = Result<T, Bad>;

pub(super) fn bad(field: impl Into<String>, message: impl Into<String>) -> Bad {
    Bad {
        field: field.into(),
        message: message.into(),
    }
}

/// The field name used when the record as a whole is wrong (not an object, not JSON).
pub(super) const WHOLE_RECORD: &str = "(record)";

/// What a JSON value is, for messages.
pub(super) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn expected(field: &str, what: &str, found: &Value) -> Bad {
    bad(field, format!("expected {what}, found {}", kind(found)))
}

/// A string that must say something: blank prompts and targets are errors.
fn non_blank<'a>(field: &str, value: &'a Value) -> Res<&'a str> {
    match value {
        Value::String(s) if s.trim().is_empty() => Err(bad(field, "empty")),
        Value::String(s) => Ok(s),
        other => Err(expected(field, "a string", other)),
    }
}

/// A JSON object and its path inside the record (empty for the record itself).
#[derive(Clone, Debug)]
pub(super) struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Obj<'a> {
    /// The record itself, which must be an object.
    pub fn record(value: &'a Value) -> Res<Obj<'a>> {
        Obj::at(value, String::new())
    }

    /// `value` found at `path`, which must be an object.
    pub fn at(value: &'a Value, path: String) -> Res<Obj<'a>> {
        match value {
            Value::Object(map) => Ok(Obj { map, path }),
            other => {
                let field = if path.is_empty() {
                    WHOLE_RECORD.to_string()
                } else {
                    path
                };
                Err(expected(&field, "an object", other))
            }
        }
    }

    /// The path of `key` inside the record.
    pub fn path_of(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The value of `key`; a `null` counts as absent.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The fields in file order.
    pub fn entries(&self) -> impl Iterator<Item = (&'a String, &'a Value)> {
        self.map.iter()
    }

    fn required(&self, key: &str) -> Res<&'a Value> {
        self.get(key)
            .ok_or_else(|| bad(self.path_of(key), "missing"))
    }

    /// A required, non-blank string.
    pub fn text(&self, key: &str) -> Res<&'a str> {
        non_blank(&self.path_of(key), self.required(key)?)
    }

    /// A required object.
    pub fn obj(&self, key: &str) -> Res<Obj<'a>> {
        Obj::at(self.required(key)?, self.path_of(key))
    }

    /// An optional object.
    pub fn opt_obj(&self, key: &str) -> Res<Option<Obj<'a>>> {
        self.get(key)
            .map(|v| Obj::at(v, self.path_of(key)))
            .transpose()
    }

    /// A required list of non-blank strings; a single string counts as a list of one.
    pub fn texts(&self, key: &str) -> Res<Vec<String>> {
        let field = self.path_of(key);
        match self.required(key)? {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| non_blank(&format!("{field}[{i}]"), v).map(str::to_string))
                .collect(),
            v => non_blank(&field, v).map(|s| vec![s.to_string()]),
        }
    }

    /// Like [`Obj::texts`], empty when the field is absent.
    pub fn opt_texts(&self, key: &str) -> Res<Vec<String>> {
        if self.has(key) {
            self.texts(key)
        } else {
            Ok(Vec::new())
        }
    }

    /// A required answer field: a string, a list of strings, or a list of alias lists
    /// (mixed lists allowed). Returns one alias list per answer; blank strings are kept
    /// here and dealt with by the caller.
    pub fn answers(&self, key: &str) -> Res<Vec<Vec<String>>> {
        let field = self.path_of(key);
        let shape = "a string, a list of strings or a list of alias lists";
        match self.required(key)? {
            Value::String(s) => Ok(vec![vec![s.clone()]]),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => Ok(vec![s.clone()]),
                    Value::Array(aliases) => aliases
                        .iter()
                        .enumerate()
                        .map(|(j, a)| match a {
                            Value::String(s) => Ok(s.clone()),
                            other => {
                                Err(expected(&format!("{field}[{i}][{j}]"), "a string", other))
                            }
                        })
                        .collect(),
                    other => Err(expected(
                        &format!("{field}[{i}]"),
                        "a string or a list of strings",
                        other,
                    )),
                })
                .collect(),
            other => Err(expected(&field, shape, other)),
        }
    }

    /// Like [`Obj::answers`], empty when the field is absent.
    pub fn opt_answers(&self, key: &str) -> Res<Vec<Vec<String>>> {
        if self.has(key) {
            self.answers(key)
        } else {
            Ok(Vec::new())
        }
    }

    /// The record's `case_id` (a number or a string) when it has one, else its index.
    pub fn case_id(&self, index: usize) -> Res<String> {
        match self.get("case_id") {
            None => Ok(index.to_string()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
            Some(v) => Err(expected(
                &self.path_of("case_id"),
                "a number or a non-empty string",
                v,
            )),
        }
    }
}

/// All answers and aliases in reading order, blank strings and repeats dropped: the
/// `ground_truth` of an [`EditRequest`](crate::request::EditRequest), main answer first.
pub(super) fn flatten(answers: Vec<Vec<String>>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in answers.into_iter().flatten() {
        if !s.trim().is_empty() && !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// EasyEdit's `_prepare_requests` (`easyeditor/editors/utils.py`) asserts that the subject
/// occurs in the prompt; the locate-then-edit methods need its tokens there.
pub(super) fn check_subject(field: &str, subject: &str, prompt: &str) -> Res<()> {
    if prompt.contains(subject) {
        Ok(())
    } else {
        Err(bad(
            field,
            format!("{subject:?} does not occur in the prompt {prompt:?}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_accept_the_three_shapes_and_name_the_bad_element() {
        let v = json!({
            "s": "a",
            "l": ["a", "b"],
            "ll": [["a", "a2"], ["b"]],
            "mixed": ["a", ["b", "b2"]],
            "bad": [["a", 3]],
            "num": 5,
        });
        let o = Obj::record(&v).unwrap();
        assert_eq!(o.answers("s").unwrap(), vec![vec!["a".to_string()]]);
        assert_eq!(o.answers("l").unwrap(), vec![vec!["a"], vec!["b"]]);
        assert_eq!(o.answers("ll").unwrap(), vec![vec!["a", "a2"], vec!["b"]]);
        assert_eq!(flatten(o.answers("mixed").unwrap()), vec!["a", "b", "b2"]);
        let e = o.answers("bad").unwrap_err();
        assert_eq!(e.field, "bad[0][1]");
        assert!(e.message.contains("found a number"), "{e:?}");
        assert_eq!(o.answers("num").unwrap_err().field, "num");
        assert_eq!(o.answers("absent").unwrap_err().message, "missing");
        assert!(o.opt_answers("absent").unwrap().is_empty());
    }

    #[test]
    fn texts_and_paths() {
        let v = json!({"a": {"b": ["x", " "]}, "n": null, "c": 7});
        let o = Obj::record(&v).unwrap();
        let a = o.obj("a").unwrap();
        let e = a.texts("b").unwrap_err();
        assert_eq!((e.field.as_str(), e.message.as_str()), ("a.b[1]", "empty"));
        assert_eq!(o.text("n").unwrap_err().message, "missing");
        assert_eq!(o.case_id(4).unwrap(), "4");
        assert_eq!(o.obj("c").unwrap_err().field, "c");
        assert_eq!(Obj::record(&json!([1])).unwrap_err().field, WHOLE_RECORD);
    }

    #[test]
    fn flatten_keeps_order_and_drops_blanks_and_repeats() {
        let a = vec![vec!["x".into(), "".into()], vec!["y".into(), "x".into()]];
        assert_eq!(flatten(a), vec!["x", "y"]);
    }
}
