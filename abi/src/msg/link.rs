//! Payloads exchanged only between `mechad` and a module over the module link.

use serde::{Deserialize, Serialize};

/// One configured component handed to a module at handshake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentSpec {
    /// `metadata.name`: the name applications use to pick the component.
    pub name: String,
    /// `spec.type`, e.g. `state.redb`.
    pub kind: String,
    /// `spec.metadata` as name/value pairs, in file order.
    pub metadata: Vec<(String, String)>,
}

/// LINK_HELLO request: everything a module needs to start serving.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkHello {
    /// The ABI version of the link.
    pub version: u8,
    /// The module's name, e.g. `state`.
    pub module: String,
    /// A directory the module owns for durable data.
    pub data_dir: String,
    /// The components this module serves; the first one is the default.
    pub components: Vec<ComponentSpec>,
}

/// LINK_HELLO response: the module is initialised and ready.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkReady {
    /// The module's name, echoed.
    pub module: String,
    /// The module binary's software version.
    pub version: String,
}
