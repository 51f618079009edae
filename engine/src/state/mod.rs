//! State beside the data flow: the key dictionary and what goes to disk (spilled panes,
//! keys and sessions under a memory budget; checkpoints), all as Arrow IPC files.

pub mod checkpoint;
pub(crate) mod ipc;
pub(crate) mod key;
pub(crate) mod keyspill;
pub(crate) mod remote;
pub(crate) mod sessionspill;
pub(crate) mod spill;
