//! The type of the gRPC server streams the personality answers with.

use std::pin::Pin;

use futures_util::Stream;

/// A server stream of `T`s.
pub type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send + 'static>>;
