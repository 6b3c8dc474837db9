//! `kedit serve`: the web page (crates/kedit-serve), on this machine only unless asked.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use kedit::methods::EditContext;
use kedit_serve::{ServeConfig, Server, DEFAULT_ADDR};

use crate::trace::DEFAULT_FACTS;
use crate::ModelArg;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArg,
    /// Where to listen. Any address but a loopback one needs --allow-remote.
    #[arg(long, default_value = DEFAULT_ADDR)]
    addr: SocketAddr,
    /// Allow a non-loopback --addr: anyone who reaches it can edit the model.
    #[arg(long)]
    allow_remote: bool,
    /// Where the page's "save" writes edit files (the page itself sends no paths).
    #[arg(long)]
    save_dir: Option<PathBuf>,
    /// Known facts whose subjects give the causal trace's noise scale σ.
    #[arg(long, default_value = DEFAULT_FACTS)]
    facts: PathBuf,
    /// Text corpus for key statistics that are not cached.
    #[arg(long)]
    corpus: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    // Refused before the model loads: a bad address or save directory costs nothing.
    if let Some(warning) =
        kedit_serve::check_bind(args.addr, args.allow_remote).map_err(anyhow::Error::msg)?
    {
        eprintln!("warning: {warning}");
    }
    if let Some(dir) = &args.save_dir {
        kedit::fsio::check_writable_dir(dir)?;
    }
    let config = ServeConfig {
        model: args
            .model
            .model
            .clone()
            .unwrap_or_else(kedit::model::default_model_path),
        save_dir: args.save_dir.clone(),
        facts: args.facts.clone(),
        context: EditContext {
            corpus: args.corpus.clone(),
            ..Default::default()
        },
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        eprintln!("loading {} …", config.model.display());
        let server = Server::start(config, args.addr, args.allow_remote).await?;
        println!("serving http://{}/ (Ctrl-C stops)", server.local_addr()?);
        server
            .serve(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    })
}
