//! One log record: a command a core applied, with the time it applied it at and its place
//! in the core's log (its LSN). Replaying a core's records in LSN order through the state
//! machine rebuilds the core's state exactly: the state machine is deterministic.
//!
//! Layout (little-endian): crc32c u32 @0 (of bytes 4 to the end of the record), body length
//! u32 @4, lsn u64 @8, then the body: kind u8, now_ms u64, and the command's fields:
//!
//! | kind | command         | fields after `now_ms`                                       |
//! |------|-----------------|-------------------------------------------------------------|
//! | 1    | reserve         | the 48-byte reserve record of the protocol                  |
//! | 2    | confirm         | the 48-byte confirm record                                  |
//! | 3    | release         | the 32-byte release record                                  |
//! | 4    | extend          | the 48-byte extend record                                   |
//! | 5    | tick            | —                                                           |
//! | 6    | peer message    | from u16, seq u64, the 24-byte message                      |
//! | 7    | create pool     | id u32, kind u8, active u8, capacity u64, ttl default u32, ttl max u32, name length u8, name, rules (48 bytes) |
//! | 8    | set pool active | pool u32, active u8                                         |
//! | 9    | set limits      | core u16, cores u16, holds_max u32, parked_max u32, retention_ms u64, pools_max u32, retention_min_ms u64, retained_max u32 |
//! | 10   | set pool rules  | pool u32, rules (48 bytes, as in the protocol's `PoolRules`) |
//! | 11   | resize pool     | pool u32, capacity u64                                      |
//! | 12   | recall pool     | pool u32                                                    |
//! | 13   | rename pool     | pool u32, name length u8, name                              |
//! | 14   | describe pool   | pool u32, description length u8, description                |
//!
//! A change is logged before the state machine decides it, so a refused change (an unknown
//! pool, inconsistent rules) is in the log too and refused again when replayed.

use crate::protocol::control::{PoolKind, PoolRules};
use crate::protocol::{ConfirmOp, ExtendOp, ReleaseOp, ReserveOp};
use crate::shard::engine::PEER_MSG_SIZE;
use crate::shard::{Command, EngineConfig, PeerMsg, PoolDef};

/// Bytes before the body: checksum, body length, LSN.
pub const RECORD_HEADER_SIZE: usize = 16;
/// The longest body a record may have. A pool creation with a 64-byte name is the longest
/// today (9 + 23 + 64 + 48 = 144 bytes); a length above this is damage, not a record.
pub const RECORD_BODY_MAX: usize = 160;

const KIND_RESERVE: u8 = 1;
const KIND_CONFIRM: u8 = 2;
const KIND_RELEASE: u8 = 3;
const KIND_EXTEND: u8 = 4;
const KIND_TICK: u8 = 5;
const KIND_PEER: u8 = 6;
const KIND_CREATE_POOL: u8 = 7;
const KIND_SET_ACTIVE: u8 = 8;
const KIND_SET_LIMITS: u8 = 9;
const KIND_SET_RULES: u8 = 10;
const KIND_RESIZE: u8 = 11;
const KIND_RECALL: u8 = 12;
const KIND_RENAME: u8 = 13;
const KIND_DESCRIBE: u8 = 14;

/// A decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its place in the core's log, from 1.
    pub lsn: u64,
    /// The time the command was applied at, ms since the epoch.
    pub now_ms: u64,
    /// The command.
    pub command: Command,
}

/// True for the commands a log records: those that can change the state. Reads
/// (lookups) and acknowledgements of peer messages (which only let the sender forget
/// copies it keeps) are not recorded.
pub fn is_logged(command: &Command) -> bool {
    !matches!(command, Command::Lookup(_) | Command::PeerAck { .. })
}

