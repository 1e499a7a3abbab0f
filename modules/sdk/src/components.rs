//! A module's configured components (stores), by name, the first being the
//! default that requests naming no store use, and the tenant scope each
//! request works in: the caller's own tenant, or the one namespace of a
//! component shared by named tenants (`sharedTenants`). A component with
//! Dapr `scopes` serves only the tenants the daemon says they admit
//! ([`SCOPE_TENANTS`]).

use std::borrow::Cow;
use std::fmt::Display;

use mecha_abi::msg::ComponentSpec;
use mecha_abi::Status;
use mecha_metadata::SCOPE_TENANTS;

use crate::{InitError, Reply};

/// The metadata field that shares a component: a comma-separated list of
/// tenant names. Those tenants then all work in one namespace of that
/// component (their keys, topics, locks and sequences are the same ones), and
/// every other tenant is refused PERMISSION_DENIED. Without it, every tenant
/// has its own namespace, as always. The field is the SDK's: it is taken out
/// of the metadata before a driver sees it.
pub const SHARED_TENANTS: &str = "sharedTenants";

/// The components of one module, in configuration order.
pub struct Components<T> {
    /// What one component is, for messages: "state store", "sequencer".
    noun: &'static str,
    /// (component name, what was opened from its spec).
    entries: Vec<(String, T)>,
    /// Per entry, the member tenants when the component is shared.
    shared: Vec<Option<Vec<String>>>,
    /// Per entry, the tenants its scopes admit, when it has scopes.
    admitted: Vec<Option<Vec<String>>>,
}

impl<T> Components<T> {
    /// Opens every component of a handshake with `open`. No component at
    /// all, or one that fails to open, fails the module's start, with a
    /// message naming the component. `noun` says what a component is, for
    /// this and later messages ("state store"). Components opened this way
    /// cannot be shared: a `sharedTenants` field reaches the driver, which
    /// refuses it as unknown. Modules whose data is scoped by tenant use
    /// [`Self::open_scoped`] instead.
    pub fn open<E: Display>(
        specs: &[ComponentSpec],
        noun: &'static str,
        open: impl FnMut(&ComponentSpec) -> Result<T, E>,
    ) -> Result<Self, InitError> {
        Self::open_with(specs, noun, false, open)
    }

    /// Like [`Self::open`], and a component may be shared by the tenants its
    /// `sharedTenants` field names (see [`SHARED_TENANTS`]); requests then
    /// find their scope with [`Self::scoped`].
    pub fn open_scoped<E: Display>(
        specs: &[ComponentSpec],
        noun: &'static str,
        open: impl FnMut(&ComponentSpec) -> Result<T, E>,
    ) -> Result<Self, InitError> {
        Self::open_with(specs, noun, true, open)
    }

    fn open_with<E: Display>(
        specs: &[ComponentSpec],
        noun: &'static str,
        sharing: bool,
        mut open: impl FnMut(&ComponentSpec) -> Result<T, E>,
    ) -> Result<Self, InitError> {
        if specs.is_empty() {
            return Err(InitError(format!("no {noun} is configured")));
        }
        let mut entries = Vec::with_capacity(specs.len());
        let mut shared = Vec::with_capacity(specs.len());
        let mut admitted = Vec::with_capacity(specs.len());
        for spec in specs {
            let (spec, tenants) = split_scopes(spec);
            let (spec, members) = if sharing {
                split_sharing(&spec)
                    .map_err(|e| InitError(format!("cannot open {noun} {:?}: {e}", spec.name)))?
            } else {
                (spec, None)
            };
            let opened = open(&spec)
                .map_err(|e| InitError(format!("cannot open {noun} {:?}: {e}", spec.name)))?;
            entries.push((spec.name.clone(), opened));
            shared.push(members);
            admitted.push(tenants);
        }
        Ok(Self {
            noun,
            entries,
            shared,
            admitted,
        })
    }

