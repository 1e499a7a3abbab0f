//! Fuzz target `payloads`: arbitrary bytes through `mecha_abi::decode` for every
//! payload type of `abi/src/msg/*.rs` (requests, replies, pushes and the types
//! nested in them). The first input byte picks the type, the rest is the payload.
//!
//! Properties: decoding never panics, never allocates beyond the codec's bound
//! (libFuzzer's malloc limit catches that), and the encoding is canonical —
//! whatever decodes re-encodes to exactly the same bytes and decodes back to an
//! equal value. Canonical matters because the daemon forwards payload bytes
//! untouched: two encodings of one value would let the daemon's view (for
//! example a quota on `payload_len`) and a module's view disagree.
#![no_main]

use std::any::type_name;
use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use mecha_abi::msg::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Decodes `bytes` as `T`; if that succeeds, checks the canonical round trip.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(bytes: &[u8]) {
    let Ok(value) = mecha_abi::decode::<T>(bytes) else {
        return;
    };
    let again = mecha_abi::encode(&value)
        .unwrap_or_else(|e| panic!("a decoded {} does not encode: {e}", type_name::<T>()));
    assert!(
        again == bytes,
        "{} has a second encoding: decoded {} bytes, re-encoded {} bytes",
        type_name::<T>(),
        bytes.len(),
        again.len()
    );
    let back = mecha_abi::decode::<T>(&again)
        .unwrap_or_else(|e| panic!("a re-encoded {} does not decode: {e}", type_name::<T>()));
    assert!(
        back == value,
        "{} changed in a round trip",
        type_name::<T>()
    );
}

/// Every payload type, grouped by family in the order of `abi/src/msg/`.
/// `.ci/fuzz.sh` checks that each `pub struct` / `pub enum` there is listed.
const TYPES: &[fn(&[u8])] = &[
    // bindings.rs
    round_trip::<InvokeBindingRequest>,
    round_trip::<InvokeBindingReply>,
    round_trip::<BindingSubscribeRequest>,
    round_trip::<BindingSubscribeReply>,
    round_trip::<BindingEvent>,
    round_trip::<BindingAckRequest>,
    // config.rs
    round_trip::<ConfigItem>,
    round_trip::<ConfigGetRequest>,
    round_trip::<ConfigGetReply>,
    round_trip::<ConfigSubscribeRequest>,
    round_trip::<ConfigUpdate>,
    round_trip::<ConfigSetItem>,
    round_trip::<ConfigSetRequest>,
    round_trip::<ConfigSetReply>,
    // control.rs
    round_trip::<ErrorBody>,
    round_trip::<Hello>,
    round_trip::<HelloReply>,
    round_trip::<StatusReply>,
    round_trip::<ModuleStatus>,
    round_trip::<ModuleRestartRequest>,
    round_trip::<ModuleRestartReply>,
    round_trip::<DaemonUpgradeRequest>,
    round_trip::<DaemonUpgradeReply>,
    round_trip::<ReloadReply>,
    round_trip::<StreamCancel>,
    // invoke.rs
    round_trip::<RegisterRequest>,
    round_trip::<RegisterReply>,
    round_trip::<InvokeRequest>,
    round_trip::<InvokeReply>,
    round_trip::<InvokeCall>,
    round_trip::<AppEntry>,
    round_trip::<AppsReply>,
    round_trip::<LinkDeliver>,
    round_trip::<RouteGrant>,
    round_trip::<RouteRevoke>,
    round_trip::<PeerHello>,
    round_trip::<PeerAnnounce>,
    // link.rs
    round_trip::<ComponentSpec>,
    round_trip::<LinkHello>,
    round_trip::<LinkReady>,
    // lock.rs
    round_trip::<TryLockRequest>,
    round_trip::<TryLockReply>,
    round_trip::<UnlockRequest>,
    round_trip::<UnlockStatus>,
    round_trip::<UnlockReply>,
    round_trip::<ExtendLockRequest>,
    round_trip::<ExtendLockReply>,
    // pubsub.rs
    round_trip::<PublishRequest>,
    round_trip::<PublishReply>,
    round_trip::<SubscribeRequest>,
    round_trip::<SubscribeReply>,
    round_trip::<Delivery>,
    round_trip::<AckItem>,
    round_trip::<AckRequest>,
    round_trip::<AckReply>,
    // secrets.rs
    round_trip::<SecretGetRequest>,
    round_trip::<SecretReply>,
    round_trip::<SecretBulkGetRequest>,
    round_trip::<SecretBulkReply>,
    // sequencer.rs
    round_trip::<NextIdRequest>,
    round_trip::<NextIdReply>,
    // state.rs
    round_trip::<StateEntry>,
    round_trip::<SetItem>,
    round_trip::<DeleteItem>,
    round_trip::<GetRequest>,
    round_trip::<SetRequest>,
    round_trip::<SetReply>,
    round_trip::<DeleteRequest>,
    round_trip::<DeleteReply>,
    round_trip::<BulkGetRequest>,
    round_trip::<BulkGetItem>,
    round_trip::<BulkGetReply>,
    round_trip::<BulkSetRequest>,
    round_trip::<TxOp>,
    round_trip::<TransactRequest>,
    round_trip::<TransactReply>,
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    TYPES[usize::from(pick) % TYPES.len()](payload);
});
