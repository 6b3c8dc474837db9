//! Generation on the real SmolLM2: the KV cache changes nothing, batching changes nothing,
//! seeded sampling is reproducible.

use crate::common;

use common::smollm2;
use kedit::generate::{generate, GenerateOptions, Sampling};
use kedit::TokenBatch;

/// Greedy decoding the slow way: a full forward pass per new token.
fn greedy_without_cache(prompt: &[u32], n: usize) -> Vec<u32> {
    let m = smollm2();
    let mut ids = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..n {
        let logits = m
            .forward(&TokenBatch::single(&ids))
            .run()
            .unwrap()
            .logits
            .unwrap();
        let next = logits
            .squeeze(0)
            .unwrap()
            .argmax(0)
            .unwrap()
            .to_scalar::<u32>()
            .unwrap();
        if Some(next) == m.config.eos_token_id {
            break;
        }
        ids.push(next);
        out.push(next);
    }
    out
}

#[test]
fn cached_batched_greedy_equals_uncached_single_runs() {
    let m = smollm2();
    let tok = m.tokenizer().unwrap();
    let prompts: Vec<Vec<u32>> = ["The capital of France is", "Michael Jordan plays"]
        .iter()
        .map(|p| tok.encode(p).unwrap())
        .collect();
    let opts = GenerateOptions {
        max_new_tokens: 12,
        ..Default::default()
    };
    let batched = generate(m, &prompts, &opts).unwrap();
    for (p, got) in prompts.iter().zip(&batched) {
        assert_eq!(
            got,
            &greedy_without_cache(p, 12),
            "prompt {:?}",
            tok.decode(p, false).unwrap()
        );
        let alone = generate(m, std::slice::from_ref(p), &opts)
            .unwrap()
            .remove(0);
        assert_eq!(got, &alone);
    }
    assert!(tok.decode(&batched[0], true).unwrap().starts_with(" Paris"));
}

#[test]
fn seeded_top_k_is_reproducible_and_seed_dependent() {
    let m = smollm2();
    let prompt = m.tokenizer().unwrap().encode("Once upon a time").unwrap();
    let run = |seed| {
        let opts = GenerateOptions {
            max_new_tokens: 20,
            sampling: Sampling::TopK {
                k: 5,
                temperature: 1.0,
                seed,
            },
            stop_at_eos: false,
        };
        generate(m, std::slice::from_ref(&prompt), &opts)
            .unwrap()
            .remove(0)
    };
    let a = run(1);
    assert_eq!(a.len(), 20);
    assert_eq!(a, run(1));
    assert_ne!(a, run(2));
}

#[test]
fn chat_template_prompt_answers_the_question() {
    let m = smollm2();
    let tok = m.tokenizer().unwrap();
    let text = tok
        .apply_chat_template(
            &[kedit::tokenizer::ChatMessage::user(
                "What is the capital of France?",
            )],
            true,
        )
        .unwrap();
    let ids = tok.encode(&text).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 24,
        ..Default::default()
    };
    let answer = tok
        .decode(&generate(m, &[ids], &opts).unwrap()[0], true)
        .unwrap();
    assert!(answer.contains("Paris"), "{answer}");
}
