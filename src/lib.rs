//! fepd — the front-end processor agent of the livelihood-fund supervision platform.
//!
//! Data flows `source → mapping → schema validation → spool → sink` (see
//! `../shared/design.md`):
//!
//! - [`config`]: `fepd.toml` and `connectors.d/*.toml`, validated once at load;
//! - [`source`]: drivers (SQLite, …) and the cursor engine they share;
//! - [`mapping`]: column → field mapping, transforms, code tables;
//! - [`schema`]: the ten unified record types and their rules;
//! - [`spool`]: the durable local queue (SQLite, WAL, `synchronous=FULL`);
//! - [`envelope`]: the `fep.batch/1` message contract and hash chain;
//! - [`sink`]: delivery (dir, AMQP);
//! - [`control`]: heartbeats and reject reports for the platform;
//! - [`pipeline`]: one pass of a connector, and delivery beside it;
//! - [`verify`]: the platform-side check of delivered batches (a directory or a queue);
//! - [`relay`]: dir-sink files across a one-way gateway into the queue;
//! - [`cli`]: the `fepd` command line.

pub mod cli;
pub mod config;
pub mod control;
pub mod crashpoint;
pub mod demo;
pub mod envelope;
pub mod keys;
pub mod mapping;
pub mod pipeline;
pub mod relay;
pub mod retry;
pub mod schema;
pub mod sink;
pub mod source;
pub mod spool;
pub mod value;
pub mod verify;
