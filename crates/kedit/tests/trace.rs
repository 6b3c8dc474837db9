//! Causal tracing on the real model: ROME's Eiffel Tower prompt, invariants of restoration,
//! the grids, files and pictures, and a small locate run over known facts.

use crate::common;

use std::sync::OnceLock;

use kedit::cache::Cache;
use kedit::progress::Silent;
use kedit::trace::locate::{locate, LocateOptions, TokenClass};
use kedit::trace::pictures::{write_locate_pictures, write_trace_pictures};
use kedit::trace::tokens::{subject_range, token_texts};
use kedit::trace::{
    cached_subject_embedding_std, load_known_facts, trace_prompt, Kind, TraceOptions, Tracer,
};
use kedit::Site;

const PROMPT: &str = "The Eiffel Tower is located in the city of";
const SUBJECT: &str = "The Eiffel Tower";

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kedit-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// σ of subject-token embeddings over known_1000, computed once per test binary.
fn sigma() -> f64 {
    static SIGMA: OnceLock<f64> = OnceLock::new();
    *SIGMA.get_or_init(|| {
        let cache = Cache::new(temp_dir("sigma"));
        let facts = common::data("known_1000/known_1000.json");
        let s = cached_subject_embedding_std(common::smollm2(), &facts, &cache).unwrap();
        assert!(s.n_subjects == 1209 && s.n_values > 1209 * 576);
        // The second call reads the cache and agrees.
        let again = cached_subject_embedding_std(common::smollm2(), &facts, &cache).unwrap();
        assert_eq!(s, again);
        s.sigma
    })
}

fn eiffel_tracer(samples: usize) -> Tracer<'static> {
    let model = common::smollm2();
    let tok = model.tokenizer().unwrap();
    let ids = tok.encode(PROMPT).unwrap();
    let range = subject_range(&token_texts(tok, &ids).unwrap(), SUBJECT).unwrap();
    let paris = tok.encode(" Paris").unwrap()[0];
    Tracer::new(model, &ids, range, Some(paris), samples, 3.0 * sigma(), 1).unwrap()
}

#[test]
fn restoring_states_behaves_as_causal_tracing_must() {
    let t = eiffel_tracer(4);
    let n_layers = common::smollm2().config.n_layers;
    let last = t.len() - 1;
    assert!(t.clean_prob > 0.4, "clean p(Paris) = {}", t.clean_prob);
    assert_eq!(
        t.clean_top.0,
        t.answer(),
        "Paris is the model's top prediction"
    );
    assert!(
        t.corrupted_prob < t.clean_prob / 4.0,
        "corrupted p(Paris) = {}",
        t.corrupted_prob
    );

    // The last layer's hidden state at the last token decides the logits: the clean one
    // gives the clean probability whatever the noise.
    let top = t.score(&[(Site::ResidPost(n_layers - 1), last)]).unwrap();
    assert!(
        (top - t.clean_prob).abs() < 1e-4,
        "{top} vs {}",
        t.clean_prob
    );
    // Every token's hidden state at every layer restored: the clean run. (Restoring only
    // the subject's is not: at layer 0 the later tokens attend to the noisy subject.)
    let every: Vec<_> = (0..n_layers)
        .flat_map(|l| (0..t.len()).map(move |i| (Site::ResidPost(l), i)))
        .collect();
    let p = t.score(&every).unwrap();
    assert!((p - t.clean_prob).abs() < 1e-4, "{p} vs {}", t.clean_prob);
    // The subject's states entering layer 0 (its embeddings) restored: the noise is undone.
    let embeddings: Vec<_> = (t.subject().0..t.subject().1)
        .map(|i| (Site::ResidPre(0), i))
        .collect();
    let p = t.score(&embeddings).unwrap();
    assert!((p - t.clean_prob).abs() < 1e-4, "{p} vs {}", t.clean_prob);
    // Restoring nothing is the corrupted run; a token's state in the last layer other than
    // the last token's cannot reach the logits.
    assert_eq!(t.score(&[]).unwrap(), t.corrupted_prob);
    let p = t.score(&[(Site::ResidPost(n_layers - 1), 0)]).unwrap();
    assert!((p - t.corrupted_prob).abs() < 1e-5);
    // Batched restorations give what each gives alone.
    let cells = vec![
        vec![(Site::MlpOut(3), 2), (Site::MlpOut(4), 2)],
        vec![(Site::AttnOut(5), 4)],
    ];
    let together = t.score_many(3, 2, &cells).unwrap();
    for (cell, p) in cells.iter().zip(&together) {
        assert!((t.score(cell).unwrap() - p).abs() < 1e-5);
    }
    // Bad restorations are errors, not panics.
    assert!(t.score(&[(Site::Embed, 0)]).is_err());
    assert!(t.score(&[(Site::MlpOut(99), 0)]).is_err());
    assert!(t.score(&[(Site::MlpOut(1), 99)]).is_err());
    assert!(t.score_many(5, 0, &[vec![(Site::MlpOut(1), 0)]]).is_err());
}

