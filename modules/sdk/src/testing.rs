//! Helpers for drivers' tests of metadata checks: a component built from
//! pairs, opened inside a runtime as a module's `init` does, and the check
//! that a bad one is refused naming the component and the field.

use std::fmt::Display;

use mecha_abi::msg::ComponentSpec;

/// Component `name` of type `kind` with `metadata`.
pub fn spec(name: &str, kind: &str, metadata: &[(&str, &str)]) -> ComponentSpec {
    ComponentSpec {
        name: name.to_owned(),
        kind: kind.to_owned(),
        metadata: metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

/// Runs `open` inside a Tokio runtime, as a module opens its components at
/// init (networked drivers prepare their connections on the runtime).
pub fn open_in_runtime<T>(open: impl FnOnce() -> T) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    open()
}

/// Asserts that opening `spec` failed with a configuration error of its
/// component whose reason mentions `mentions`. `config` picks the component
/// and reason out of the driver's error when it is a configuration error.
pub fn assert_refused<T, E: Display>(
    spec: &ComponentSpec,
    opened: Result<T, E>,
    config: fn(&E) -> Option<(&str, &str)>,
    mentions: &str,
) {
    match opened {
        Err(e) => match config(&e) {
            Some((component, reason)) => {
                assert_eq!(component, spec.name);
                assert!(
                    reason.contains(mentions),
                    "{reason:?} mentions {mentions:?}"
                );
            }
            None => panic!("{spec:?}: expected a configuration error, got {e}"),
        },
        Ok(_) => panic!("{spec:?} was accepted"),
    }
}
