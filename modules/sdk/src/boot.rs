//! Process start-up for a module: the log subscriber, set up before anything
//! else so that every later step can report what it does.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the global log subscriber: lines on stderr, text or JSON as
/// `MECHA_LOG_FORMAT` says, filtered by `MECHA_LOG`.
///
/// The filter is a `Targets` list (`info`, `warn,mecha_mod_state=debug`), the
/// form `MECHA_LOG` is documented to take. tracing-subscriber's `EnvFilter`
/// also matches span fields with regular expressions, and linking it puts its
/// regex engine into every module binary; on Linux the kernel maps most of a
/// binary's code resident once the process runs, so that engine cost every
/// module resident memory although nothing used it. A value that does not
/// parse falls back to `info`, as before; so does an empty one, which
/// EnvFilter read as "errors only".
pub(crate) fn init_logs() {
    let filter = log_filter(std::env::var("MECHA_LOG").ok().as_deref());
    let registry = tracing_subscriber::registry().with(filter);
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // mechad sets this for its modules when it runs with --log-format json.
    if std::env::var("MECHA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        registry.with(logs.json().with_current_span(false)).init();
    } else {
        registry
            .with(logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())))
            .init();
    }
}

/// The filter for a `MECHA_LOG` value: its targets and levels, or `info` for
/// everything when it is unset, empty or not a valid list.
fn log_filter(value: Option<&str>) -> Targets {
    value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn unset_empty_and_invalid_values_mean_info() {
        for value in [None, Some(""), Some("  "), Some("mecha=loud")] {
            let filter = log_filter(value);
            assert!(filter.would_enable("mecha_mod_state", &Level::INFO));
            assert!(!filter.would_enable("mecha_mod_state", &Level::DEBUG));
        }
    }

    #[test]
    fn a_level_and_per_target_levels_apply() {
        let filter = log_filter(Some("warn,mecha_mod_state=debug"));
        assert!(filter.would_enable("mecha_mod_state::drivers", &Level::DEBUG));
        assert!(!filter.would_enable("mecha_mod_lock", &Level::INFO));
        assert!(filter.would_enable("mecha_mod_lock", &Level::WARN));
        let off = log_filter(Some("off"));
        assert!(!off.would_enable("mecha_mod_lock", &Level::ERROR));
    }
}
