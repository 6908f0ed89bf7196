//! The internet checksum (RFC 1071) and its incremental update (RFC 1624).

/// One's-complement sum of `data` taken as big-endian 16-bit words (an odd
/// trailing byte is padded with zero), folded to 16 bits, not complemented.
pub fn data(data: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        sum += u64::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    fold(sum)
}

/// One's-complement sum of several partial sums.
pub fn combine(sums: &[u16]) -> u16 {
    fold(sums.iter().map(|&s| u64::from(s)).sum())
}

/// The checksum field value for `bytes` (with the checksum field zeroed):
/// the complement of their one's-complement sum.
pub fn checksum(bytes: &[u8]) -> u16 {
    !data(bytes)
}

/// True when `bytes`, checksum field included, sum to 0xffff (verifies).
pub fn verifies(bytes: &[u8]) -> bool {
    data(bytes) == 0xffff
}

/// New checksum after one 16-bit word of the covered data changed from
/// `old_word` to `new_word` (RFC 1624, equation 3: `HC' = ~(~HC + ~m + m')`).
/// Used for the TTL decrement when forwarding.
pub fn update(old_checksum: u16, old_word: u16, new_word: u16) -> u16 {
    !combine(&[!old_checksum, !old_word, new_word])
}

fn fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example_sums_to_ddf2() {
        // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        assert_eq!(
            data(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0xddf2
        );
    }

    #[test]
    fn odd_length_pads_last_byte_with_zero() {
        assert_eq!(data(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }

    #[test]
    fn real_ipv4_header_verifies() {
        // 45 00 00 73 00 00 40 00 40 11 b8 61 c0 a8 00 01 c0 a8 00 c7 (Wikipedia example)
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert!(verifies(&h));
        let mut z = h;
        z[10] = 0;
        z[11] = 0;
        assert_eq!(checksum(&z), 0xb861);
    }

    #[test]
    fn incremental_update_matches_full_recompute_for_every_ttl() {
        let base = [
            0x45u8, 0x00, 0x00, 0x54, 0x12, 0x34, 0x40, 0x00, 0x40, 0x01, 0x00, 0x00, 0xc6, 0x12,
            0x01, 0x0a, 0xc6, 0x12, 0x02, 0x0a,
        ];
        for proto in [0u8, 1, 6, 17, 0xff] {
            for ttl in 1..=255u8 {
                let mut h = base;
                h[8] = ttl;
                h[9] = proto;
                let ck = checksum(&h);
                let new = update(
                    ck,
                    u16::from_be_bytes([ttl, proto]),
                    u16::from_be_bytes([ttl - 1, proto]),
                );
                h[8] = ttl - 1;
                h[10..12].copy_from_slice(&new.to_be_bytes());
                assert!(verifies(&h), "ttl {ttl} proto {proto}");
            }
        }
    }
}
