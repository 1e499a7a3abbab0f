//! A module's configured components (stores), by name, the first being the
//! default that requests naming no store use.

use std::fmt::Display;

use mecha_abi::msg::ComponentSpec;
use mecha_abi::Status;

use crate::{InitError, Reply};

/// The components of one module, in configuration order.
pub struct Components<T> {
    /// What one component is, for messages: "state store", "sequencer".
    noun: &'static str,
    /// (component name, what was opened from its spec).
    entries: Vec<(String, T)>,
}

impl<T> Components<T> {
    /// Opens every component of a handshake with `open`. No component at
    /// all, or one that fails to open, fails the module's start, with a
    /// message naming the component. `noun` says what a component is, for
    /// this and later messages ("state store").
    pub fn open<E: Display>(
        specs: &[ComponentSpec],
        noun: &'static str,
        mut open: impl FnMut(&ComponentSpec) -> Result<T, E>,
    ) -> Result<Self, InitError> {
        if specs.is_empty() {
            return Err(InitError(format!("no {noun} is configured")));
        }
        let mut entries = Vec::with_capacity(specs.len());
        for spec in specs {
            let opened = open(spec)
                .map_err(|e| InitError(format!("cannot open {noun} {:?}: {e}", spec.name)))?;
            entries.push((spec.name.clone(), opened));
        }
        Ok(Self { noun, entries })
    }

    /// The component a request names, with its name: the first one for
    /// `""`, else the one called `name`, else the INVALID_ARGUMENT reply.
    pub fn entry(&self, name: &str) -> Result<(&str, &T), Reply> {
        let found = if name.is_empty() {
            self.entries.first()
        } else {
            self.entries.iter().find(|(n, _)| n == name)
        };
        found.map(|(n, t)| (n.as_str(), t)).ok_or_else(|| {
            Reply::error(
                Status::InvalidArgument,
                format!("no {} named {name:?} is configured", self.noun),
            )
        })
    }

    /// The component a request names; see [`Self::entry`].
    pub fn by_name(&self, name: &str) -> Result<&T, Reply> {
        self.entry(name).map(|(_, t)| t)
    }

    /// Every component with its name, in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.entries.iter().map(|(n, t)| (n.as_str(), t))
    }
}

impl<T> std::fmt::Debug for Components<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(n, _)| n))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> ComponentSpec {
        ComponentSpec {
            name: name.to_owned(),
            kind: "x.memory".to_owned(),
            metadata: Vec::new(),
        }
    }

    fn message(reply: &Reply) -> String {
        mecha_abi::decode::<mecha_abi::msg::ErrorBody>(&reply.payload)
            .expect("an error body")
            .message
    }

    #[test]
    fn the_empty_name_is_the_first_component() {
        let c = Components::open(&[spec("a"), spec("b")], "thing store", |s| {
            Ok::<_, String>(s.name.len() + usize::from(s.name == "b"))
        })
        .expect("open");
        assert_eq!(c.by_name(""), Ok(&1));
        assert_eq!(c.entry("b"), Ok(("b", &2)));
        let refused = c.by_name("nope").expect_err("unknown");
        assert_eq!(refused.status, Status::InvalidArgument);
        assert_eq!(
            message(&refused),
            "no thing store named \"nope\" is configured"
        );
        assert_eq!(c.iter().map(|(n, _)| n).collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn opening_fails_without_components_or_on_a_bad_one() {
        let none = Components::open(&[], "thing store", |_| Ok::<(), String>(()));
        assert_eq!(none.unwrap_err().0, "no thing store is configured");
        let bad = Components::open(&[spec("a")], "thing store", |_| Err::<(), _>("broken"));
        assert_eq!(bad.unwrap_err().0, "cannot open thing store \"a\": broken");
    }
}
