//! pubsub calls of the Rust client (async and blocking), including subscriptions.
