//! Payloads of the lock family (`0x03`).
