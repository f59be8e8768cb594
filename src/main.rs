//! flux-bff: the gateway. Everything happens in the composition root, `flux_bff::boot`.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    flux_bff::boot::main_entry(flux_bff::boot::Cli::parse()).await
}
