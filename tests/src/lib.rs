//! # stele-testkit
//!
//! Multi-process testing of Stele: a launcher for real node processes on loopback
//! addresses, fault injection (kill, pause, restart, isolate), a load generator that
//! signs ahead of the run, checkers (no fork, no lost acknowledged transaction, balances
//! conserved) and the `stele-bench` benchmark.
//!
//! It fills in with the node issue; the foundation's tests live in each crate's own
//! `tests/` directory.
