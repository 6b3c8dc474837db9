//! Requests as an instruct model is queried: each prompt becomes one user turn rendered
//! through the model's chat template, with the assistant's turn opened after it.
//!
//! Only prompts change. The subject stays as it is (it occurs in the rendered prompt as it
//! occurred in the plain one), and targets and answers are appended to the rendered prompt
//! exactly as to a plain one, so every method and metric runs unchanged on the result.

use crate::error::{Error, Result};
use crate::request::{EditRequest, Probe};
use crate::tokenizer::{ChatMessage, Tokenizer};

/// `prompt` as the user's one message, the assistant's turn opened.
pub fn chat_prompt(tok: &Tokenizer, prompt: &str) -> Result<String> {
    if tok.chat_template().is_none() {
        return Err(Error::config(
            "chat-template editing (--chat, `chat_template: true`): this model has no chat \
             template (a GGUF `tokenizer.chat_template` or a `chat_template` in \
             tokenizer_config.json)",
        ));
    }
    tok.apply_chat_template(&[ChatMessage::user(prompt)], true)
}

/// `request` with every prompt — the edit prompt, paraphrases, locality and portability
/// probes, generation prompts — rendered by [`chat_prompt`].
pub fn chat_request(tok: &Tokenizer, request: &EditRequest) -> Result<EditRequest> {
    let render = |p: &String| chat_prompt(tok, p);
    let probes = |ps: &Vec<Probe>| {
        ps.iter()
            .map(|p| {
                Ok(Probe {
                    prompt: chat_prompt(tok, &p.prompt)?,
                    ..p.clone()
                })
            })
            .collect::<Result<Vec<_>>>()
    };
    Ok(EditRequest {
        prompt: chat_prompt(tok, &request.prompt)?,
        rephrase: request.rephrase.iter().map(render).collect::<Result<_>>()?,
        locality: request
            .locality
            .iter()
            .map(|(k, v)| Ok((k.clone(), probes(v)?)))
            .collect::<Result<_>>()?,
        portability: request
            .portability
            .iter()
            .map(|(k, v)| Ok((k.clone(), probes(v)?)))
            .collect::<Result<_>>()?,
        generation_prompts: request
            .generation_prompts
            .iter()
            .map(render)
            .collect::<Result<_>>()?,
        ..request.clone()
    })
}

/// [`chat_request`] of each request.
pub fn chat_requests(tok: &Tokenizer, requests: &[EditRequest]) -> Result<Vec<EditRequest>> {
    requests.iter().map(|r| chat_request(tok, r)).collect()
}
