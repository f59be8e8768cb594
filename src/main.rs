use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    flux_bff::app::lifecycle::main_entry(flux_bff::app::lifecycle::Cli::parse()).await
}
