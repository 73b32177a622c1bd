//! Named places where a test can make the run fail, to prove what happens
//! after a failure that real systems produce rarely (a listing that fails
//! mid-run, a session that cannot start after files were taken).
//! `LAKEHOUSE_FAILPOINTS=name,name` turns them on; unset, a check is one
//! environment lookup.

use crate::error::{Error, Result};

/// An error when the failpoint `name` is on.
pub fn check(name: &str) -> Result<()> {
    let Ok(on) = std::env::var("LAKEHOUSE_FAILPOINTS") else {
        return Ok(());
    };
    if on.split(',').any(|n| n.trim() == name) {
        return Err(Error::Internal(format!(
            "failpoint `{name}` (LAKEHOUSE_FAILPOINTS)"
        )));
    }
    Ok(())
}
