//! Integration tests of the `flame-prep` binary, run as a user runs it.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod bad_input;
mod inspect;
mod util;
mod verify;
