//! Editing with a trained hypernetwork: one forward and backward pass over the request
//! (prompt + target), the gradient's factors through the network, and the resulting
//! low-rank change of each edited projection as a weight edit — saved, reverted and run in
//! every mode like ROME's.

use candle_core::Tensor;

use super::example::Scored;
use super::factors::{gradient_factors, Factors};
use super::hypernet::Hypernet;
use crate::edit::{Delta, WeightEdit};
use crate::editor::Editor;
use crate::error::{Error, Result};
use crate::methods::{check_requests, Computed, EditContext, EditMethod, MethodReport};
use crate::model::{BlockParam, Model, ParamId};
use crate::request::EditRequest;

pub struct MetaMethod {
    pub name: String,
    pub net: Box<dyn Hypernet>,
    pub hparams: serde_json::Value,
    /// Requests one edit may take (KE conditions on one request; MEND sums any number).
    pub max_batch: Option<usize>,
}

/// The output projection of `layer`.
pub fn out_param(layer: usize) -> ParamId {
    ParamId::Block(layer, BlockParam::OutWeight)
}

/// The factors of several requests' gradients as one: the gradient of their summed losses
/// has every request's tokens as factors.
fn concatenated(all: Vec<Factors>) -> Result<Factors> {
    let n_layers = all[0].keys.len();
    let cat = |pick: &dyn Fn(&Factors) -> &Tensor| -> Result<Tensor> {
        let parts: Vec<&Tensor> = all.iter().map(pick).collect();
        Ok(Tensor::cat(&parts, 0)?)
    };
    let mut keys = Vec::with_capacity(n_layers);
    let mut grads = Vec::with_capacity(n_layers);
    for i in 0..n_layers {
        keys.push(cat(&|f: &Factors| &f.keys[i])?);
        grads.push(cat(&|f: &Factors| &f.grads[i])?);
    }
    let conds: Vec<&Tensor> = all.iter().map(|f| &f.condition).collect();
    let condition = Tensor::stack(&conds, 0)?.mean(0)?;
    let loss = all.iter().map(|f| f.loss).sum::<f64>() / all.len() as f64;
    Ok(Factors {
        keys,
        grads,
        condition,
        loss,
    })
}

impl EditMethod for MetaMethod {
    fn name(&self) -> &str {
        &self.name
    }

    fn max_batch(&self) -> Option<usize> {
        self.max_batch
    }

    fn hparams_json(&self) -> serde_json::Value {
        self.hparams.clone()
    }

    fn check_request(&self, model: &Model, request: &EditRequest) -> Result<()> {
        request.check_size(model, 0)
    }

    fn compute(
        &self,
        system: &Editor,
        requests: &[EditRequest],
        _ctx: &EditContext,
    ) -> Result<Computed> {
        let model = system.model();
        check_requests(self, model, requests)?;
        if let Some(max) = self.max_batch {
            if requests.len() > max {
                return Err(Error::invalid(format!(
                    "{} edits {max} request(s) at a time; {} were given",
                    self.name,
                    requests.len()
                )));
            }
        }
        let mut report = MethodReport::default();
        let layers = self.net.layers().to_vec();
        let factors = report.timed("gradient", |_| {
            let tok = model.tokenizer()?;
            let all = requests
                .iter()
                .map(|r| {
                    let text = Scored::teacher_forced(tok, &r.prompt, &r.target_new)
                        .map_err(|e| Error::invalid(format!("case {}: {e}", r.case_id)))?;
                    gradient_factors(model, &text, None, &layers)
                })
                .collect::<Result<Vec<_>>>()?;
            concatenated(all)
        })?;
        report.note("loss_before", format!("{:.4}", factors.loss));
        let updates = report.timed("hypernetwork", |_| self.net.updates(&factors))?;
        let mut edit = WeightEdit::new();
        for (&l, (u, v)) in layers.iter().zip(updates) {
            let delta = Delta::LowRank {
                u: u.detach(),
                v: v.detach(),
            };
            if !delta.is_finite()? {
                return Err(Error::EditRefused(format!(
                    "{}'s update of layer {l} is not finite",
                    self.name
                )));
            }
            report.note(&format!("norm_layer{l}"), format!("{:.4}", delta.norm()?));
            edit.push(out_param(l), delta);
        }
        edit.meta.insert("method".into(), self.name.clone());
        Ok(Computed {
            edit: edit.into(),
            report,
        })
    }
}
