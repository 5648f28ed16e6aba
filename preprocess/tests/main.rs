//! Integration tests of flame-prep.
