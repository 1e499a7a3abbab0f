//! Lets `?` turn the errors of the SDK's layers (metadata, servers, embedded
//! files) into a capability's own error, through the one [`DriverError`]
//! every capability shares.
//!
//! [`DriverError`]: crate::DriverError

/// Implements `From` for the SDK's layer errors on a capability error that
/// wraps [`DriverError`](crate::DriverError) (that is, implements
/// `From<DriverError>`, as a `#[from]` field gives it): `MetadataError`, and,
/// with the SDK features that provide them, `remote::RemoteError` and
/// `embedded::Error`, each converted through `DriverError`.
///
/// `?` applies one conversion only, so without these a driver returning its
/// capability's error would have to name `DriverError` at every `?` on a
/// metadata read, a server call or an embedded database. The conversions are
/// written once, here; a capability asks for them with one line:
///
/// ```ignore
/// mecha_module::wraps_driver_error!(StoreError);
/// ```
#[macro_export]
macro_rules! wraps_driver_error {
    ($error:ty) => {
        $crate::__from_through_driver_error!($error, $crate::metadata::MetadataError);
        $crate::__wraps_remote_error!($error);
        $crate::__wraps_embedded_error!($error);
    };
}

/// One conversion of [`wraps_driver_error!`]: `$source` into `$error`,
/// through `DriverError`.
#[doc(hidden)]
#[macro_export]
macro_rules! __from_through_driver_error {
    ($error:ty, $source:ty) => {
        impl ::core::convert::From<$source> for $error {
            fn from(e: $source) -> Self {
                Self::from($crate::DriverError::from(e))
            }
        }
    };
}

/// The `RemoteError` part of [`wraps_driver_error!`], present when the SDK
/// is built with a networked backend.
#[cfg(any(feature = "redis", feature = "postgres", feature = "etcd"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __wraps_remote_error {
    ($error:ty) => {
        $crate::__from_through_driver_error!($error, $crate::remote::RemoteError);
    };
}

/// Without a networked backend there is no `RemoteError` to convert.
#[cfg(not(any(feature = "redis", feature = "postgres", feature = "etcd")))]
#[doc(hidden)]
#[macro_export]
macro_rules! __wraps_remote_error {
    ($error:ty) => {};
}

/// The `embedded::Error` part of [`wraps_driver_error!`], present when the
/// SDK is built with the `redb` feature.
#[cfg(feature = "redb")]
#[doc(hidden)]
#[macro_export]
macro_rules! __wraps_embedded_error {
    ($error:ty) => {
        $crate::__from_through_driver_error!($error, $crate::embedded::Error);
    };
}

/// Without the `redb` feature there is no `embedded::Error` to convert.
#[cfg(not(feature = "redb"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __wraps_embedded_error {
    ($error:ty) => {};
}
