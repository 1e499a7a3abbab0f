//! Payloads of the sequencer family (`0x04`).
