//! Updating a member: the signed firmware package and the two installation
//! slots that keep the previous version bootable.

pub mod package;
pub mod slots;
