//! MQTT 5 on the wire, for the agent's own session with its broker
//! ([`crate::broker`]): [`codec`] encodes what a client sends and decodes
//! what a server sends, sans-IO.

pub mod codec;
