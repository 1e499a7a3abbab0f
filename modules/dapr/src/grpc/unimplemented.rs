//! Every method of Dapr's `Dapr` service that the personality does not
//! serve, answered UNIMPLEMENTED with a message that names it. A method moves
//! out of this list when `service.rs` implements it.

/// Expands to trait methods that answer UNIMPLEMENTED, inside `impl Dapr`.
/// The methods are written in the form `#[async_trait]` gives the trait's
/// (a boxed future), because that attribute rewrites the impl before this
/// macro expands.
macro_rules! unimplemented_methods {
    ($($name:ident($req:ty) -> $resp:ty;)*) => {
        $(
            fn $name<'life0, 'async_trait>(
                &'life0 self,
                _request: tonic::Request<$req>,
            ) -> ::std::pin::Pin<Box<
                dyn ::std::future::Future<Output = Result<tonic::Response<$resp>, tonic::Status>>
                    + Send
                    + 'async_trait,
            >>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin(async move { Err(crate::grpc::unimplemented(stringify!($name))) })
            }
        )*
    };
}

pub(crate) use unimplemented_methods;
