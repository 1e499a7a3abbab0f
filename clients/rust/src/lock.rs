//! lock calls of the Rust client (async and blocking).
