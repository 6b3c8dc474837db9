//! A fuzzing harness on stable Rust: seeded, structure-aware mutators of every file format
//! a user hands kedit, and a runner that checks each case ends in `Ok` or a typed
//! [`Error`] — never a panic.
//!
//! Formats: GGUF (a tiny synthetic model written by a GGUF writer of our own), safetensors,
//! `config.json` (every architecture whose tiny model is given), the shard index, the
//! hyper-parameter files of every built-in method, and every dataset format. Each case is
//! drawn from its own generator, seeded from (seed, format, case index), so one case is
//! reproduced alone with [`Options::first_case`] and `cases = 1`. Memory is bounded by
//! the caller (the `kedit fuzz` binary counts every allocation).

pub mod gguf;
pub mod hf;
pub mod mutate;
pub mod text;
pub mod tiny;

use std::cell::RefCell;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::methods::Registry;
use crate::progress::Progress;
use crate::rng::Rng;

/// A format the harness mutates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Gguf,
    Safetensors,
    Config,
    Index,
    Hparams,
    Dataset,
}

impl Format {
    pub const ALL: [Format; 6] = [
        Format::Gguf,
        Format::Safetensors,
        Format::Config,
        Format::Index,
        Format::Hparams,
        Format::Dataset,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Format::Gguf => "gguf",
            Format::Safetensors => "safetensors",
            Format::Config => "config",
            Format::Index => "index",
            Format::Hparams => "hparams",
            Format::Dataset => "dataset",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Format> {
        Format::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                Error::config(format!(
                    "unknown fuzz format `{s}`: expected gguf|safetensors|config|index|hparams|dataset|all"
                ))
            })
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    pub cases: u64,
    /// The index of the first case (to reproduce one case: its index and `cases = 1`).
    pub first_case: u64,
    /// A directory the harness may fill and empty.
    pub scratch: PathBuf,
    /// The shared data directory (`../shared`): dataset seeds under `data/`, tiny models
    /// of every architecture under `fixtures/tiny/`. Formats without seeds are skipped.
    pub shared: Option<PathBuf>,
    /// More model directories (`config.json`, `model.safetensors`) to seed `config.json`.
    pub model_dirs: Vec<PathBuf>,
    /// Leave the last case's files in the scratch directory (to look at one case).
    pub keep: bool,
}

/// A case that panicked.
#[derive(Clone, Debug)]
pub struct Failure {
    pub case: u64,
    pub message: String,
}

/// What one format's run found.
#[derive(Clone, Debug)]
pub struct Report {
    pub format: Format,
    pub seed: u64,
    pub cases: u64,
    pub ok: u64,
    pub errors: u64,
    pub panics: Vec<Failure>,
    pub seconds: f64,
    /// Why nothing ran, when nothing did.
    pub skipped: Option<String>,
}