/// Appends the record of `command` applied at `now_ms` as LSN `lsn` to `out`.
pub fn encode(lsn: u64, now_ms: u64, command: &Command, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEADER_SIZE]);
    let kind = match command {
        Command::Reserve(_) => KIND_RESERVE,
        Command::Confirm(_) => KIND_CONFIRM,
        Command::Release(_) => KIND_RELEASE,
        Command::Extend(_) => KIND_EXTEND,
        Command::Tick => KIND_TICK,
        Command::Peer { .. } => KIND_PEER,
        Command::CreatePool(_) => KIND_CREATE_POOL,
        Command::SetPoolActive { .. } => KIND_SET_ACTIVE,
        Command::SetLimits(_) => KIND_SET_LIMITS,
        Command::SetPoolRules { .. } => KIND_SET_RULES,
        Command::ResizePool { .. } => KIND_RESIZE,
        Command::RecallPool { .. } => KIND_RECALL,
        Command::RenamePool { .. } => KIND_RENAME,
        Command::DescribePool { .. } => KIND_DESCRIBE,
        Command::Lookup(_) | Command::PeerAck { .. } => panic!("{command:?} is not logged"),
    };
    out.push(kind);
    out.extend_from_slice(&now_ms.to_le_bytes());
    let fixed = |out: &mut Vec<u8>, size: usize| {
        let at = out.len();
        out.resize(at + size, 0);
        at
    };
    match command {
        Command::Reserve(op) => {
            let at = fixed(out, ReserveOp::SIZE);
            op.encode(&mut out[at..]);
        }
        Command::Confirm(op) => {
            let at = fixed(out, ConfirmOp::SIZE);
            op.encode(&mut out[at..]);
        }
        Command::Release(op) => {
            let at = fixed(out, ReleaseOp::SIZE);
            op.encode(&mut out[at..]);
        }
        Command::Extend(op) => {
            let at = fixed(out, ExtendOp::SIZE);
            op.encode(&mut out[at..]);
        }
        Command::Tick => {}
        Command::Peer { from, seq, msg } => {
            out.extend_from_slice(&from.to_le_bytes());
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(&msg.encode());
        }
        Command::CreatePool(def) => {
            debug_assert!(def.description.is_empty(), "pools are created without a description");
            out.extend_from_slice(&def.id.to_le_bytes());
            out.push(def.kind as u8);
            out.push(def.active as u8);
            out.extend_from_slice(&def.capacity.to_le_bytes());
            out.extend_from_slice(&def.hold_ttl_ms_default.to_le_bytes());
            out.extend_from_slice(&def.hold_ttl_ms_max.to_le_bytes());
            out.push(def.name.len() as u8);
            out.extend_from_slice(def.name.as_bytes());
            def.rules.encode(out);
        }
        Command::SetPoolRules { pool, rules } => {
            out.extend_from_slice(&pool.to_le_bytes());
            rules.encode(out);
        }
        Command::SetPoolActive { pool, active } => {
            out.extend_from_slice(&pool.to_le_bytes());
            out.push(*active as u8);
        }
        Command::ResizePool { pool, capacity } => {
            out.extend_from_slice(&pool.to_le_bytes());
            out.extend_from_slice(&capacity.to_le_bytes());
        }
        Command::RecallPool { pool } => out.extend_from_slice(&pool.to_le_bytes()),
        Command::RenamePool { pool, name: text } | Command::DescribePool { pool, description: text } => {
            out.extend_from_slice(&pool.to_le_bytes());
            out.push(text.len() as u8);
            out.extend_from_slice(text.as_bytes());
        }
        Command::SetLimits(c) => {
            out.extend_from_slice(&c.core.to_le_bytes());
            out.extend_from_slice(&c.cores.to_le_bytes());
            out.extend_from_slice(&c.holds_max.to_le_bytes());
            out.extend_from_slice(&c.parked_max.to_le_bytes());
            out.extend_from_slice(&c.retention_ms.to_le_bytes());
            out.extend_from_slice(&c.pools_max.to_le_bytes());
            out.extend_from_slice(&c.retention_min_ms.to_le_bytes());
            out.extend_from_slice(&c.retained_max.to_le_bytes());
        }
        Command::Lookup(_) | Command::PeerAck { .. } => unreachable!(),
    }
    let body_len = out.len() - start - RECORD_HEADER_SIZE;
    debug_assert!(body_len <= RECORD_BODY_MAX);
    out[start + 4..start + 8].copy_from_slice(&(body_len as u32).to_le_bytes());
    out[start + 8..start + 16].copy_from_slice(&lsn.to_le_bytes());
    let crc = crc32c::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Why bytes are not a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bad {
    /// Fewer bytes than the header or the body it announces.
    Short,
    /// The announced body length is impossible.
    Length,
    /// The checksum does not match.
    Checksum,
    /// The checksum matches but the body is not a valid command.
    Body,
}

