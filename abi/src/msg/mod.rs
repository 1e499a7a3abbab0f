//! Payload types of every opcode, grouped by family. Field order is wire order.

mod bindings;
mod config;
mod control;
mod invoke;
mod link;
mod lock;
mod pubsub;
mod secrets;
mod sequencer;
mod state;

pub use bindings::*;
pub use config::*;
pub use control::*;
pub use invoke::*;
pub use link::*;
pub use lock::*;
pub use pubsub::*;
pub use secrets::*;
pub use sequencer::*;
pub use state::*;
