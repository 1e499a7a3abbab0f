//! The sequencer module: per-key strictly increasing ids that never go
//! backwards, served from the configured sequencers (`sequencer.memory`,
//! `sequencer.redb`, `sequencer.redis`, `sequencer.postgresql`).

pub mod drivers;
mod segments;

use std::path::Path;

use mecha_abi::msg::{NextIdReply, NextIdRequest, SEQ_MAX_COUNT};
use mecha_module::{Components, Ctx, InitError, LinkHello, Module, Opcode, Reply, Status};

use drivers::{SeqError, Sequencer};

/// The sequencer module: one or more named sequencers, the first being the
/// default.
pub struct SequencerModule {
    stores: Components<Box<dyn Sequencer>>,
}

impl Module for SequencerModule {
    const NAME: &'static str = "sequencer";

    async fn init(hello: LinkHello) -> Result<Self, InitError> {
        let data_dir = Path::new(&hello.data_dir);
        let stores = Components::open_scoped(&hello.components, "sequencer", |spec| {
            drivers::open(spec, data_dir)
        })?;
        Ok(Self { stores })
    }

    async fn handle(&self, ctx: Ctx, payload: &[u8]) -> Reply {
        let result = match ctx.opcode {
            Opcode::SEQ_NEXT => self.next(&ctx.tenant, payload).await,
            other => Err(Reply::error(
                Status::UnknownOpcode,
                format!("the sequencer module does not serve opcode {other}"),
            )),
        };
        result.unwrap_or_else(|reply| reply)
    }
}

/// Every handler yields the reply to send, success or failure.
type Handled = Result<Reply, Reply>;

impl SequencerModule {
    async fn next(&self, tenant: &str, payload: &[u8]) -> Handled {
        let req: NextIdRequest = Reply::decode(payload)?;
        Reply::valid_name("key", &req.key)?;
        // The drivers rely on this range: `Sequencer::next_ids` documents that
        // they never see a count of 0 or above the cap.
        if req.count == 0 || req.count > SEQ_MAX_COUNT {
            return Err(Reply::error(
                Status::InvalidArgument,
                format!(
                    "count of key {:?} must be from 1 to {SEQ_MAX_COUNT}, not {}",
                    req.key, req.count
                ),
            ));
        }
        let (store, tenant) = self.stores.scoped(&req.store, tenant)?;
        let first = store
            .next_ids(&tenant, &req.key, req.count)
            .await
            .map_err(seq_error)?;
        Ok(Reply::ok(&NextIdReply {
            first,
            count: req.count,
        }))
    }
}

/// The answer for a failed driver operation: the sequencer's own outcome
/// here, the shared failures as the SDK maps them.
fn seq_error(e: SeqError) -> Reply {
    let status = match &e {
        SeqError::Exhausted { .. } => Status::ResourceExhausted,
        SeqError::Driver(driver) => driver.status(),
    };
    Reply::error(status, e.to_string())
}

#[cfg(test)]
mod tests {
    use mecha_abi::msg::{ComponentSpec, ErrorBody};

    use super::*;

    fn module() -> SequencerModule {
        let component = |name: &str| ComponentSpec {
            name: name.to_owned(),
            kind: "sequencer.memory".to_owned(),
            metadata: Vec::new(),
        };
        let hello = LinkHello {
            version: 1,
            module: "sequencer".to_owned(),
            data_dir: std::env::temp_dir().to_string_lossy().into_owned(),
            components: vec![component("first"), component("second")],
        };
        block(SequencerModule::init(hello)).expect("init")
    }

    fn block<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(future)
    }

    fn call(m: &SequencerModule, tenant: &str, opcode: Opcode, payload: &[u8]) -> Reply {
        block(m.handle(Ctx::detached(tenant, opcode), payload))
    }

    fn next(m: &SequencerModule, store: &str, key: &str, count: u32) -> Reply {
        let req = NextIdRequest {
            store: store.to_owned(),
            key: key.to_owned(),
            count,
        };
        let payload = mecha_abi::encode(&req).expect("encode");
        call(m, "uid:1", Opcode::SEQ_NEXT, &payload)
    }

    fn ok(reply: Reply) -> NextIdReply {
        assert_eq!(reply.status, Status::Ok, "{}", message(&reply));
        mecha_abi::decode(&reply.payload).expect("a NextIdReply")
    }

    fn message(reply: &Reply) -> String {
        mecha_abi::decode::<ErrorBody>(&reply.payload)
            .map(|b| b.message)
            .unwrap_or_default()
    }

    fn invalid(reply: Reply, mentions: &str) {
        assert_eq!(reply.status, Status::InvalidArgument);
        let message = message(&reply);
        assert!(
            message.contains(mentions),
            "{message:?} mentions {mentions:?}"
        );
    }

    #[test]
    fn the_empty_store_name_is_the_first_component() {
        let m = module();
        assert_eq!(ok(next(&m, "", "k", 2)), NextIdReply { first: 1, count: 2 });
        assert_eq!(
            ok(next(&m, "first", "k", 1)),
            NextIdReply { first: 3, count: 1 }
        );
        assert_eq!(
            ok(next(&m, "second", "k", 1)),
            NextIdReply { first: 1, count: 1 }
        );
    }

    #[test]
    fn bad_requests_are_invalid_arguments() {
        let m = module();
        invalid(next(&m, "", "", 1), "key");
        invalid(next(&m, "", "k", 0), "count");
        invalid(next(&m, "", "k", SEQ_MAX_COUNT + 1), "count");
        invalid(next(&m, "nope", "k", 1), "nope");
        let reply = call(&m, "uid:1", Opcode::SEQ_NEXT, &[1, 2, 3]);
        assert_eq!(reply.status, Status::InvalidArgument);
        // None of the refused requests consumed an id.
        assert_eq!(ok(next(&m, "", "k", SEQ_MAX_COUNT)).first, 1);
    }

    #[test]
    fn other_opcodes_are_unknown() {
        let reply = call(&module(), "uid:1", Opcode::STATE_GET, &[]);
        assert_eq!(reply.status, Status::UnknownOpcode);
    }
}