/// Decodes the record at the front of `b`: the record and its size in bytes.
pub fn decode(b: &[u8]) -> Result<(Record, usize), Bad> {
    if b.len() < RECORD_HEADER_SIZE {
        return Err(Bad::Short);
    }
    let crc = u32::from_le_bytes(b[0..4].try_into().unwrap());
    let len = u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
    if !(9..=RECORD_BODY_MAX).contains(&len) {
        return Err(Bad::Length);
    }
    let size = RECORD_HEADER_SIZE + len;
    if b.len() < size {
        return Err(Bad::Short);
    }
    if crc32c::crc32c(&b[4..size]) != crc {
        return Err(Bad::Checksum);
    }
    let lsn = u64::from_le_bytes(b[8..16].try_into().unwrap());
    let body = &b[RECORD_HEADER_SIZE..size];
    let now_ms = u64::from_le_bytes(body[1..9].try_into().unwrap());
    let command = decode_command(body[0], &body[9..]).ok_or(Bad::Body)?;
    Ok((Record { lsn, now_ms, command }, size))
}

fn decode_command(kind: u8, f: &[u8]) -> Option<Command> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(f.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(f.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(f.get(o..o + 8)?.try_into().ok()?));
    let exactly = |n: usize| (f.len() == n).then_some(());
    Some(match kind {
        KIND_RESERVE => {
            exactly(ReserveOp::SIZE)?;
            Command::Reserve(ReserveOp::decode(f).ok()?)
        }
        KIND_CONFIRM => {
            exactly(ConfirmOp::SIZE)?;
            Command::Confirm(ConfirmOp::decode(f).ok()?)
        }
        KIND_RELEASE => {
            exactly(ReleaseOp::SIZE)?;
            Command::Release(ReleaseOp::decode(f).ok()?)
        }
        KIND_EXTEND => {
            exactly(ExtendOp::SIZE)?;
            Command::Extend(ExtendOp::decode(f).ok()?)
        }
        KIND_TICK => {
            exactly(0)?;
            Command::Tick
        }
        KIND_PEER => {
            exactly(2 + 8 + PEER_MSG_SIZE)?;
            let msg = PeerMsg::decode(f[10..10 + PEER_MSG_SIZE].try_into().ok()?)?;
            Command::Peer { from: u16_at(0)?, seq: u64_at(2)?, msg }
        }
        KIND_CREATE_POOL => {
            let name_len = *f.get(22)? as usize;
            exactly(23 + name_len + PoolRules::SIZE)?;
            let name = std::str::from_utf8(&f[23..23 + name_len]).ok()?;
            let rules = PoolRules::decode(&f[23 + name_len..]).ok().filter(PoolRules::valid)?;
            Command::CreatePool(PoolDef {
                id: u32_at(0)?,
                kind: PoolKind::from_u8(f[4])?,
                active: match f[5] {
                    0 => false,
                    1 => true,
                    _ => return None,
                },
                capacity: u64_at(6)?,
                hold_ttl_ms_default: u32_at(14)?,
                hold_ttl_ms_max: u32_at(18)?,
                name: name.into(),
                rules,
                description: "".into(),
            })
        }
        KIND_SET_RULES => {
            exactly(4 + PoolRules::SIZE)?;
            // Inconsistent rules are a refused change, logged like any other.
            let rules = PoolRules::decode(&f[4..]).ok()?;
            Command::SetPoolRules { pool: u32_at(0)?, rules }
        }
        KIND_RESIZE => {
            exactly(12)?;
            Command::ResizePool { pool: u32_at(0)?, capacity: u64_at(4)? }
        }
        KIND_RECALL => {
            exactly(4)?;
            Command::RecallPool { pool: u32_at(0)? }
        }
        KIND_RENAME => {
            let name_len = *f.get(4)? as usize;
            exactly(5 + name_len)?;
            // Any UTF-8 name: a refused rename is logged like any other change.
            let name = std::str::from_utf8(&f[5..]).ok()?;
            Command::RenamePool { pool: u32_at(0)?, name: name.into() }
        }
        KIND_DESCRIBE => {
            let len = *f.get(4)? as usize;
            exactly(5 + len)?;
            // Any UTF-8 text: a refused description is logged like any other change.
            let text = std::str::from_utf8(&f[5..]).ok()?;
            Command::DescribePool { pool: u32_at(0)?, description: text.into() }
        }
        KIND_SET_ACTIVE => {
            exactly(5)?;
            Command::SetPoolActive {
                pool: u32_at(0)?,
                active: match f[4] {
                    0 => false,
                    1 => true,
                    _ => return None,
                },
            }
        }
        KIND_SET_LIMITS => {
            exactly(36)?;
            let (holds_max, retained_max) = (u32_at(4)?, u32_at(32)?);
            // Limits the configuration could never have given are damage, not a record.
            if retained_max < holds_max || retained_max >= crate::shard::holds::RETAINED {
                return None;
            }
            Command::SetLimits(EngineConfig {
                core: u16_at(0)?,
                cores: u16_at(2)?,
                holds_max: u32_at(4)?,
                parked_max: u32_at(8)?,
                retention_ms: u64_at(12)?,
                pools_max: u32_at(20)?,
                retention_min_ms: u64_at(24)?,
                retained_max: u32_at(32)?,
            })
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::LookupOp;
    use crate::protocol::control::PoolCreate;
    use crate::shard::Engine;

    const NOW: u64 = 1_700_000_000_123;

    fn limits() -> EngineConfig {
        EngineConfig {
            core: 1,
            cores: 3,
            holds_max: 1000,
            parked_max: 64,
            retention_ms: 60_000,
            retention_min_ms: 0,
            retained_max: 4000,
            pools_max: 16,
        }
    }

    fn pool_def(name: &str) -> PoolDef {
        let req = PoolCreate {
            name: name.into(),
            capacity: 1_000_000,
            hold_ttl_ms_default: 30_000,
            hold_ttl_ms_max: 900_000,
            kind: PoolKind::Counted as u8,
            active: false,
            rules: Default::default(),
        };
        Engine::new(limits(), NOW).validate_pool_create(&req).expect("a valid pool")
    }

    /// One command of every logged kind (every peer message among them), with the size of
    /// its record.
    fn every_logged_command() -> Vec<(Command, usize)> {
        let id = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210u128;
        let user = u128::MAX - 7;
        let peer = |seq, msg| Command::Peer { from: 2, seq, msg };
        let rules = PoolRules {
            max_per_user: 4,
            opens_at_ms: 1,
            closes_at_ms: 2,
            rate_per_s: 3,
            burst: 5,
            max_qty: 6,
            flags: 1,
            kept_permille: 100,
            priority_min: 7,
        };
        vec![
            (Command::Reserve(ReserveOp { id, user, pool: 3, qty: 7, ttl_ms: 60_000, priority: 9 }), 16 + 9 + 48),
            (Command::Confirm(ConfirmOp { id, user, commit_ref: 0xfeed }), 16 + 9 + 48),
            (Command::Release(ReleaseOp { id, user }), 16 + 9 + 32),
            (Command::Extend(ExtendOp { id, user, ttl_ms: 1 }), 16 + 9 + 48),
            (Command::Tick, 16 + 9),
            (peer(1, PeerMsg::Borrow { pool: 4, need: 10, ticket: None, priority: 0 }), 16 + 9 + 34),
            (peer(2, PeerMsg::Borrow { pool: 4, need: 1, ticket: Some(77), priority: 9 }), 16 + 9 + 34),
            (peer(3, PeerMsg::Grant { pool: 4, units: 12, ticket: None }), 16 + 9 + 34),
            (peer(4, PeerMsg::Grant { pool: 4, units: 1, ticket: Some(77) }), 16 + 9 + 34),
            (peer(5, PeerMsg::SoldOut { pool: 4, ticket: 78 }), 16 + 9 + 34),
            (peer(6, PeerMsg::Recall { pool: 4 }), 16 + 9 + 34),
            (peer(7, PeerMsg::Returned { pool: 4, units: 0 }), 16 + 9 + 34),
            (peer(u64::MAX, PeerMsg::Return { pool: u32::MAX, units: u64::MAX }), 16 + 9 + 34),
            (peer(9, PeerMsg::Undrain { pool: 4 }), 16 + 9 + 34),
            (Command::CreatePool(pool_def("seats-2025")), 16 + 9 + 23 + 10 + 48),
            (Command::CreatePool(PoolDef { rules, ..pool_def(&"x".repeat(64)) }), 16 + 9 + 23 + 64 + 48),
            (Command::SetPoolActive { pool: 5, active: true }, 16 + 9 + 5),
            (Command::SetPoolActive { pool: 5, active: false }, 16 + 9 + 5),
            (Command::ResizePool { pool: 5, capacity: 1 << 60 }, 16 + 9 + 12),
            (Command::RecallPool { pool: u32::MAX }, 16 + 9 + 4),
            (Command::RenamePool { pool: 5, name: "seats-2026".into() }, 16 + 9 + 5 + 10),
            (Command::RenamePool { pool: 6, name: "x".repeat(64).into() }, 16 + 9 + 5 + 64),
            (Command::DescribePool { pool: 7, description: "é".repeat(64).into() }, 16 + 9 + 5 + 128),
            (Command::DescribePool { pool: 7, description: "".into() }, 16 + 9 + 5),
            (Command::SetLimits(limits()), 16 + 9 + 36),
            (Command::SetPoolRules { pool: 5, rules }, 16 + 9 + 52),
            (Command::SetPoolRules { pool: 6, rules: PoolRules::default() }, 16 + 9 + 52),
            // A refused change (a rate without a burst) is logged and read back too.
            (
                Command::SetPoolRules { pool: 6, rules: PoolRules { rate_per_s: 3, ..PoolRules::default() } },
                16 + 9 + 52,
            ),
        ]
    }

    /// A record with `body` (kind, now_ms, fields) and a valid checksum.
    fn sealed(lsn: u64, body: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; RECORD_HEADER_SIZE];
        out[4..8].copy_from_slice(&(body.len() as u32).to_le_bytes());
        out[8..16].copy_from_slice(&lsn.to_le_bytes());
        out.extend_from_slice(body);
        let crc = crc32c::crc32c(&out[4..]);
        out[0..4].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// The body of `command`'s record, re-sealed after `change` edits it.
    fn edited(command: &Command, change: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut b = Vec::new();
        encode(1, NOW, command, &mut b);
        let mut body = b[RECORD_HEADER_SIZE..].to_vec();
        change(&mut body);
        sealed(1, &body)
    }

    #[test]
    fn every_command_kind_round_trips_with_its_documented_size() {
        for (i, (command, size)) in every_logged_command().into_iter().enumerate() {
            let lsn = 1000 + i as u64;
            let mut b = vec![0xEE; 3]; // records are appended after whatever is there
            encode(lsn, NOW + i as u64, &command, &mut b);
            assert_eq!(&b[..3], &[0xEE; 3], "{command:?}: bytes before the record untouched");
            let rec = &b[3..];
            assert_eq!(rec.len(), size, "{command:?}: record size");
            assert!(rec.len() - RECORD_HEADER_SIZE <= RECORD_BODY_MAX, "{command:?}: body within the maximum");
            assert_eq!(u32::from_le_bytes(rec[4..8].try_into().unwrap()) as usize, size - RECORD_HEADER_SIZE);
            assert_eq!(u64::from_le_bytes(rec[8..16].try_into().unwrap()), lsn);
            assert_eq!(u64::from_le_bytes(rec[17..25].try_into().unwrap()), NOW + i as u64);
            assert_eq!(u32::from_le_bytes(rec[0..4].try_into().unwrap()), crc32c::crc32c(&rec[4..]));
            let (decoded, used) = decode(rec).expect("a record just encoded decodes");
            assert_eq!(used, size);
            assert_eq!(decoded, Record { lsn, now_ms: NOW + i as u64, command });
        }
    }

    #[test]
    fn kinds_have_their_documented_numbers() {
        let kinds: Vec<u8> = every_logged_command()
            .iter()
            .map(|(c, _)| {
                let mut b = Vec::new();
                encode(1, NOW, c, &mut b);
                b[RECORD_HEADER_SIZE]
            })
            .collect();
        assert_eq!(
            kinds,
            [1, 2, 3, 4, 5, 6, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 8, 8, 11, 12, 13, 13, 14, 14, 9, 10, 10, 10]
        );
    }

    #[test]
    fn records_back_to_back_decode_one_after_the_other() {
        let commands = every_logged_command();
        let mut b = Vec::new();
        for (i, (c, _)) in commands.iter().enumerate() {
            encode(i as u64 + 1, NOW, c, &mut b);
        }
        let mut pos = 0;
        for (i, (c, size)) in commands.iter().enumerate() {
            let (rec, used) = decode(&b[pos..]).expect("decodes");
            assert_eq!((rec.lsn, &rec.command, used), (i as u64 + 1, c, *size));
            pos += used;
        }
        assert_eq!(pos, b.len());
    }

    #[test]
    fn only_lookups_and_acks_are_not_logged() {
        for (c, _) in every_logged_command() {
            assert!(is_logged(&c), "{c:?} changes the state and is logged");
        }
        assert!(!is_logged(&Command::Lookup(LookupOp { id: 1, user: 2 })));
        assert!(!is_logged(&Command::PeerAck { from: 1, seq: 9 }));
    }

    #[test]
    #[should_panic(expected = "is not logged")]
    fn encoding_a_lookup_is_a_bug() {
        encode(1, NOW, &Command::Lookup(LookupOp { id: 1, user: 2 }), &mut Vec::new());
    }

    #[test]
    #[should_panic(expected = "is not logged")]
    fn encoding_an_ack_is_a_bug() {
        encode(1, NOW, &Command::PeerAck { from: 1, seq: 2 }, &mut Vec::new());
    }

    #[test]
    fn short_input_is_short() {
        let mut b = Vec::new();
        encode(5, NOW, &Command::Release(ReleaseOp { id: 1, user: 2 }), &mut b);
        for cut in 0..b.len() {
            assert_eq!(decode(&b[..cut]), Err(Bad::Short), "cut at {cut}");
        }
        assert!(decode(&b).is_ok());
    }

    #[test]
    fn impossible_lengths_are_refused_before_reading_the_body() {
        for len in [0u32, 1, 8, RECORD_BODY_MAX as u32 + 1, u32::MAX] {
            let mut b = vec![0u8; 400];
            b[4..8].copy_from_slice(&len.to_le_bytes());
            assert_eq!(decode(&b), Err(Bad::Length), "body length {len}");
        }
        // The shortest and longest possible bodies pass the length check.
        assert_eq!(
            decode(&sealed(1, &[KIND_TICK, 0, 0, 0, 0, 0, 0, 0, 0])).map(|(r, n)| (r.command, n)),
            Ok((Command::Tick, 25))
        );
        assert_eq!(decode(&sealed(1, &[0u8; RECORD_BODY_MAX])), Err(Bad::Body));
    }

    #[test]
    fn any_flipped_bit_fails_the_checksum_or_the_length() {
        let mut b = Vec::new();
        encode(
            9,
            NOW,
            &Command::Reserve(ReserveOp { id: 3, user: 4, pool: 1, qty: 2, ttl_ms: 0, priority: 0 }),
            &mut b,
        );
        for i in 0..b.len() {
            for bit in 0..8 {
                let mut damaged = b.clone();
                damaged[i] ^= 1 << bit;
                let got = decode(&damaged);
                let expected = if (4..8).contains(&i) {
                    // A longer announced body is short of bytes or too long; a shorter one
                    // fails the checksum.
                    [Err(Bad::Short), Err(Bad::Length), Err(Bad::Checksum)].contains(&got)
                } else {
                    got == Err(Bad::Checksum)
                };
                assert!(expected, "byte {i} bit {bit}: {got:?}");
            }
        }
    }

    #[test]
    fn bodies_that_are_not_commands_are_refused_even_with_a_good_checksum() {
        let reserve = Command::Reserve(ReserveOp { id: 3, user: 4, pool: 1, qty: 2, ttl_ms: 0, priority: 0 });
        let extend = Command::Extend(ExtendOp { id: 3, user: 4, ttl_ms: 10 });
        let peer = Command::Peer { from: 1, seq: 1, msg: PeerMsg::Recall { pool: 1 } };
        let create = Command::CreatePool(pool_def("seats"));
        let active = Command::SetPoolActive { pool: 1, active: true };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("unknown kind 0", edited(&Command::Tick, |b| b[0] = 0)),
            ("unknown kind 15", edited(&Command::Tick, |b| b[0] = 15)),
            ("tick with a field", edited(&Command::Tick, |b| b.push(0))),
            ("reserve one byte short", edited(&reserve, |b| b.truncate(b.len() - 1))),
            ("reserve one byte long", edited(&reserve, |b| b.push(0))),
            ("reserve reserved byte set", edited(&reserve, |b| b[9 + 46] = 1)),
            ("extend reserved byte set", edited(&extend, |b| b[9 + 40] = 1)),
            (
                "release with confirm's length",
                edited(&Command::Release(ReleaseOp { id: 1, user: 2 }), |b| b.extend([0; 16])),
            ),
            ("peer tag 0", edited(&peer, |b| b[9 + 10] = 0)),
            ("peer tag 8", edited(&peer, |b| b[9 + 10] = 8)),
            ("peer ticket flag 2", edited(&peer, |b| b[9 + 11] = 2)),
            ("peer one byte short", edited(&peer, |b| b.truncate(b.len() - 1))),
            ("pool kind 2", edited(&create, |b| b[9 + 4] = 2)),
            ("pool active 2", edited(&create, |b| b[9 + 5] = 2)),
            ("pool name longer than announced", edited(&create, |b| b.push(b'x'))),
            ("pool name shorter than announced", edited(&create, |b| b[9 + 22] += 1)),
            ("pool name not UTF-8", edited(&create, |b| b[9 + 23] = 0xFF)),
            ("pool record without a name length", edited(&create, |b| b.truncate(9 + 22))),
            ("activation flag 2", edited(&active, |b| b[9 + 4] = 2)),
            ("activation one byte long", edited(&active, |b| b.push(1))),
            ("limits one byte short", edited(&Command::SetLimits(limits()), |b| b.truncate(b.len() - 1))),
            // retained_max (body offset 9 + 32) below holds_max (1000): no live hold could finish.
            (
                "limits keeping fewer finished records than live holds",
                edited(&Command::SetLimits(limits()), |b| b[9 + 32..9 + 36].copy_from_slice(&999u32.to_le_bytes())),
            ),
        ];
        for (what, bytes) in cases {
            assert_eq!(decode(&bytes), Err(Bad::Body), "{what}");
        }
    }
}
