//! The real SmolLM2 against Hugging Face transformers references (`../shared/fixtures`).

use crate::common;

use candle_core::{DType, Tensor, Var};
use common::*;
use kedit::runtime::{ForwardOutput, Intervention, LogitsAt, Padding, Site, TokenBatch};
use kedit::tokenizer::ChatMessage;
use kedit::ParamId;

#[test]
fn tokenizer_matches_all_47_reference_cases_and_the_chat_template() {
    let tok = smollm2().tokenizer().unwrap();
    let cases = json(fixture("smollm2/tokenizer_cases.json"));
    let list = cases["cases"].as_array().unwrap();
    assert_eq!(list.len(), 47);
    let mut failures = Vec::new();
    for case in list {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(text).unwrap();
        if got != want {
            failures.push(format!("{text:?}: got {got:?}, want {want:?}"));
            continue;
        }
        let decoded = tok.decode(&got, false).unwrap();
        if decoded != case["decoded"].as_str().unwrap() {
            failures.push(format!("{text:?}: decoded {decoded:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );

    let chat = &cases["chat_template_case"];
    assert_eq!(
        tok.chat_template().unwrap(),
        chat["template"].as_str().unwrap()
    );
    let messages: Vec<ChatMessage> = serde_json::from_value(chat["messages"].clone()).unwrap();
    let rendered = tok.apply_chat_template(&messages, true).unwrap();
    assert_eq!(rendered, chat["rendered"].as_str().unwrap());
    let ids: Vec<u32> = chat["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(tok.encode(&rendered).unwrap(), ids);
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
}

#[test]
fn dequantised_gguf_rows_are_exact() {
    // The fixture rows are in raw GGUF order; our q/k are un-permuted to HF's layout, so
    // compare those against the permutation applied back.
    let refs = load_tensors(fixture("smollm2/logits.safetensors"));
    let m = smollm2();
    let embed = m
        .params
        .get(ParamId::TokenEmbed)
        .unwrap()
        .narrow(0, 0, 4)
        .unwrap();
    assert_eq!(
        max_abs_diff(&embed, &refs["dequant.token_embd.rows0_4"]),
        0.0
    );
    let down = m
        .params
        .get(ParamId::mlp_out(0))
        .unwrap()
        .narrow(0, 0, 4)
        .unwrap();
    assert_eq!(
        max_abs_diff(&down, &refs["dequant.blk.0.ffn_down.rows0_4"]),
        0.0
    );
    // HF row r of head h: (h, j) with j<32 came from GGUF row 2j, j≥32 from 2(j-32)+1.
    let q = m
        .params
        .get(ParamId::Block(0, kedit::model::BlockParam::QWeight))
        .unwrap();
    for (gguf_row, hf_row) in [(0usize, 0usize), (1, 32), (2, 1), (3, 33)] {
        let got = q.narrow(0, hf_row, 1).unwrap();
        let want = refs["dequant.blk.0.attn_q.rows0_4"]
            .narrow(0, gguf_row, 1)
            .unwrap();
        assert_eq!(max_abs_diff(&got, &want), 0.0, "q row {gguf_row}");
    }
}

#[test]
fn last_position_logits_of_eight_prompts_match_transformers() {
    let refs = load_tensors(fixture("smollm2/logits.safetensors"));
    let m = smollm2();
    let mut worst: f64 = 0.0;
    for i in 0..8 {
        let ids = ids_of(&refs[&format!("logits.p{i}.input_ids")]);
        let batch = TokenBatch::single(&ids);
        let out = m.forward(&batch).run().unwrap();
        let got = out.logits().unwrap().squeeze(0).unwrap();
        let want = refs["logits.last"]
            .narrow(0, i, 1)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let d = max_abs_diff(&got, &want);
        worst = worst.max(d);
        assert!(d <= 1e-3, "prompt {i}: max |Δ| {d}");
    }
    println!("last-position logits, 8 prompts: max |Δ| = {worst:.2e}");
    for i in [0usize, 3] {
        let ids = ids_of(&refs[&format!("logits.p{i}.input_ids")]);
        let batch = TokenBatch::single(&ids);
        let out = m.forward(&batch).logits(LogitsAt::All).run().unwrap();
        let d = max_abs_diff(
            &out.logits().unwrap().squeeze(0).unwrap(),
            &refs[&format!("logits.p{i}.all_positions")],
        );
        assert!(d <= 1e-3, "prompt {i} all positions: max |Δ| {d}");
    }
}

#[test]
fn left_padded_batch_matches_transformers_and_single_runs() {
    let refs = load_tensors(fixture("smollm2/logits.safetensors"));
    let ids = refs["batch.input_ids"].to_vec2::<i64>().unwrap();
    let mask = refs["batch.attention_mask"].to_vec2::<i64>().unwrap();
    let seqs: Vec<Vec<u32>> = ids
        .iter()
        .zip(&mask)
        .map(|(row, m)| {
            row.iter()
                .zip(m)
                .filter(|(_, &v)| v == 1)
                .map(|(&t, _)| t as u32)
                .collect()
        })
        .collect();
    let m = smollm2();
    let batch = TokenBatch::new(&seqs, Padding::Left, 2).unwrap();
    assert_eq!(
        batch.ids,
        ids.concat().iter().map(|&x| x as u32).collect::<Vec<_>>()
    );
    let out = m.forward(&batch).logits(LogitsAt::All).run().unwrap();
    let got = out.logits().unwrap();
    let want = &refs["batch.logits"];
    let mut worst: f64 = 0.0;
    for (b, row) in mask.iter().enumerate() {
        for (t, &v) in row.iter().enumerate() {
            if v == 1 {
                let g = got.narrow(0, b, 1).unwrap().narrow(1, t, 1).unwrap();
                let w = want.narrow(0, b, 1).unwrap().narrow(1, t, 1).unwrap();
                worst = worst.max(max_abs_diff(&g, &w));
            }
        }
    }
    assert!(worst <= 1e-3, "padded batch: max |Δ| {worst}");
    // Right padding gives every row what it gets alone.
    let right = TokenBatch::new(&seqs, Padding::Right, 2).unwrap();
    let out_r = m.forward(&right).run().unwrap();
    for (b, seq) in seqs.iter().enumerate() {
        let alone = m.forward(&TokenBatch::single(seq)).run().unwrap();
        let d_left = max_abs_diff(
            &out.logits()
                .unwrap()
                .narrow(0, b, 1)
                .unwrap()
                .narrow(1, 9, 1)
                .unwrap()
                .flatten_all()
                .unwrap(),
            &alone.logits().unwrap().flatten_all().unwrap(),
        );
        let d_right = max_abs_diff(
            &out_r.logits().unwrap().narrow(0, b, 1).unwrap(),
            alone.logits().unwrap(),
        );
        assert!(
            d_left <= 1e-4 && d_right <= 1e-4,
            "row {b}: left {d_left}, right {d_right}"
        );
    }
}

#[test]
fn hidden_states_and_mlp_keys_match_within_row_relative_1e4() {
    let refs = load_tensors(fixture("smollm2/logits.safetensors"));
    let m = smollm2();
    let ids = ids_of(&refs["hidden.input_ids"]);
    let batch = TokenBatch::single(&ids);
    let n = m.config.n_layers;
    let mut sites = vec![Site::Embed, Site::FinalNorm];
    sites.extend((0..n).map(Site::ResidPost));
    sites.extend([
        Site::MlpKey(3),
        Site::MlpKey(5),
        Site::MlpOut(3),
        Site::MlpOut(5),
    ]);
    let out: ForwardOutput = m.forward(&batch).capture(sites).run().unwrap();
    let resid = &refs["hidden.resid"];
    let mut worst: f64 = 0.0;
    for l in 0..=n {
        let got = if l == 0 {
            out.capture(Site::Embed).unwrap()
        } else {
            out.capture(Site::ResidPost(l - 1)).unwrap()
        };
        let want = resid.narrow(0, l, 1).unwrap().squeeze(0).unwrap();
        let d = max_row_relative(&got.squeeze(0).unwrap(), &want);
        worst = worst.max(d);
        assert!(d <= 1e-4, "resid[{l}]: {d}");
    }
    let d = max_row_relative(
        &out.capture(Site::FinalNorm).unwrap().squeeze(0).unwrap(),
        &refs["hidden.final_norm"],
    );
    assert!(d <= 1e-4, "final norm {d}");
    for l in [3, 5] {
        let k = max_row_relative(
            &out.capture(Site::MlpKey(l)).unwrap().squeeze(0).unwrap(),
            &refs[&format!("hidden.mlp_key.layer{l}")],
        );
        let o = max_row_relative(
            &out.capture(Site::MlpOut(l)).unwrap().squeeze(0).unwrap(),
            &refs[&format!("hidden.mlp_out.layer{l}")],
        );
        assert!(k <= 1e-4 && o <= 1e-4, "layer {l}: key {k}, out {o}");
    }
    println!("hidden states: max row-relative error {worst:.2e}");
}

/// loss = mean_j NLL(target_j | logits[P-1+j]), as the fixtures define it.
fn target_nll(logits: &Tensor, targets: &[u32]) -> Tensor {
    let lp = kedit::runtime::ops::log_softmax_last(logits).unwrap();
    let idx = Tensor::new(targets, logits.device())
        .unwrap()
        .unsqueeze(1)
        .unwrap();
    let picked = lp.gather(&idx, 1).unwrap();
    (picked.mean_all().unwrap() * -1.0).unwrap()
}

#[test]
fn gradients_for_a_delta_at_mlp_out_and_the_down_projection_match_transformers() {
    let refs = load_tensors(fixture("smollm2/logits.safetensors"));
    let m = smollm2();
    let meta = json(fixture("smollm2/logits.json"));
    for (case, prefix) in meta["grad_cases"]
        .as_array()
        .unwrap()
        .iter()
        .zip(["grad", "grad2"])
    {
        assert_eq!(case["prefix"], prefix);
        let input = ids_of(&refs[&format!("{prefix}.input_ids")]);
        let targets = ids_of(&refs[&format!("{prefix}.target_ids")]);
        let p = case["n_prompt"].as_u64().unwrap() as usize;
        let subject_last = case["subject_last_token_position"].as_u64().unwrap() as usize;
        let batch = TokenBatch::single(&input);
        let delta = Var::zeros(576, DType::F32, m.device()).unwrap();
        let w = Var::from_tensor(m.params.get(ParamId::mlp_out(5)).unwrap()).unwrap();
        let mut overrides = kedit::runtime::WeightOverrides::new();
        overrides.insert(ParamId::mlp_out(5), w.as_tensor().clone());
        let entries: Vec<(usize, usize)> = (0..targets.len()).map(|j| (0, p - 1 + j)).collect();
        let out = m
            .forward(&batch)
            .weights(&overrides)
            .intervene(Intervention::add(
                Site::MlpOut(5),
                vec![(0, subject_last)],
                delta.as_tensor().clone(),
            ))
            .logits(LogitsAt::Entries(entries))
            .run()
            .unwrap();
        let loss = target_nll(out.logits().unwrap(), &targets);
        let want_loss = refs[&format!("{prefix}.loss")].to_vec1::<f32>().unwrap()[0] as f64;
        let got_loss = loss.to_scalar::<f32>().unwrap() as f64;
        assert!(
            (got_loss - want_loss).abs() < 1e-4,
            "{prefix} loss {got_loss} vs {want_loss}"
        );
        let grads = loss.backward().unwrap();
        let gd = grads.get(delta.as_tensor()).unwrap();
        let e = rel_l2(gd, &refs[&format!("{prefix}.delta.layer5_mlp_out")]);
        assert!(e <= 1e-3, "{prefix} delta gradient rel L2 {e}");
        let gw = grads.get(w.as_tensor()).unwrap();
        let rows = gw.narrow(0, 0, 8).unwrap();
        let e_rows = rel_l2(
            &rows,
            &refs[&format!("{prefix}.down_proj_weight.layer5.rows0_8")],
        );
        let norms = gw.sqr().unwrap().sum(1).unwrap().sqrt().unwrap();
        let e_norms = rel_l2(
            &norms,
            &refs[&format!("{prefix}.down_proj_weight.layer5.row_norms")],
        );
        assert!(
            e_rows <= 1e-3 && e_norms <= 1e-3,
            "{prefix} weight gradient rel L2 rows {e_rows}, norms {e_norms}"
        );
        println!("{prefix}: loss {got_loss:.6}, δ-grad rel L2 {e:.2e}, W-grad rel L2 {e_rows:.2e}");
    }
}

#[test]
fn paris_is_top1_for_both_factual_prompts() {
    let m = smollm2();
    let tok = m.tokenizer().unwrap();
    for prompt in [
        "The capital of France is",
        "The Eiffel Tower is located in the city of",
    ] {
        let ids = tok.encode(prompt).unwrap();
        let out = m.forward(&TokenBatch::single(&ids)).run().unwrap();
        let top = out
            .logits()
            .unwrap()
            .squeeze(0)
            .unwrap()
            .argmax(0)
            .unwrap()
            .to_scalar::<u32>()
            .unwrap();
        assert_eq!(tok.decode(&[top], false).unwrap(), " Paris", "{prompt}");
    }
}
