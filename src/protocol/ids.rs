//! Ids and placement: how text becomes 128-bit ids, and which core is a user's home.
//!
//! These functions are part of the protocol: a shard-aware client in any language computes
//! the same home core from the same user id, using XXH3 and the jump consistent hash.

use xxhash_rust::xxh3::{xxh3_64, xxh3_128};

/// The home core of `user` on a server with `cores` cores (the handshake's user hash 1):
/// `jump_consistent_hash(xxh3_64(user as 16 little-endian bytes), cores)`.
pub fn home_core(user: u128, cores: u16) -> u16 {
    jump_consistent_hash(xxh3_64(&user.to_le_bytes()), cores.max(1) as u32) as u16
}

/// Lamping and Veach's jump consistent hash: maps `key` to a bucket in `0..buckets` so that
/// growing the bucket count moves as few keys as possible.
pub fn jump_consistent_hash(mut key: u64, buckets: u32) -> u32 {
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < buckets as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

/// The 128-bit user id of a textual user name: XXH3-128 of its UTF-8 bytes (0 maps to 1,
/// since 0 is reserved). This is the one mapping the CLI uses for `--user`.
pub fn user_id_from_name(name: &str) -> u128 {
    xxh3_128(name.as_bytes()).max(1)
}

/// Parses a reservation or user id written as 32 hex digits, with or without the dashes
/// of the UUID layout (8-4-4-4-12). The text is read as a big-endian number.
pub fn parse_id(text: &str) -> Option<u128> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let dashes = text.len() - hex.len();
    if hex.len() != 32 || !(dashes == 0 || (dashes == 4 && is_uuid_layout(text))) {
        return None;
    }
    u128::from_str_radix(&hex, 16).ok()
}

fn is_uuid_layout(text: &str) -> bool {
    let groups: Vec<usize> = text.split('-').map(str::len).collect();
    groups == [8, 4, 4, 4, 12]
}

/// Formats an id in the UUID layout, lower-case (the inverse of [`parse_id`]).
pub fn format_id(id: u128) -> String {
    let h = format!("{id:032x}");
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_and_format() {
        let id = 0x0123_4567_89ab_cdef_0011_2233_4455_6677u128;
        let text = format_id(id);
        assert_eq!(text, "01234567-89ab-cdef-0011-223344556677");
        assert_eq!(parse_id(&text), Some(id));
        assert_eq!(parse_id("0123456789abcdef0011223344556677"), Some(id));
        assert_eq!(parse_id("0123456789abcdef001122334455667"), None);
        assert_eq!(parse_id("0123-456789abcdef0011223344556677"), None);
        assert_eq!(parse_id("zz23456789abcdef0011223344556677"), None);
    }

    #[test]
    fn jump_hash_is_stable_and_balanced() {
        // Values computed with an independent (Python) implementation of the algorithm.
        assert_eq!(jump_consistent_hash(0, 1), 0);
        assert_eq!(jump_consistent_hash(1, 2), 0);
        assert_eq!(jump_consistent_hash(256, 1024), 520);
        assert_eq!(jump_consistent_hash(0xdead_beef, 100), 87);
        assert_eq!(jump_consistent_hash(u64::MAX, 7), 2);
        let mut counts = [0u32; 4];
        for u in 1..=40_000u128 {
            counts[home_core(u, 4) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (9_000..11_000).contains(&c)), "{counts:?}");
        // Growing from 4 to 5 cores moves about a fifth of the users, never between old cores.
        let moved = (1..=40_000u128).filter(|&u| home_core(u, 4) != home_core(u, 5)).count();
        assert!((6_000..10_000).contains(&moved), "{moved}");
        assert!((1..=40_000u128).all(|u| home_core(u, 5) == 4 || home_core(u, 5) == home_core(u, 4)));
    }

    #[test]
    fn user_names_map_to_nonzero_ids() {
        assert_ne!(user_id_from_name("alice"), user_id_from_name("bob"));
        assert_eq!(user_id_from_name("alice"), xxh3_128(b"alice"));
        assert_ne!(user_id_from_name(""), 0);
    }
}
