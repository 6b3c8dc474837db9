//! Word tokenisation for the n-gram entropy, after NLTK 3.6.5's `word_tokenize` (the
//! version EasyEdit pins): sentences are split first, then each sentence goes through the
//! `NLTKWordTokenizer` substitutions below, in NLTK's order.
//!
//! NLTK splits sentences with the Punkt model (a trained statistical splitter that is data,
//! not code); here a sentence ends at `.`, `!` or `?` (with closing quotes/brackets)
//! followed by whitespace, unless the word is a single-letter initial or a common
//! abbreviation. The only effect of a different split is whether a mid-text period is a
//! token of its own.

use std::sync::OnceLock;

use fancy_regex::Regex;

/// `(pattern, replacement)` in `fancy_regex` syntax (`$1`, `$0`).
type Rule = (Regex, &'static str);

fn compile(rules: &[(&str, &'static str)]) -> Vec<Rule> {
    rules
        .iter()
        .map(|(p, r)| (Regex::new(p).expect("a valid built-in pattern"), *r))
        .collect()
}

struct Rules {
    starting_quotes: Vec<Rule>,
    punctuation: Vec<Rule>,
    parens_brackets: Rule,
    double_dashes: Rule,
    ending_quotes: Vec<Rule>,
    contractions: Vec<Rule>,
}

fn rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| Rules {
        starting_quotes: compile(&[
            (r"([«“‘„]|[`]+)", " $1 "),
            (r#"^""#, "``"),
            (r"(``)", " $1 "),
            (r#"([ \(\[{<])("|'{2})"#, "$1 `` "),
            (r"(?i)(')(?!re|ve|ll|m|t|s|d|n)(\w)\b", "$1 $2"),
        ]),
        punctuation: compile(&[
            (r#"([^\.])(\.)([\]\)}>"'»”’ ]*)\s*$"#, "$1 $2 $3 "),
            (r"([:,])([^\d])", " $1 $2"),
            (r"([:,])$", " $1 "),
            (r"\.{2,}", " $0 "),
            (r"[;@#$%&]", " $0 "),
            (r#"([^\.])(\.)([\]\)}>"']*)\s*$"#, "$1 $2$3 "),
            (r"[?!]", " $0 "),
            (r"([^'])' ", "$1 ' "),
            (r"[*]", " $0 "),
        ]),
        parens_brackets: compile(&[(r"[\]\[\(\)\{\}<>]", " $0 ")]).remove(0),
        double_dashes: compile(&[(r"--", " -- ")]).remove(0),
        ending_quotes: compile(&[
            (r"([»”’])", " $1 "),
            (r#"""#, " '' "),
            (r"(\S)('')", "$1 $2 "),
            (r"([^' ])('[sS]|'[mM]|'[dD]|') ", "$1 $2 "),
            (r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ", "$1 $2 "),
        ]),
        contractions: compile(&[
            (r"(?i)\b(can)(not)\b", " $1 $2 "),
            (r"(?i)\b(d)('ye)\b", " $1 $2 "),
            (r"(?i)\b(gim)(me)\b", " $1 $2 "),
            (r"(?i)\b(gon)(na)\b", " $1 $2 "),
            (r"(?i)\b(got)(ta)\b", " $1 $2 "),
            (r"(?i)\b(lem)(me)\b", " $1 $2 "),
            (r"(?i)\b(more)('n)\b", " $1 $2 "),
            (r"(?i)\b(wan)(na)\s", " $1 $2 "),
            (r"(?i) ('t)(is)\b", " $1 $2 "),
            (r"(?i) ('t)(was)\b", " $1 $2 "),
        ]),
    })
}

fn apply(text: String, rule: &Rule) -> String {
    rule.0.replace_all(&text, rule.1).into_owned()
}

/// NLTK's `NLTKWordTokenizer().tokenize(sentence)`.
pub fn tokenize_sentence(sentence: &str) -> Vec<String> {
    let r = rules();
    let mut text = sentence.to_string();
    for rule in &r.starting_quotes {
        text = apply(text, rule);
    }
    for rule in &r.punctuation {
        text = apply(text, rule);
    }
    text = apply(text, &r.parens_brackets);
    text = apply(text, &r.double_dashes);
    text = format!(" {text} ");
    for rule in &r.ending_quotes {
        text = apply(text, rule);
    }
    for rule in &r.contractions {
        text = apply(text, rule);
    }
    text.split_whitespace().map(str::to_string).collect()
}

/// Words that end in a period without ending a sentence.
const ABBREVIATIONS: [&str; 16] = [
    "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "e.g", "i.e", "no", "inc",
    "co", "u.s",
];

/// Sentences of `text` (see the module note on Punkt).
pub fn split_sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        if matches!(c, '.' | '!' | '?') {
            // Closing quotes and brackets belong to the sentence they close.
            let mut j = i + 1;
            while j < chars.len() && matches!(chars[j].1, '"' | '\'' | ')' | ']' | '”' | '’') {
                j += 1;
            }
            let ends = j < chars.len() && chars[j].1.is_whitespace();
            if ends && !(c == '.' && is_abbreviation(&text[start..at])) {
                let end = chars[j].0;
                if !text[start..end].trim().is_empty() {
                    out.push(text[start..end].trim());
                }
                start = end;
            }
            i = j;
            continue;
        }
        i += 1;
    }
    if !text[start..].trim().is_empty() {
        out.push(text[start..].trim());
    }
    out
}

fn is_abbreviation(before_period: &str) -> bool {
    let word = before_period
        .rsplit(char::is_whitespace)
        .next()
        .unwrap_or("")
        .trim_start_matches(['(', '"', '\'']);
    let single_initial = word.chars().count() == 1 && word.chars().all(char::is_alphabetic);
    single_initial || ABBREVIATIONS.contains(&word.to_lowercase().as_str())
}

/// NLTK's `word_tokenize(text)`: sentences, then words.
pub fn word_tokenize(text: &str) -> Vec<String> {
    split_sentences(text)
        .into_iter()
        .flat_map(tokenize_sentence)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected outputs produced by NLTK 3.6.5's `NLTKWordTokenizer().tokenize`.
    #[test]
    fn matches_nltk_on_single_sentences() {
        let cases: [(&str, &[&str]); 4] = [
            (
                "Good muffins cost $3.88 (roughly 3,36 euros) in New York.",
                &[
                    "Good", "muffins", "cost", "$", "3.88", "(", "roughly", "3,36", "euros", ")",
                    "in", "New", "York", ".",
                ],
            ),
            (
                "They'll say \"it isn't\" -- can't they?",
                &[
                    "They", "'ll", "say", "``", "it", "is", "n't", "''", "--", "ca", "n't", "they",
                    "?",
                ],
            ),
            (
                "'Tis the season, I'm told: wanna go...",
                &[
                    "'T", "is", "the", "season", ",", "I", "'m", "told", ":", "wan", "na", "go",
                    "...",
                ],
            ),
            (
                "The Eiffel Tower is in Paris",
                &["The", "Eiffel", "Tower", "is", "in", "Paris"],
            ),
        ];
        for (text, want) in cases {
            assert_eq!(tokenize_sentence(text), want, "{text}");
        }
    }

    #[test]
    fn sentences_split_after_terminal_punctuation_but_not_initials() {
        assert_eq!(
            split_sentences("J. Smith left. He said \"no!\" Then Dr. Who came"),
            vec!["J. Smith left.", "He said \"no!\"", "Then Dr. Who came"]
        );
    }
}
