//! End-to-end tests of mqlink, in `tests/tests/`: whole deployments from
//! the files an operator writes. From issue #3 on this crate also starts
//! real Mosquitto brokers and real agents on 127.0.0.1; helpers for that
//! will live here.
