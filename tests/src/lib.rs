//! The tandem lab: network namespaces, veths, bridges, hosts.
#![deny(unsafe_code)]