    /// The component a request names, and the tenant scope the request
    /// works in there: `tenant` itself, or `@shared/<component>` when the
    /// component is shared and `tenant` is a member. A tenant that is not a
    /// member of a shared component is refused PERMISSION_DENIED, naming the
    /// rule.
    pub fn scoped<'t>(&self, name: &str, tenant: &'t str) -> Result<(&T, Cow<'t, str>), Reply> {
        let index = self.admit(name, tenant)?;
        let (component, value) = &self.entries[index];
        match &self.shared[index] {
            None => Ok((value, Cow::Borrowed(tenant))),
            Some(members) if members.iter().any(|m| m == tenant) => {
                Ok((value, Cow::Owned(format!("@shared/{component}"))))
            }
            Some(members) => Err(Reply::error(
                Status::PermissionDenied,
                format!(
                    "{} {component:?} is shared by tenants {members:?} ({SHARED_TENANTS}); \
                     tenant {tenant:?} is not one of them",
                    self.noun
                ),
            )),
        }
    }

    /// The index of the component `name` names, if `tenant` may use it:
    /// a component with scopes refuses the tenants they do not admit with
    /// PERMISSION_DENIED.
    fn admit(&self, name: &str, tenant: &str) -> Result<usize, Reply> {
        let index = self.index(name)?;
        match &self.admitted[index] {
            Some(tenants) if !tenants.iter().any(|t| t == tenant) => Err(Reply::error(
                Status::PermissionDenied,
                format!(
                    "{} {:?} is limited by its scopes to the apps they name; tenant {tenant:?} \
                     holds none of those app ids (a tenant holds the appIds its rule lists)",
                    self.noun, self.entries[index].0
                ),
            )),
            _ => Ok(index),
        }
    }

    fn index(&self, name: &str) -> Result<usize, Reply> {
        let found = if name.is_empty() {
            (!self.entries.is_empty()).then_some(0)
        } else {
            self.entries.iter().position(|(n, _)| n == name)
        };
        found.ok_or_else(|| {
            Reply::error(
                Status::InvalidArgument,
                format!("no {} named {name:?} is configured", self.noun),
            )
        })
    }

    /// The component a request from `tenant` names, with its name: the
    /// first one for `""`, else the one called `name`, else the
    /// INVALID_ARGUMENT reply; PERMISSION_DENIED when its scopes do not
    /// admit `tenant`.
    pub fn entry(&self, name: &str, tenant: &str) -> Result<(&str, &T), Reply> {
        let (n, t) = &self.entries[self.admit(name, tenant)?];
        Ok((n.as_str(), t))
    }

    /// Whether component `name` has Dapr `scopes` (which
    /// [`Self::entry`] and [`Self::scoped`] enforce), for a module whose
    /// components deny by default unless something admits tenants.
    pub fn has_scopes(&self, name: &str) -> bool {
        self.entries
            .iter()
            .zip(&self.admitted)
            .any(|((n, _), admitted)| n == name && admitted.is_some())
    }

    /// Every component with its name, in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.entries.iter().map(|(n, t)| (n.as_str(), t))
    }
}

/// Takes the daemon's [`SCOPE_TENANTS`] out of a spec: the spec a driver
/// opens, and the admitted tenants if the component has scopes.
fn split_scopes(spec: &ComponentSpec) -> (ComponentSpec, Option<Vec<String>>) {
    let mut rest = spec.clone();
    let mut admitted = None;
    rest.metadata.retain(|(field, value)| {
        if field != SCOPE_TENANTS {
            return true;
        }
        let tenants = value
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        admitted.get_or_insert_with(Vec::new).extend(tenants);
        false
    });
    (rest, admitted)
}

