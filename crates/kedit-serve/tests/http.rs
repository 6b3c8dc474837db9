//! `kedit serve` at the HTTP level: the real server on 127.0.0.1:0 with the real SmolLM2,
//! talked to over TCP.

mod common;

use std::io::Write;
use std::thread;

use common::{connect, get, post, read_reply, request, server, turn};
use kedit_serve::{ServeError, Server, BODY_LIMIT};
use serde_json::{json, Value};

const PROMPT: &str = "The Eiffel Tower is located in the city of";

fn eiffel(method: &str) -> Value {
    json!({
        "method": method,
        "prompt": PROMPT,
        "subject": "The Eiffel Tower",
        "target": "Rome",
        "paraphrase": "Where is the Eiffel Tower? It is in the city of",
        "neighbours": ["The Louvre is located in the city of"],
    })
}

fn answer(probe: &Value) -> &str {
    probe["answer"].as_str().expect("an answer")
}

#[test]
fn an_edit_changes_the_answer_and_reverting_it_restores_the_answer() {
    let _turn = turn();
    let h = server();
    let reply = post(h.addr, "/api/edit", &eiffel("ft-m"));
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let out = reply.json();
    let (before, after) = (&out["before"], &out["after"]);
    assert_eq!(
        before.as_array().unwrap().len(),
        3,
        "prompt, paraphrase, neighbour"
    );
    let roles: Vec<&str> = before
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["prompt", "paraphrase", "neighbour"]);
    assert!(answer(&before[0]).contains("Paris"), "{}", before[0]);
    assert!(
        answer(&after[0]).trim_start().starts_with("Rome"),
        "{}",
        after[0]
    );
    assert_eq!(after[0]["top"][0]["text"], " Rome");
    let top = after[0]["top"].as_array().unwrap();
    assert_eq!(top.len(), kedit_serve::probe::TOP_K);
    assert!(top
        .windows(2)
        .all(|w| w[0]["prob"].as_f64() >= w[1]["prob"].as_f64()));
    let id = out["edit"]["id"].as_u64().unwrap();

    // A freshly loaded page finds the edit and its before/after in the state.
    let state = get(h.addr, "/api/state").json();
    assert_eq!(state["busy"], false);
    assert_eq!(state["last"]["edit"]["id"], id);
    assert_eq!(state["last"]["after"][0]["answer"], after[0]["answer"]);
    assert_eq!(state["edits"].as_array().unwrap().len(), 1);

    // Saved: downloaded as a safetensors file, and written into the save directory.
    let file = get(h.addr, &format!("/api/edits/{id}/file"));
    assert_eq!(file.status, 200);
    assert!(file
        .header("content-disposition")
        .is_some_and(|d| d.starts_with("attachment") && d.contains(".safetensors")));
    let header_len = u64::from_le_bytes(file.body[..8].try_into().unwrap()) as usize;
    assert!(file.body.len() > 8 + header_len && file.body[8] == b'{');
    let saved = post(h.addr, &format!("/api/edits/{id}/save"), &json!({})).json();
    let saved = std::path::PathBuf::from(saved["file"].as_str().unwrap());
    assert_eq!(saved.parent(), Some(h.save_dir.as_path()));
    assert_eq!(std::fs::read(&saved).unwrap(), file.body);

    // Reverted: the prompt is answered as before the edit.
    let reverted = post(h.addr, &format!("/api/edits/{id}/revert"), &json!({}));
    assert_eq!(reverted.status, 200);
    let reverted = reverted.json();
    assert_eq!(reverted["reverted"]["id"], id);
    for (now, was) in reverted["now"]
        .as_array()
        .unwrap()
        .iter()
        .zip(before.as_array().unwrap())
    {
        assert_eq!(now["answer"], was["answer"]);
    }
    let state = get(h.addr, "/api/state").json();
    assert_eq!(state["edits"].as_array().unwrap().len(), 0);
    assert!(
        state["last"].is_null(),
        "the before/after of a reverted edit is gone"
    );
    let again = post(h.addr, &format!("/api/edits/{id}/revert"), &json!({}));
    assert_eq!(again.status, 404);
    assert!(again.error().contains(&format!("no applied edit {id}")));
}

