//! configuration calls of the Rust client (async and blocking), including watches.