/// Takes `sharedTenants` out of a spec: the spec a driver opens, and the
/// member tenants if the field is there.
fn split_sharing(spec: &ComponentSpec) -> Result<(ComponentSpec, Option<Vec<String>>), String> {
    let mut rest = spec.clone();
    let mut members = None;
    let mut kept = Vec::with_capacity(spec.metadata.len());
    for (field, value) in &spec.metadata {
        if !field.eq_ignore_ascii_case(SHARED_TENANTS) {
            kept.push((field.clone(), value.clone()));
            continue;
        }
        if members.is_some() {
            return Err(format!("metadata field {SHARED_TENANTS:?} is given twice"));
        }
        let names: Vec<String> = value
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        if names.is_empty() {
            return Err(format!(
                "metadata field {SHARED_TENANTS:?} names no tenant (remove it to keep tenants apart)"
            ));
        }
        members = Some(names);
    }
    rest.metadata = kept;
    Ok((rest, members))
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
    fn a_shared_component_scopes_members_together_and_refuses_others() {
        let mut shared = spec("orders");
        shared.metadata = vec![
            ("SharedTenants".to_owned(), "shop, billing".to_owned()),
            ("path".to_owned(), "x".to_owned()),
        ];
        let c = Components::open_scoped(&[spec("private"), shared], "thing store", |s| {
            // The driver never sees the SDK's field.
            assert!(s.metadata.iter().all(|(k, _)| k != "SharedTenants"));
            Ok::<_, String>(s.metadata.len())
        })
        .expect("open");
        let (opened, scope) = c.scoped("orders", "shop").expect("a member");
        assert_eq!((*opened, scope.as_ref()), (1, "@shared/orders"));
        assert_eq!(
            c.scoped("orders", "billing").expect("a member").1,
            "@shared/orders"
        );
        let refused = c.scoped("orders", "uid:1000").expect_err("not a member");
        assert_eq!(refused.status, Status::PermissionDenied);
        let text = message(&refused);
        assert!(
            text.contains("sharedTenants") && text.contains("uid:1000"),
            "{text}"
        );
        assert_eq!(
            c.scoped("private", "uid:1000").expect("own scope").1,
            "uid:1000"
        );
        assert_eq!(c.scoped("", "shop").expect("default").1, "shop");
    }

    #[test]
    fn an_empty_member_list_fails_the_start() {
        let mut shared = spec("orders");
        shared.metadata = vec![("sharedTenants".to_owned(), " , ".to_owned())];
        let e = Components::open_scoped(&[shared], "thing store", |_| Ok::<_, String>(()))
            .expect_err("refused");
        assert!(e.0.contains("names no tenant"), "{}", e.0);
    }

    #[test]
    fn scopes_admit_only_the_tenants_the_daemon_names() {
        let mut scoped = spec("orders");
        scoped.metadata = vec![
            ("@tenants".to_owned(), "shop, billing".to_owned()),
            ("other".to_owned(), "kept".to_owned()),
        ];
        let mut nobody = spec("sealed");
        nobody.metadata = vec![("@tenants".to_owned(), String::new())];
        let c = Components::open_scoped(&[scoped, nobody, spec("open")], "thing store", |s| {
            // The driver never sees the daemon's field.
            assert!(s.metadata.iter().all(|(f, _)| f != "@tenants"), "{s:?}");
            Ok::<_, String>(s.metadata.len())
        })
        .expect("open");
        assert_eq!(c.entry("orders", "shop"), Ok(("orders", &1)));
        assert_eq!(c.scoped("orders", "billing").map(|(v, _)| *v), Ok(1));
        for (name, tenant) in [("orders", "uid:1000"), ("sealed", "shop")] {
            let refused = c.entry(name, tenant).expect_err("not admitted");
            assert_eq!(refused.status, Status::PermissionDenied);
            assert!(
                message(&refused).contains("scopes"),
                "{}",
                message(&refused)
            );
            let refused = c
                .scoped(name, tenant)
                .map(|_| ())
                .expect_err("not admitted");
            assert_eq!(refused.status, Status::PermissionDenied);
        }
        assert!(c.entry("open", "anyone").is_ok());
    }

    #[test]
    fn the_empty_name_is_the_first_component() {
        let c = Components::open(&[spec("a"), spec("b")], "thing store", |s| {
            Ok::<_, String>(s.name.len() + usize::from(s.name == "b"))
        })
        .expect("open");
        assert_eq!(c.entry("", "t"), Ok(("a", &1)));
        assert_eq!(c.entry("b", "t"), Ok(("b", &2)));
        let refused = c.entry("nope", "t").expect_err("unknown");
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
