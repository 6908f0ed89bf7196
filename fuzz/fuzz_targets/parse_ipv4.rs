//! `parse_ipv4` on arbitrary bytes: it must not panic, and what it reports
//! of an accepted packet must lie inside the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_dataplane::flow::L4Info;
use tandem_dataplane::parse::{parse_ipv4, Fragment};

fuzz_target!(|data: &[u8]| {
    // The first byte chooses whether checksums are verified, so that the
    // fuzzer also reaches the code behind them.
    let Some((&flags, packet)) = data.split_first() else {
        return;
    };
    let Ok(p) = parse_ipv4(packet, flags & 1 != 0) else {
        return;
    };
    let total = usize::from(p.total_len);
    assert!(total <= packet.len(), "total length past the input");
    assert!(usize::from(p.ihl) >= 20 && p.l4_offset == usize::from(p.ihl));
    assert!(p.l4_offset <= total, "l4 offset past the packet");
    assert_eq!(p.l4_len(), total - p.l4_offset);
    assert_eq!(
        (p.flow.src, p.flow.dst, p.flow.proto),
        (p.src, p.dst, p.proto)
    );
    match p.fragment {
        Fragment::NonFirst { offset } => {
            assert!(offset != 0);
            assert!(usize::from(offset) + p.l4_len() <= 65535);
            assert_eq!((p.flow.sport, p.flow.dport, p.l4), (0, 0, L4Info::Other));
        }
        Fragment::First { more } => assert!(more && p.more_fragments),
        Fragment::None => assert!(!p.more_fragments),
    }
    if let L4Info::Tcp(info) = p.l4 {
        assert!(info.payload_len as usize <= p.l4_len());
    }
});
