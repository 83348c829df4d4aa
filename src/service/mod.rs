//! (under construction)

pub mod registry;
