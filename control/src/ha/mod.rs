//! HA
