//! Access control per callee app id, in the spirit of Dapr's `accessControl`:
//! which caller app ids, tenants and nodes may call which methods. Checked on
//! the callee's node, so every node enforces its own apps' policies.

use serde::Deserialize;

/// Allow or deny.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The call proceeds.
    #[default]
    Allow,
    /// The call is refused with PERMISSION_DENIED.
    Deny,
}

/// The `accessControl` metadata item.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessControl {
    /// For callee app ids without a policy (default allow).
    #[serde(default)]
    pub default_action: Action,
    /// One policy per callee app id.
    #[serde(default)]
    pub policies: Vec<Policy>,
}

/// The rules guarding one callee app id.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Policy {
    /// The callee.
    pub app_id: String,
    /// When no rule matches; default: the global `defaultAction`.
    pub default_action: Option<Action>,
    /// Rules, first match wins.
    #[serde(default)]
    pub callers: Vec<CallerRule>,
}

/// A rule: every field that is set must match the caller.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CallerRule {
    /// The caller's verified app id.
    pub app_id: Option<String>,
    /// The caller's tenant.
    pub tenant: Option<String>,
    /// The caller's node.
    pub node: Option<String>,
    /// Methods the rule covers; absent or empty = every method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// What happens when the rule matches.
    pub action: Action,
}

/// Who is calling.
pub struct Caller<'a> {
    /// Verified app id, empty when anonymous.
    pub app_id: &'a str,
    /// Tenant on its node.
    pub tenant: &'a str,
    /// Its node.
    pub node: &'a str,
}

impl AccessControl {
    /// `Ok` when `caller` may call `method` of `callee`; else why not.
    pub fn check(&self, callee: &str, method: &str, caller: &Caller<'_>) -> Result<(), String> {
        let (action, why) = match self.policies.iter().find(|p| p.app_id == callee) {
            None => (self.default_action, "the default action"),
            Some(p) => match p.callers.iter().find(|r| r.matches(method, caller)) {
                Some(rule) => (rule.action, "a caller rule"),
                None => (
                    p.default_action.unwrap_or(self.default_action),
                    "the app's default action",
                ),
            },
        };
        match action {
            Action::Allow => Ok(()),
            Action::Deny => Err(format!(
                "caller app {:?} (tenant {:?}, node {:?}) may not call method {method:?} of app {callee:?}: denied by {why} of its accessControl policy",
                caller.app_id, caller.tenant, caller.node
            )),
        }
    }
}

impl CallerRule {
    fn matches(&self, method: &str, caller: &Caller<'_>) -> bool {
        let is = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        is(&self.app_id, caller.app_id)
            && is(&self.tenant, caller.tenant)
            && is(&self.node, caller.node)
            && (self.methods.is_empty() || self.methods.iter().any(|m| m == method || m == "*"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_rule_wins_then_the_defaults() {
        let acl: AccessControl = serde_json::from_str(
            r#"{"defaultAction":"allow","policies":[{"appId":"billing","defaultAction":"deny",
               "callers":[{"appId":"web","methods":["charge"],"action":"allow"},
                          {"tenant":"ops","action":"allow"}]}]}"#,
        )
        .unwrap();
        let web = Caller {
            app_id: "web",
            tenant: "t",
            node: "n",
        };
        let ops = Caller {
            app_id: "",
            tenant: "ops",
            node: "n",
        };
        assert!(acl.check("billing", "charge", &web).is_ok());
        assert!(acl.check("billing", "refund", &web).is_err());
        assert!(acl.check("billing", "refund", &ops).is_ok());
        assert!(acl.check("other", "x", &web).is_ok());
    }
}