#[test]
fn a_full_trace_has_consistent_grids_json_and_pictures() {
    let model = common::smollm2();
    // One noise sample keeps the test quick; the grids' cost is linear in samples.
    let options = TraceOptions {
        samples: 1,
        ..TraceOptions::with_sigma(sigma())
    };
    let r = trace_prompt(model, PROMPT, SUBJECT, Some(" Paris"), &options).unwrap();
    let n = r.tokens.len();
    assert_eq!(r.tokens.concat(), PROMPT);
    assert_eq!(r.subject_range.0, 0);
    assert_eq!(r.tokens[r.subject_range.1 - 1], " Tower");
    assert_eq!(r.answer, " Paris");
    for kind in Kind::ALL {
        let g = r.grid(kind);
        assert_eq!(g.len(), n);
        assert!(g.iter().all(|row| row.len() == model.config.n_layers));
        assert!(g.iter().flatten().all(|p| (0.0..=1.0).contains(p)));
    }
    // The grid's last-layer cell at the last token is the clean probability (see above).
    let top = r.hidden[n - 1][model.config.n_layers - 1];
    assert!((top - r.clean_prob).abs() < 1e-4);
    assert!(r.labels()[0].ends_with('*') && !r.labels()[n - 1].ends_with('*'));

    let dir = temp_dir("trace-out");
    let json = serde_json::to_string(&r).unwrap();
    let back: kedit::trace::TraceResult = serde_json::from_str(&json).unwrap();
    let (a, b): (Vec<f64>, Vec<f64>) = (back.mlp.concat(), r.mlp.concat());
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-12));
    let written = write_trace_pictures(&r, &dir).unwrap();
    assert_eq!(written.len(), 4);
    for w in &written {
        assert!(w.with_text, "DejaVu Sans is installed on the test machines");
        let png = std::fs::read(&w.png).unwrap();
        assert!(
            png.len() > 2000 && png.starts_with(b"\x89PNG"),
            "{}",
            w.png.display()
        );
        let svg = std::fs::read_to_string(&w.svg).unwrap();
        assert!(
            svg.contains("<svg") && svg.contains("Paris"),
            "{}",
            w.svg.display()
        );
    }
}

#[test]
fn bad_trace_input_is_an_error() {
    let model = common::smollm2();
    let options = TraceOptions::with_sigma(0.1);
    let e = trace_prompt(model, PROMPT, "the Louvre", None, &options).unwrap_err();
    assert!(e.to_string().contains("does not occur"), "{e}");
    assert!(trace_prompt(model, "", SUBJECT, None, &options).is_err());
    let bad_sigma = TraceOptions::with_sigma(f64::NAN);
    assert!(trace_prompt(model, PROMPT, SUBJECT, None, &bad_sigma).is_err());
    let no_samples = TraceOptions {
        samples: 0,
        ..options
    };
    assert!(trace_prompt(model, PROMPT, SUBJECT, None, &no_samples).is_err());
    let bad_file = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kedit-bad-facts-{}.json", std::process::id()));
    std::fs::write(&bad_file, r#"[{"subject": "X", "prompt": "X is"}]"#).unwrap();
    let e = load_known_facts(&bad_file).unwrap_err().to_string();
    assert!(e.contains("record 0") && e.contains("attribute"), "{e}");
}

#[test]
fn locate_averages_known_facts_by_token_class() {
    let model = common::smollm2();
    let facts = load_known_facts(&common::data("known_1000/known_1000.json")).unwrap();
    assert_eq!(facts.len(), 1209);
    let options = LocateOptions {
        limit: 2,
        only_known: true,
        trace: TraceOptions {
            samples: 1,
            ..TraceOptions::with_sigma(sigma())
        },
    };
    let cache = Cache::new(temp_dir("locate-cache"));
    let r = locate(model, &facts, &options, Some(&cache), &mut Silent).unwrap();
    assert_eq!(r.traced, 2);
    assert!(r.known >= 2 && r.scanned >= r.known);
    assert!(r.recommended_layer < model.config.n_layers);
    let mlp = r.kind(Kind::Mlp).unwrap();
    let last_subject = mlp.class(TokenClass::LastSubject).unwrap();
    assert_eq!(last_subject.facts, 2);
    assert_eq!(last_subject.aie[r.recommended_layer], r.recommended_aie);
    assert!(r.recommended_aie.is_finite());
    // A second run reads the traces from the cache and agrees.
    let again = locate(model, &facts, &options, Some(&cache), &mut Silent).unwrap();
    assert_eq!(again.recommended_layer, r.recommended_layer);
    assert!((again.recommended_aie - r.recommended_aie).abs() < 1e-12);
    let dir = temp_dir("locate-out");
    let written = write_locate_pictures(&r, &dir).unwrap();
    for w in written {
        assert!(std::fs::metadata(&w.png).unwrap().len() > 2000);
        assert!(std::fs::read_to_string(&w.svg)
            .unwrap()
            .contains("last subject token"));
    }
}
