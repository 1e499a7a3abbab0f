//! Payloads of the configuration family (`0x05`).
