//! Payload types of every opcode, grouped by family. Field order is wire order.

mod control;
mod link;
mod state;

pub use control::*;
pub use link::*;
pub use state::*;
