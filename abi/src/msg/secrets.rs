//! Payloads of the secrets family (`0x06`).
