//! Logging: JSON lines in production, readable lines on a terminal; level from the
//! configuration unless `RUST_LOG` is set. Warnings of the libraries (rskafka's "Failed to
//! connect to broker", a dozen a second during an outage) are throttled like the gateway's
//! own: a few per call site, then one summary line per period that counts what was held back.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::callsite::Identifier;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use super::metrics::LOG_LINES_HELD_BACK;
use super::throttle::LogThrottle;

/// Library warnings shown per call site at once, then one per [`LIBRARY_PERIOD`].
pub const LIBRARY_BURST: u32 = 5;
/// How often a library's held-back warnings are summed up in one line.
pub const LIBRARY_PERIOD: Duration = Duration::from_secs(10);

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(settings: &LogSettings) {
    // `RUST_LOG` wins, with the same holds (found by review: `RUST_LOG=debug` logged tokens).
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|level| !level.trim().is_empty())
        .map_or_else(|| settings.filter(), |level| held(&level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match settings.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let library = LibraryWarnings::new(LIBRARY_BURST, LIBRARY_PERIOD);
    let lines = tracing_subscriber::fmt::layer().with_target(true);
    let lines = if json {
        lines
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .boxed()
    } else {
        lines.compact().boxed()
    };
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(lines.with_filter(library.clone()))
        .try_init();
    if installed.is_ok() {
        let _ = std::thread::Builder::new()
            .name("log-summary".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(library.period());
                    library.summarize();
                }
            });
    }
}

/// A filter for the log lines: a library's warnings and errors pass a few per call site
/// ([`LogThrottle`]); the others are counted (`flux_log_lines_held_back_total{library}`) and
/// summed up by [`LibraryWarnings::summarize`]. The gateway's own lines always pass (they are
/// throttled where they are written, with their count).
#[derive(Clone)]
pub struct LibraryWarnings {
    shared: Arc<Shared>,
}

struct Shared {
    throttle: LogThrottle<Identifier>,
    /// How often [`LibraryWarnings::summarize`] is due (the throttle's period).
    period: Duration,
    /// Per library: lines held back since the last summary, and the last one's message.
    held: Mutex<HashMap<String, (u64, String)>>, // std Mutex: never held across an .await
}

impl LibraryWarnings {
    /// `burst` lines per call site at once, then one per `period`.
    pub fn new(burst: u32, period: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                throttle: LogThrottle::new(burst, period),
                period,
                held: Mutex::default(),
            }),
        }
    }

    /// Logs one line per library whose warnings were held back since the last call: how many,
    /// and the last one's message.
    pub fn summarize(&self) {
        let held = std::mem::take(&mut *self.lock());
        for (library, (held_back, last)) in held {
            tracing::warn!(
                %library,
                held_back,
                last = %last,
                period = ?self.shared.period,
                "library warnings held back (like the last one shown)"
            );
        }
    }

    /// How often [`Self::summarize`] should run.
    pub fn period(&self) -> Duration {
        self.shared.period
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, String)>> {
        self.shared.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn throttled(metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= Level::WARN && !metadata.target().starts_with("flux_bff")
    }
}

impl<S: Subscriber> Filter<S> for LibraryWarnings {
    fn enabled(&self, _: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        true
    }

    fn callsite_enabled(
        &self,
        metadata: &'static Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if Self::throttled(metadata) {
            tracing::subscriber::Interest::sometimes()
        } else {
            tracing::subscriber::Interest::always()
        }
    }

    fn event_enabled(&self, event: &Event<'_>, _: &Context<'_, S>) -> bool {
        let metadata = event.metadata();
        if !Self::throttled(metadata) || self.shared.throttle.admit(&metadata.callsite()).is_some()
        {
            return true;
        }
        let library = metadata
            .target()
            .split("::")
            .next()
            .unwrap_or("")
            .to_owned();
        let mut message = MessageOf(String::new());
        event.record(&mut message);
        metrics::counter!(LOG_LINES_HELD_BACK, "library" => library.clone()).increment(1);
        let mut held = self.lock();
        let entry = held.entry(library).or_default();
        entry.0 += 1;
        entry.1 = message.0;
        false
    }
}

/// The `message` field of an event.
struct MessageOf(String);