#[test]
fn reverting_one_of_two_edits_keeps_the_other() {
    let _turn = turn();
    let h = server();
    let first = post(h.addr, "/api/edit", &eiffel("ft-m")).json();
    let mut louvre = eiffel("ft-m");
    louvre["prompt"] = json!("The Louvre is located in the city of");
    louvre["subject"] = json!("The Louvre");
    louvre["target"] = json!("London");
    louvre["paraphrase"] = json!("");
    louvre["neighbours"] = json!([]);
    let second = post(h.addr, "/api/edit", &louvre).json();
    assert!(answer(&second["after"][0])
        .trim_start()
        .starts_with("London"));
    let id = first["edit"]["id"].as_u64().unwrap();
    let reverted = post(h.addr, &format!("/api/edits/{id}/revert"), &json!({})).json();
    assert_eq!(reverted["edits"].as_array().unwrap().len(), 1);
    assert_eq!(reverted["edits"][0]["id"], second["edit"]["id"]);
    let probed = post(
        h.addr,
        "/api/probe",
        &json!({"prompts": [PROMPT, "The Louvre is located in the city of"]}),
    )
    .json();
    assert_eq!(probed[0]["answer"], first["before"][0]["answer"]);
    assert_eq!(probed[1]["answer"], second["after"][0]["answer"]);
    assert_eq!(post(h.addr, "/api/revert-all", &json!({})).status, 200);
    assert_eq!(get(h.addr, "/api/state").json()["edits"], json!([]));
}

