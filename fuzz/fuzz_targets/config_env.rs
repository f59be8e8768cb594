//! Configuration from the environment: `KEY=VALUE` lines, the `FLUX_*` variables and the
//! original service's ones, loaded as at start-up with every adapter section read. A bad value
//! must be an error naming it, never a panic.
#![no_main]

use flux_bff::adapters::kafka::KafkaSettings;
use flux_bff::adapters::valkey::ValkeySettings;
use flux_bff::boot::Config;
use flux_bff::sim::SimSettings;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .filter(|(key, _)| !key.is_empty() && !key.contains('\0'))
        .filter(|(_, value)| !value.contains('\0'))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .take(16)
        .collect();
    // `FLUX_*` variables are read from the process environment (figment's Env provider).
    let flux: Vec<&(String, String)> = env.iter().filter(|(k, _)| k.starts_with("FLUX_")).collect();
    for (key, value) in &flux {
        // SAFETY: libFuzzer runs this target on one thread; nothing else reads the environment.
        unsafe { std::env::set_var(key, value) };
    }
    if let Ok(config) = Config::from_parts(None, &env) {
        let _ = config.section::<KafkaSettings>("kafka");
        let _ = config.section::<ValkeySettings>("valkey");
        let _ = config.section::<SimSettings>("sim");
    }
    for (key, _) in &flux {
        // SAFETY: as above.
        unsafe { std::env::remove_var(key) };
    }
});