impl Visit for MessageOf {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct LogSettings {
    /// A tracing filter such as `info` or `flux_bff=debug`; `RUST_LOG` wins when set.
    pub level: String,
    /// `json`, `pretty`, or `auto` (pretty on a terminal, JSON lines otherwise).
    pub format: LogFormat,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Json,
    Pretty,
}

/// Libraries held at a level unless `log.level` names them: rskafka logs every retry at info
/// (its warnings are enough next to ours); socketioxide and engineioxide log whole handshakes
/// (a client's `auth.token` JWT, its recovery session id) and packets at debug, which an
/// operator turning on `debug` must not find in the log (found by review).
const HELD_AT: [(&str, &str); 3] = [
    ("rskafka", "warn"),
    ("socketioxide", "info"),
    ("engineioxide", "info"),
];

/// The level names a directive of `log.level` may be alone (or their numbers, 0 to 5).
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// The filter `directives` stand for, with each library of [`HELD_AT`] held at its level
/// unless a directive names that library itself (one naming a module of it, such as
/// `socketioxide::ns=trace`, is more specific and keeps the rest held).
fn held(directives: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    let named = |library: &str| {
        directives.split(',').any(|d| {
            let target = d.split(['=', '[']).next().unwrap_or("").trim();
            target == library
        })
    };
    let mut all = directives.to_owned();
    for (library, level) in HELD_AT {
        if !named(library) {
            all.push_str(&format!(",{library}={level}"));
        }
    }
    EnvFilter::try_new(all)
}

impl LogSettings {
    /// The filter `log.level` stands for, with the libraries of [`HELD_AT`] it does not name.
    ///
    /// # Errors
    /// When `log.level` is not a tracing filter.
    pub fn filter(&self) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
        held(&self.level)
    }

    /// What is wrong with these settings, one line per problem naming the key. A bare word
    /// that is not a level (`warning`, `verbose`) is a valid filter that turns on one target
    /// of that name and every other line off: refused, not silently taken.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(e) = self.filter() {
            problems.push(format!(
                "log.level (FLUX_LOG__LEVEL): not a tracing filter ({e}), e.g. `info` or `info,flux_bff=debug`"
            ));
        }
        for word in self.level.split(',').map(str::trim) {
            if !word.is_empty()
                && !word.contains('=')
                && word
                    .parse::<tracing_subscriber::filter::LevelFilter>()
                    .is_err()
            {
                problems.push(format!(
                    "log.level (FLUX_LOG__LEVEL): `{word}` is not a level (one of {}); a target takes one, as in `{word}=debug`",
                    LEVELS.join(", ")
                ));
            }
        }
        problems
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

/// What tests capture of the logs.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::{Arc, Mutex};

    /// A log writer keeping every line written, for a subscriber's `with_writer(move ||
    /// lines.clone())`.
    #[derive(Clone, Default)]
    pub(crate) struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Lines {
        /// Everything written so far.
        pub(crate) fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Lines;
    use super::*;

    #[test]
    fn a_flood_of_library_warnings_shows_a_burst_then_one_counted_summary() {
        let lines = Lines::default();
        let writer = lines.clone();
        let library = LibraryWarnings::new(3, Duration::from_secs(3600));
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .with_filter(library.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            for attempt in 0..100 {
                tracing::warn!(target: "rskafka::client", attempt, "Failed to connect to broker");
            }
            // The gateway's own lines are never held back here.
            for _ in 0..10 {
                tracing::warn!(target: "flux_bff::app::ingest", "consumer lost the broker");
            }
            library.summarize();
            library.summarize(); // nothing held back since: no line
        });
        let text = lines.text();
        let count = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
        assert_eq!(count("Failed to connect to broker"), 3 + 1, "{text}"); // + the summary's `last`
        assert_eq!(count("consumer lost the broker"), 10);
        let summary: Vec<&str> = text.lines().filter(|l| l.contains("held back")).collect();
        assert_eq!(summary.len(), 1, "{text}");
        assert!(
            summary[0].contains("held_back=97") && summary[0].contains("library=rskafka"),
            "{}",
            summary[0]
        );
    }

    #[test]
    fn debug_keeps_the_socket_io_libraries_at_info_unless_named() {
        let lines = Lines::default();
        let writer = lines.clone();
        let settings = LogSettings {
            level: "debug".into(),
            ..LogSettings::default()
        };
        let subscriber = tracing_subscriber::registry()
            .with(settings.filter().unwrap())
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(move || writer.clone())
                    .with_ansi(false),
            );
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "socketioxide::client", "auth: token SECRET-1");
            tracing::debug!(target: "engineioxide::socket", "sending packet SECRET-2");
            tracing::debug!(target: "flux_bff::app::clients", "our own debug line");
            tracing::info!(target: "socketioxide::client", "an info line");
        });
        let text = lines.text();
        assert!(!text.contains("SECRET"), "{text}");
        assert!(text.contains("our own debug line"), "{text}");
        assert!(text.contains("an info line"), "{text}");
        let named = LogSettings {
            level: "info,socketioxide=debug".into(),
            ..LogSettings::default()
        };
        assert!(
            named
                .filter()
                .unwrap()
                .to_string()
                .contains("socketioxide=debug")
        );
    }

    #[test]
    fn a_level_that_is_not_one_is_refused() {
        let problems = |level: &str| {
            LogSettings {
                level: level.into(),
                ..LogSettings::default()
            }
            .problems()
        };
        for good in [
            "info",
            "DEBUG",
            "warn,flux_bff=debug",
            "flux_bff::app=trace",
            "off",
        ] {
            assert!(problems(good).is_empty(), "{good}: {:?}", problems(good));
        }
        for bad in ["warning", "verbose", "info,flux_bff", "info,[{=x"] {
            let found = problems(bad);
            assert!(
                !found.is_empty() && found.iter().all(|p| p.contains("log.level")),
                "{bad}: {found:?}"
            );
        }
    }
}
