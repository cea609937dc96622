//! A binary that does nothing: the process-spawn floor the cold-start bench sets the runtime's
//! start beside.

fn main() {}
