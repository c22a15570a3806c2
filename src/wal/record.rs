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
//! | 7    | create pool     | id u32, kind u8, active u8, capacity u64, ttl default u32, ttl max u32, name length u8, name |
//! | 8    | set pool active | pool u32, active u8                                         |
//! | 9    | set limits      | core u16, cores u16, holds_max u32, parked_max u32, retention_ms u64, pools_max u32 |

use crate::protocol::control::PoolKind;
use crate::protocol::{ConfirmOp, ExtendOp, ReleaseOp, ReserveOp};
use crate::shard::engine::PEER_MSG_SIZE;
use crate::shard::{Command, EngineConfig, PeerMsg, PoolDef};

/// Bytes before the body: checksum, body length, LSN.
pub const RECORD_HEADER_SIZE: usize = 16;
/// The longest body a record may have (a pool creation with a 64-byte name is the longest).
pub const RECORD_BODY_MAX: usize = 128;

const KIND_RESERVE: u8 = 1;
const KIND_CONFIRM: u8 = 2;
const KIND_RELEASE: u8 = 3;
const KIND_EXTEND: u8 = 4;
const KIND_TICK: u8 = 5;
const KIND_PEER: u8 = 6;
const KIND_CREATE_POOL: u8 = 7;
const KIND_SET_ACTIVE: u8 = 8;
const KIND_SET_LIMITS: u8 = 9;

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
            out.extend_from_slice(&def.id.to_le_bytes());
            out.push(def.kind as u8);
            out.push(def.active as u8);
            out.extend_from_slice(&def.capacity.to_le_bytes());
            out.extend_from_slice(&def.hold_ttl_ms_default.to_le_bytes());
            out.extend_from_slice(&def.hold_ttl_ms_max.to_le_bytes());
            out.push(def.name.len() as u8);
            out.extend_from_slice(def.name.as_bytes());
        }
        Command::SetPoolActive { pool, active } => {
            out.extend_from_slice(&pool.to_le_bytes());
            out.push(*active as u8);
        }
        Command::SetLimits(c) => {
            out.extend_from_slice(&c.core.to_le_bytes());
            out.extend_from_slice(&c.cores.to_le_bytes());
            out.extend_from_slice(&c.holds_max.to_le_bytes());
            out.extend_from_slice(&c.parked_max.to_le_bytes());
            out.extend_from_slice(&c.retention_ms.to_le_bytes());
            out.extend_from_slice(&c.pools_max.to_le_bytes());
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
            exactly(23 + name_len)?;
            let name = std::str::from_utf8(&f[23..]).ok()?;
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
            })
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
            exactly(24)?;
            Command::SetLimits(EngineConfig {
                core: u16_at(0)?,
                cores: u16_at(2)?,
                holds_max: u32_at(4)?,
                parked_max: u32_at(8)?,
                retention_ms: u64_at(12)?,
                pools_max: u32_at(20)?,
            })
        }
        _ => return None,
    })
}