thread_local! {
    static PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The generator of case `case` of `format`.
fn case_rng(seed: u64, format: Format, case: u64) -> Rng {
    let f = Format::ALL.iter().position(|x| *x == format).unwrap_or(0) as u64;
    let mut mix = Rng::new(seed ^ f.wrapping_mul(0xA24B_AED4_963E_E407));
    let base = mix.next_u64();
    Rng::new(base ^ case.wrapping_mul(0x9FB2_1C65_1E98_DF25))
}

/// One format's prepared seeds.
enum Seeds {
    Gguf(gguf::GgufDoc),
    Safetensors(Vec<u8>),
    Config(Vec<(PathBuf, serde_json::Value)>),
    Index(serde_json::Value),
    Hparams {
        registry: Registry,
        seeds: Vec<(&'static str, String)>,
        model: Box<crate::model::Model>,
    },
    Dataset(Vec<serde_json::Value>),
}

fn prepare(format: Format, opts: &Options, dir: &Path) -> Result<Option<Seeds>> {
    Ok(Some(match format {
        Format::Gguf => Seeds::Gguf(gguf::tiny_doc()?),
        Format::Safetensors => Seeds::Safetensors(hf::safetensors_seed(dir)?),
        Format::Config => {
            let mut extra: Vec<PathBuf> = opts.model_dirs.clone();
            if let Some(shared) = &opts.shared {
                let tiny = shared.join("fixtures/tiny");
                for arch in ["llama", "qwen2", "mistral", "gpt2", "gptj", "gpt_neox"] {
                    extra.push(tiny.join(arch));
                }
            }
            Seeds::Config(hf::config_seeds(dir, &extra)?)
        }
        Format::Index => {
            hf::tiny_dir(dir)?;
            Seeds::Index(hf::shard(dir)?)
        }
        Format::Hparams => {
            let registry = Registry::builtin();
            let seeds = text::hparams_seeds(&registry);
            Seeds::Hparams {
                registry,
                seeds,
                model: Box::new(tiny::llama(32)?),
            }
        }
        Format::Dataset => {
            let Some(shared) = &opts.shared else {
                return Ok(None);
            };
            let files = text::dataset_files(&shared.join("data"));
            if files.is_empty() {
                return Ok(None);
            }
            Seeds::Dataset(text::dataset_seeds(&files, 3)?)
        }
    }))
}

fn one_case(seeds: &Seeds, rng: &mut Rng, dir: &Path) -> Result<()> {
    match seeds {
        Seeds::Gguf(doc) => gguf::case(rng, doc, &dir.join("model.gguf")),
        Seeds::Safetensors(bytes) => hf::safetensors_case(rng, bytes, dir),
        Seeds::Config(list) => {
            let (d, v) = &list[mutate::below(rng, list.len())];
            hf::config_case(rng, v, d)
        }
        Seeds::Index(v) => hf::index_case(rng, v, dir),
        Seeds::Hparams {
            registry,
            seeds,
            model,
        } => text::hparams_case(rng, registry, seeds, model, dir),
        Seeds::Dataset(list) => text::dataset_case(rng, list),
    }
}

/// Runs `opts.cases` cases of `format`; a panicking case is caught and reported with the
/// index that reproduces it. `on_case` is called before each case with its index.
pub fn run(
    format: Format,
    opts: &Options,
    progress: &mut dyn Progress,
    on_case: &mut dyn FnMut(u64),
) -> Result<Report> {
    let start = Instant::now();
    let dir = opts.scratch.join(format.name());
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut report = Report {
        format,
        seed: opts.seed,
        cases: 0,
        ok: 0,
        errors: 0,
        panics: Vec::new(),
        seconds: 0.0,
        skipped: None,
    };
    let Some(seeds) = prepare(format, opts, &dir)? else {
        report.skipped = Some("no seed files (give the shared data directory)".into());
        return Ok(report);
    };
    progress.phase(&format!("fuzz {format}"), opts.cases as usize, 0);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        PANIC.with(|p| *p.borrow_mut() = Some(info.to_string()));
    }));
    for case in opts.first_case..opts.first_case + opts.cases {
        on_case(case);
        let mut rng = case_rng(opts.seed, format, case);
        let result = catch_unwind(AssertUnwindSafe(|| one_case(&seeds, &mut rng, &dir)));
        report.cases += 1;
        match result {
            Ok(Ok(())) => report.ok += 1,
            Ok(Err(_)) => report.errors += 1,
            Err(_) => {
                let message = PANIC
                    .with(|p| p.borrow_mut().take())
                    .unwrap_or_else(|| "a panic without a message".into());
                report.panics.push(Failure { case, message });
            }
        }
        progress.advance(1);
        if case % 1000 == 999 {
            progress.status(&format!(
                "{} ok, {} errors, {} panics",
                report.ok,
                report.errors,
                report.panics.len()
            ));
        }
    }
    std::panic::set_hook(previous);
    if !opts.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}
