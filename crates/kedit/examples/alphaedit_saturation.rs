//! How full the key space of each edited layer is along an AlphaEdit stream, and what each
//! call's update does to the keys of the calls before it (docs/mass-editing.md, "The
//! 2000-edit CounterFact stream").
//!
//! AlphaEdit's solve minimises ‖ΔW K − R‖² + tr(ΔW C_prev ΔWᵀ) + L2‖ΔW‖² (inside P's
//! range), with C_prev = Σ K_old K_oldᵀ over the earlier edits' keys. Along an eigenvector
//! of C_prev whose eigenvalue is well above L2, moving the output costs more than the ridge:
//! the earlier edits hold that direction. For every call after the first and every edited
//! layer this prints
//! - `held`: how many of the d_ff directions C_prev holds (eigenvalue > L2);
//! - `new in held`: the share of the call's keys' energy that lies in those directions —
//!   what the call can only write by moving earlier edits;
//! - `moved / written`: the mean ‖ΔW k‖ over the earlier calls' keys against the mean over
//!   the call's own, i.e. how much each earlier fact is disturbed per unit written.
//!
//!     cargo run --release -p kedit --example alphaedit_saturation -- RUN_DIR [L2] [--json OUT]
//!
//! RUN_DIR is a sequential AlphaEdit run (`edits/<first case>.safetensors`, each with its
//! keys); L2 is the run's `L2` (10 by default).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use faer::Side;
use kedit::edit::{Edit, WeightEdit};
use kedit::methods::memit::nullspace::accumulated;
use kedit::methods::memit::spread::to_mat;
use kedit::ParamId;
use kedit::{Error, Result};

#[derive(serde::Serialize)]
struct Row {
    call: usize,
    first_case: usize,
    layer: String,
    earlier_keys: usize,
    held: usize,
    new_in_held: f64,
    moved_over_written: f64,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: alphaedit_saturation RUN_DIR [L2] [--json OUT]";
    let run = PathBuf::from(args.get(1).ok_or_else(|| Error::invalid(usage))?);
    let mut l2 = 10.0;
    let mut json_out = None;
    let mut rest = args[2..].iter();
    while let Some(a) = rest.next() {
        if a == "--json" {
            json_out = Some(rest.next().ok_or_else(|| Error::invalid(usage))?.clone());
        } else {
            l2 = a
                .parse()
                .map_err(|_| Error::invalid(format!("L2 `{a}` is not a number")))?;
        }
    }
    let calls = edits_in_order(&run.join("edits"))?;
    if calls.len() < 2 {
        return Err(Error::invalid(format!(
            "{}: fewer than two saved calls",
            run.display()
        )));
    }
    let params: Vec<ParamId> = calls[0].1.keys.iter().map(|(p, _)| *p).collect();
    if params.is_empty() {
        return Err(Error::invalid(format!(
            "{}: its edits carry no keys (not an AlphaEdit run)",
            calls[0].0.display()
        )));
    }
    // C_prev per layer, grown by each call's keys after its row is measured.
    let mut c_prevs = params
        .iter()
        .map(|p| {
            let first = keys_at(&calls[0].1, *p, &calls[0].0)?;
            accumulated(&[&first], first.dim(1)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut rows = Vec::new();
    println!("| call | first case | layer | earlier keys | held (of d_ff) | new in held | moved / written |");
    println!("|---|---|---|---|---|---|---|");
    for c in 1..calls.len() {
        let (path, edit) = &calls[c];
        let first_case = first_case(path)?;
        for (param, c_prev) in params.iter().zip(c_prevs.iter_mut()) {
            let earlier: Vec<&Tensor> = calls[..c]
                .iter()
                .flat_map(|(_, e)| e.keys_of(*param))
                .collect();
            let new = keys_at(edit, *param, path)?;
            let width = new.dim(1)?;
            let evd = c_prev
                .self_adjoint_eigen(Side::Lower)
                .map_err(|e| Error::invalid(format!("eigendecomposition failed: {e:?}")))?;
            let values = evd.S().column_vector();
            let held: Vec<usize> = (0..width).filter(|&i| values[i] > l2).collect();
            let k = to_mat(&new.to_dtype(DType::F64)?)?;
            let coords = &k * evd.U(); // each key in C_prev's eigenbasis
            let total = k.squared_norm_l2();
            let in_held: f64 = (0..coords.nrows())
                .flat_map(|r| held.iter().map(move |&h| (r, h)))
                .map(|(r, h)| coords[(r, h)] * coords[(r, h)])
                .sum();
            let old = Tensor::cat(&earlier, 0)?;
            let moved = mean_output_norm(edit, *param, &old)?;
            let written = mean_output_norm(edit, *param, &new)?;
            let row = Row {
                call: c,
                first_case,
                layer: param.to_string(),
                earlier_keys: old.dim(0)?,
                held: held.len(),
                new_in_held: in_held / total,
                moved_over_written: moved / written,
            };
            println!(
                "| {} | {} | {} | {} | {} | {:.3} | {:.3} |",
                row.call,
                row.first_case,
                row.layer,
                row.earlier_keys,
                row.held,
                row.new_in_held,
                row.moved_over_written
            );
            rows.push(row);
            *c_prev += accumulated(&[&new], width)?;
        }
    }
    if let Some(out) = json_out {
        let text = serde_json::to_string_pretty(&rows)
            .map_err(|e| Error::invalid(format!("serialising the rows: {e}")))?;
        std::fs::write(&out, text).map_err(|e| Error::io(Path::new(&out), e))?;
    }
    Ok(())
}

/// The run's saved calls, by their first case.
fn edits_in_order(dir: &Path) -> Result<Vec<(PathBuf, WeightEdit)>> {
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            found.insert(first_case(&path)?, path);
        }
    }
    found
        .into_values()
        .map(|path| match Edit::load(&path)? {
            Edit::Weights(w) => Ok((path, w)),
            other => Err(Error::invalid(format!(
                "{}: a {} edit, not weights",
                path.display(),
                other.kind()
            ))),
        })
        .collect()
}

fn first_case(path: &Path) -> Result<usize> {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::invalid(format!("{}: not named by its first case", path.display())))
}

fn keys_at(edit: &WeightEdit, param: ParamId, path: &Path) -> Result<Tensor> {
    let keys: Vec<&Tensor> = edit.keys_of(param).collect();
    if keys.is_empty() {
        return Err(Error::invalid(format!(
            "{}: no keys at {param}",
            path.display()
        )));
    }
    Ok(Tensor::cat(&keys, 0)?)
}

/// The mean ‖ΔW k‖ over the rows k of `keys` (`[n, d_ff]`), ΔW the edit's at `param`.
fn mean_output_norm(edit: &WeightEdit, param: ParamId, keys: &Tensor) -> Result<f64> {
    let delta = edit
        .deltas
        .iter()
        .find(|(p, _)| *p == param)
        .map(|(_, d)| d)
        .ok_or_else(|| Error::invalid(format!("no update at {param}")))?;
    let w = delta.dense(DType::F32)?;
    let out = keys.to_dtype(DType::F32)?.matmul(&w.t()?)?; // [n, d]
    let norms = out.sqr()?.sum(1)?.sqrt()?;
    Ok(norms.mean_all()?.to_scalar::<f32>()? as f64)
}
