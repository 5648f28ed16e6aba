//! End-to-end tests of flame: fixtures, the binaries and the README, run as a user would.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod fixtures;
mod prep;
mod readme;
