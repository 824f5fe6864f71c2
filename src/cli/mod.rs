//! The subcommands of the gatehouse command line, one file per group; the
//! flags themselves are in [`args`] (and, for the settings `serve` hands the
//! library, [`settings`]); the log subscriber in [`logging`].

mod args;
mod logging;
mod secrets;
mod serve;
mod settings;
mod store_cmds;
mod upstream_cmd;
mod usage_cmd;

pub(crate) use args::*;
pub(crate) use logging::*;
pub(crate) use secrets::*;
pub(crate) use serve::*;
pub(crate) use settings::*;
pub(crate) use store_cmds::*;
pub(crate) use upstream_cmd::*;
pub(crate) use usage_cmd::*;
