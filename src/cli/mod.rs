//! The subcommands of the gatehouse command line, one file per group; the
//! flags themselves are in [`args`].

mod args;
mod secrets;
mod serve;
mod store_cmds;
mod upstream_cmd;

pub(crate) use args::*;
pub(crate) use secrets::*;
pub(crate) use serve::*;
pub(crate) use store_cmds::*;
pub(crate) use upstream_cmd::*;
