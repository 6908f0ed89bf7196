//! The filter policy (being written).