#[test]
fn a_trace_returns_one_row_per_token_and_one_column_per_layer() {
    let _turn = turn();
    let h = server();
    let reply = post(
        h.addr,
        "/api/trace",
        &json!({"prompt": PROMPT, "subject": "The Eiffel Tower", "samples": 1}),
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let t = reply.json();
    let tokens = t["tokens"].as_array().unwrap().len();
    let layers = t["n_layers"].as_u64().unwrap() as usize;
    assert_eq!(layers, 30, "SmolLM2-135M has 30 layers");
    assert!(tokens >= 9, "{tokens} tokens");
    assert_eq!(t["answer"], " Paris");
    for kind in ["hidden", "mlp", "attn"] {
        let grid = t[kind].as_array().unwrap();
        assert_eq!(grid.len(), tokens, "{kind}");
        for row in grid {
            let row = row.as_array().unwrap();
            assert_eq!(row.len(), layers, "{kind}");
            assert!(row
                .iter()
                .all(|p| (0.0..=1.0).contains(&p.as_f64().unwrap())));
        }
    }
    // The page draws the last trace on load.
    let state = get(h.addr, "/api/state").json();
    assert_eq!(state["trace"]["prompt"], PROMPT);
    assert_eq!(state["trace"]["edits_applied"], json!([]));
}

#[test]
fn a_body_over_the_limit_is_refused_with_413() {
    let h = server();
    let ten_mb = 10 * 1024 * 1024;
    // Declared: refused from the header, before the body is read.
    let mut s = connect(h.addr);
    let head = format!(
        "POST /api/edit HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {ten_mb}\r\n\r\n",
        h.addr
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut writer = s.try_clone().unwrap();
    // The body goes out on another thread: the server may stop reading (or close) at any
    // point, so its writes may fail, and the reply must arrive regardless.
    let sender = thread::spawn(move || {
        let chunk = vec![b' '; 64 * 1024];
        for _ in 0..ten_mb / chunk.len() {
            if writer.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let reply = read_reply(&mut s);
    assert_eq!(reply.status, 413);
    assert!(reply
        .error()
        .contains(&format!("{} KiB", BODY_LIMIT / 1024)));
    drop(s);
    let _ = sender.join();

    // Not declared (chunked): cut off once the limit is read.
    let mut s = connect(h.addr);
    let head = format!(
        "POST /api/edit HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        h.addr
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut writer = s.try_clone().unwrap();
    let sender = thread::spawn(move || {
        let chunk = vec![b' '; 64 * 1024];
        let frame = [
            format!("{:x}\r\n", chunk.len()).into_bytes(),
            chunk,
            b"\r\n".to_vec(),
        ]
        .concat();
        for _ in 0..160 {
            if writer.write_all(&frame).is_err() {
                break;
            }
        }
        let _ = writer.write_all(b"0\r\n\r\n");
    });
    let reply = read_reply(&mut s);
    assert_eq!(
        reply.status,
        413,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert!(!reply.error().is_empty());
    drop(s);
    let _ = sender.join();
}

#[test]
fn while_the_model_is_held_edits_and_traces_are_busy() {
    let _turn = turn();
    let h = server();
    // Held as an edit in progress holds it: the same lock every request takes.
    let held = h.state.begin_work().expect("the model is free");
    for (path, body) in [
        ("/api/edit", eiffel("ft-m")),
        (
            "/api/trace",
            json!({"prompt": PROMPT, "subject": "The Eiffel Tower"}),
        ),
    ] {
        let reply = post(h.addr, path, &body);
        assert_eq!(reply.status, 409, "{path}");
        assert!(reply.error().starts_with("busy"), "{}", reply.error());
    }
    // The page's state is still served, and says so.
    assert_eq!(get(h.addr, "/api/state").json()["busy"], true);
    drop(held);
    assert_eq!(get(h.addr, "/api/state").json()["busy"], false);
}

#[test]
fn a_real_second_request_during_an_edit_is_busy() {
    let _turn = turn();
    let h = server();
    let addr = h.addr;
    let first = thread::spawn(move || post(addr, "/api/edit", &eiffel("ft-m")));
    // Wait until the edit holds the model, then knock.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !h.state.is_busy() {
        assert!(
            std::time::Instant::now() < deadline,
            "the edit never started"
        );
        thread::sleep(std::time::Duration::from_millis(5));
    }
    let second = post(
        addr,
        "/api/trace",
        &json!({"prompt": PROMPT, "subject": "The Eiffel Tower"}),
    );
    assert_eq!(second.status, 409);
    assert_eq!(first.join().unwrap().status, 200);
    assert_eq!(post(addr, "/api/revert-all", &json!({})).status, 200);
}

#[test]
fn mistakes_are_json_errors_with_kedits_message() {
    let _turn = turn();
    let h = server();
    let mut wrong_subject = eiffel("ft-m");
    wrong_subject["subject"] = json!("The Statue of Liberty");
    let reply = post(h.addr, "/api/edit", &wrong_subject);
    assert_eq!(reply.status, 400);
    assert!(
        reply.error().contains("The Statue of Liberty"),
        "{}",
        reply.error()
    );

    let reply = post(h.addr, "/api/edit", &eiffel("no-such-method"));
    assert_eq!(reply.status, 400);
    assert!(reply.error().contains("no-such-method"));

    // Listed, not offered: it needs a trained checkpoint.
    let reply = post(h.addr, "/api/edit", &eiffel("mend"));
    assert_eq!(reply.status, 400);
    assert!(reply.error().contains("not available"));

    let reply = request(h.addr, "POST", "/api/edit", Some(b"{not json"));
    assert_eq!(reply.status, 400);
    assert!(!reply.error().is_empty());
    let reply = post(h.addr, "/api/edit", &json!({"prompt": PROMPT}));
    assert_eq!(reply.status, 422, "a field is missing");
    assert!(reply.error().contains("method"), "{}", reply.error());

    let reply = post(
        h.addr,
        "/api/trace",
        &json!({"prompt": PROMPT, "subject": "Paris!", "samples": 1}),
    );
    assert_eq!(reply.status, 400);
    let reply = post(
        h.addr,
        "/api/trace",
        &json!({"prompt": PROMPT, "subject": "The Eiffel Tower", "samples": 1000}),
    );
    assert_eq!(reply.status, 400);
    assert!(reply.error().contains("samples"));

    assert_eq!(
        post(h.addr, "/api/edits/abc/revert", &json!({})).status,
        400
    );
    assert_eq!(get(h.addr, "/api/edits/99999/file").status, 404);
    assert_eq!(get(h.addr, "/api/state").json()["edits"], json!([]));
}

#[test]
fn the_page_and_the_method_list_are_served() {
    let h = server();
    let page = get(h.addr, "/");
    assert_eq!(page.status, 200);
    let html = String::from_utf8(page.body).unwrap();
    assert!(html.contains("<script src=\"/app.js\">"));
    let js = get(h.addr, "/app.js");
    assert!(js.header("content-type").unwrap().contains("javascript"));
    assert!(String::from_utf8(js.body).unwrap().contains("/api/state"));
    assert_eq!(get(h.addr, "/style.css").status, 200);

    let methods = get(h.addr, "/api/methods").json();
    let find = |name: &str| {
        methods
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("{name} listed"))
            .clone()
    };
    assert_eq!(find("ft-m")["available"], true);
    assert_eq!(find("rome")["available"], true);
    let mend = find("mend");
    assert_eq!(mend["available"], false);
    assert!(mend["note"].as_str().unwrap().contains("kedit train"));
}

#[test]
fn a_non_loopback_address_is_refused_without_the_flag_before_any_work() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // No model at this path: a refusal that came after loading would name the model.
    let config = common::config("/nonexistent/model.gguf".into(), None);
    let err = runtime
        .block_on(Server::start(
            config.clone(),
            "0.0.0.0:0".parse().unwrap(),
            false,
        ))
        .err()
        .expect("refused");
    assert!(matches!(err, ServeError::Address(_)), "{err}");
    assert!(err.to_string().contains("--allow-remote"), "{err}");
    // With the flag the address passes, and the next step (the model) is what fails.
    let err = runtime
        .block_on(Server::start(config, "0.0.0.0:0".parse().unwrap(), true))
        .err()
        .expect("no model");
    assert!(matches!(err, ServeError::Kedit(_)), "{err}");
}
