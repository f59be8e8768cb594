//! flux-sim: plays weather-, crypto-, news- and stock-service against a real Kafka, for demos,
//! compose and benchmarks.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    flux_bff::boot::sim_entry(flux_bff::boot::Cli::parse()).await
}
