//! Payloads of the pubsub family (`0x02`).
