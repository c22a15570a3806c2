//! Bodies of the control operations: handshake, pool management, pool status and server
//! statistics. These are not on the hot path; several carry a variable-length pool name.
//!
//! Every control response body starts with an 8-byte result prefix — status u8, then 7
//! reserved bytes — followed by the payload when the status is `ok`.

use super::ops::{u16_at, u32_at, u64_at, u128_at};
use super::status::Status;

/// The longest pool name in bytes.
pub const POOL_NAME_MAX_BYTES: usize = 64;
/// Longest pool description, in bytes of UTF-8.
pub const POOL_DESCRIPTION_MAX_BYTES: usize = 128;
/// Size of the result prefix of control responses.
pub const CONTROL_PREFIX_SIZE: usize = 8;
/// The user-hash function id announced in the handshake: XXH3-64 of the 16 little-endian
/// bytes of the user id, then Lamping–Veach jump consistent hash over the core count.
pub const USER_HASH_XXH3_JUMP: u8 = 1;

/// A control body that could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed;

/// Appends the 8-byte result prefix.
pub fn put_prefix(out: &mut Vec<u8>, status: Status) {
    out.push(status as u8);
    out.extend_from_slice(&[0; 7]);
}

/// Splits a control response body into its status and payload.
pub fn split_prefix(body: &[u8]) -> Result<(Status, &[u8]), Malformed> {
    if body.len() < CONTROL_PREFIX_SIZE {
        return Err(Malformed);
    }
    let status = Status::from_u8(body[0]).ok_or(Malformed)?;
    Ok((status, &body[CONTROL_PREFIX_SIZE..]))
}

/// A text longer than the protocol carries: longer than its one-byte length field can say
/// (a frame whose length is not the text's), or a pool name longer than
/// [`POOL_NAME_MAX_BYTES`] (a frame the server refuses as `malformed_body`, closing the
/// connection). The encoder refuses it and nothing is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the {field} is {len} bytes long; the protocol carries at most {max}")]
pub struct TextTooLong {
    /// What the text is (`pool name`, `description`).
    pub field: &'static str,
    /// Its length in bytes.
    pub len: usize,
    /// The most its length field can say.
    pub max: usize,
}

/// The length byte of `text`, or [`TextTooLong`] if it is longer than `max` (at most 255).
fn text_len(field: &'static str, text: &str, max: usize) -> Result<u8, TextTooLong> {
    debug_assert!(max <= u8::MAX as usize, "a length byte");
    if text.len() > max {
        return Err(TextTooLong { field, len: text.len(), max });
    }
    Ok(text.len() as u8)
}

/// Checks a pool name: 1 to 64 bytes of printable ASCII without spaces.
pub fn valid_pool_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= POOL_NAME_MAX_BYTES && name.bytes().all(|b| b.is_ascii_graphic())
}

/// The handshake answer: topology and limits.
///
/// Payload: protocol_version u8 @0, user_hash u8 @1, core_count u16 @2, this_core u16 @4,
/// shared_port u16 @6, frame_size_max_bytes u32 @8, batch_operations_max u32 @12,
/// inflight_frames_max u32 @16, reserved u32 @20, then `core_count` × u16 core ports
/// (0 where a core has no port of its own).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version ([`super::VERSION`]).
    pub protocol_version: u8,
    /// User-hash function id ([`USER_HASH_XXH3_JUMP`]).
    pub user_hash: u8,
    /// Number of cores (shards per pool).
    pub core_count: u16,
    /// The core that answered on this connection.
    pub this_core: u16,
    /// The shared data port (served by every core).
    pub shared_port: u16,
    /// Largest frame the server accepts, header included.
    pub frame_size_max_bytes: u32,
    /// Most records in one batch frame.
    pub batch_operations_max: u32,
    /// Most frames in flight on one connection.
    pub inflight_frames_max: u32,
    /// Each core's own port, by core index; 0 when none.
    pub core_ports: Vec<u16>,
}

impl Hello {
    /// Appends the payload.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.protocol_version);
        out.push(self.user_hash);
        out.extend_from_slice(&self.core_count.to_le_bytes());
        out.extend_from_slice(&self.this_core.to_le_bytes());
        out.extend_from_slice(&self.shared_port.to_le_bytes());
        out.extend_from_slice(&self.frame_size_max_bytes.to_le_bytes());
        out.extend_from_slice(&self.batch_operations_max.to_le_bytes());
        out.extend_from_slice(&self.inflight_frames_max.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        for p in &self.core_ports {
            out.extend_from_slice(&p.to_le_bytes());
        }
    }
    /// Decodes a payload.
    pub fn decode(b: &[u8]) -> Result<Self, Malformed> {
        if b.len() < 24 {
            return Err(Malformed);
        }
        let core_count = u16_at(b, 2);
        if b.len() != 24 + 2 * core_count as usize {
            return Err(Malformed);
        }
        Ok(Hello {
            protocol_version: b[0],
            user_hash: b[1],
            core_count,
            this_core: u16_at(b, 4),
            shared_port: u16_at(b, 6),
            frame_size_max_bytes: u32_at(b, 8),
            batch_operations_max: u32_at(b, 12),
            inflight_frames_max: u32_at(b, 16),
            core_ports: (0..core_count as usize).map(|i| u16_at(b, 24 + 2 * i)).collect(),
        })
    }
}

/// The longest token an `auth` frame carries, in bytes (its length is one byte).
pub const AUTH_TOKEN_MAX_BYTES: usize = 255;

/// Body of `auth`: token_len u8 @0, reserved 7 bytes @1 (zero), then `token_len` bytes of
/// token (0..=255, compared byte for byte with `admin.token`).
#[derive(Clone, PartialEq, Eq)]
pub struct Auth {
    /// The token shown.
    pub token: Vec<u8>,
}

// Hand-written so that a token never reaches a log or a panic message.
impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Auth {{ token: <{} bytes> }}", self.token.len())
    }
}

impl Auth {
    /// Size of the body before the token.
    pub const FIXED_SIZE: usize = 8;

    /// Appends the body; `None` (nothing appended) for a token over
    /// [`AUTH_TOKEN_MAX_BYTES`], which the length byte cannot carry.
    pub fn encode(&self, out: &mut Vec<u8>) -> Option<()> {
        let len = u8::try_from(self.token.len()).ok()?;
        out.push(len);
        out.extend_from_slice(&[0; 7]);
        out.extend_from_slice(&self.token);
        Some(())
    }

    /// Decodes a body.
    pub fn decode(b: &[u8]) -> Result<Self, Malformed> {
        if b.len() < Self::FIXED_SIZE || b[1..8] != [0; 7] || b.len() != Self::FIXED_SIZE + b[0] as usize {
            return Err(Malformed);
        }
        Ok(Auth { token: b[Self::FIXED_SIZE..].to_vec() })
    }
}

/// The kind of a pool: counted units, or named seats (seated pools arrive in a later version).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PoolKind {
    /// Interchangeable units counted by quantity.
    Counted = 0,
    /// Named seats in sections and rows (not yet available: creation answers `unsupported`).
    Seated = 1,
}

impl PoolKind {
    /// Decodes a kind byte.
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(PoolKind::Counted),
            1 => Some(PoolKind::Seated),
            _ => None,
        }
    }
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            PoolKind::Counted => "counted",
            PoolKind::Seated => "seated",
        }
    }
}

/// A pool's allocation rules, checked for every new reserve on the user's home core. A
/// field of 0 means "no such rule".
///
/// Layout (48 bytes): max_per_user u64 @0, opens_at_ms u64 @8, closes_at_ms u64 @16,
/// rate_per_s u32 @24, burst u32 @28, max_qty u32 @32, flags u32 @36 (`RULE_FLAG_*`; other
/// bits must be 0), kept_permille u16 @40, priority_min u8 @42, reserved 5 bytes @43.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "server", derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize))]
pub struct PoolRules {
    /// Most units one user may have held, confirmed or pending in the pool at once.
    pub max_per_user: u64,
    /// Reserves before this time (ms since the Unix epoch) answer `not_open`.
    pub opens_at_ms: u64,
    /// Reserves at or after this time (ms since the Unix epoch) answer `closed`.
    pub closes_at_ms: u64,
    /// Reserve attempts per user and second, refilled continuously (token bucket).
    pub rate_per_s: u32,
    /// Attempts a user may make at once (the bucket's size); required with a rate.
    pub burst: u32,
    /// Most units one reserve may ask for.
    pub max_qty: u32,
    /// `RULE_FLAG_*` bits.
    pub flags: u32,
    /// Thousandths of the capacity kept for reserves of priority `priority_min` or more
    /// (0..=1000): other reserves can never take the last `kept` units of the pool.
    pub kept_permille: u16,
    /// The lowest priority that may take the kept units (with `kept_permille` > 0).
    pub priority_min: u8,
}

/// Rule flag: keep every user's activity in the pool (units held, confirmed, released and
/// expired, last activity), also without a limit or a rate.
pub const RULE_FLAG_TRACK_USERS: u32 = 1;

impl PoolRules {
    /// Wire size in bytes.
    pub const SIZE: usize = 48;

    /// Appends the encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.max_per_user.to_le_bytes());
        out.extend_from_slice(&self.opens_at_ms.to_le_bytes());
        out.extend_from_slice(&self.closes_at_ms.to_le_bytes());
        out.extend_from_slice(&self.rate_per_s.to_le_bytes());
        out.extend_from_slice(&self.burst.to_le_bytes());
        out.extend_from_slice(&self.max_qty.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&self.kept_permille.to_le_bytes());
        out.push(self.priority_min);
        out.extend_from_slice(&[0; 5]);
    }

    /// Decodes the first [`Self::SIZE`] bytes of `b`.
    pub fn decode(b: &[u8]) -> Result<Self, Malformed> {
        if b.len() < Self::SIZE || b[43..48] != [0; 5] {
            return Err(Malformed);
        }
        Ok(PoolRules {
            max_per_user: u64_at(b, 0),
            opens_at_ms: u64_at(b, 8),
            closes_at_ms: u64_at(b, 16),
            rate_per_s: u32_at(b, 24),
            burst: u32_at(b, 28),
            max_qty: u32_at(b, 32),
            flags: u32_at(b, 36),
            kept_permille: u16_at(b, 40),
            priority_min: b[42],
        })
    }

    /// Units of a pool of `capacity` kept for priority reserves.
    pub fn kept_units(&self, capacity: u64) -> u64 {
        capacity / 1000 * self.kept_permille as u64 + capacity % 1000 * self.kept_permille as u64 / 1000
    }

    /// True if a reserve of `priority` may take the kept units.
    pub fn may_take_kept(&self, priority: u8) -> bool {
        priority >= self.priority_min
    }

    /// True if the rules need per-user state (a limit per user, a rate, or tracking).
    pub fn per_user(&self) -> bool {
        self.max_per_user > 0 || self.rate_per_s > 0 || self.tracks_users()
    }

    /// True if every user's activity is kept ([`RULE_FLAG_TRACK_USERS`]).
    pub fn tracks_users(&self) -> bool {
        self.flags & RULE_FLAG_TRACK_USERS != 0
    }

    /// True if the rules are consistent: a window that opens before it closes, a burst of at
    /// least 1 with a rate (and none without), a maximum quantity a reservation can hold.
    pub fn valid(&self) -> bool {
        let window = self.opens_at_ms == 0 || self.closes_at_ms == 0 || self.opens_at_ms < self.closes_at_ms;
        let bucket = (self.rate_per_s == 0) == (self.burst == 0);
        let kept = self.kept_permille <= 1000 && (self.kept_permille > 0 || self.priority_min == 0);
        window && bucket && kept && self.max_qty < 1 << 29 && self.flags & !RULE_FLAG_TRACK_USERS == 0
    }
}

/// Request for a user's activity, answered on the user's home core.
///
/// Body (24 bytes): user u128 @0, pool_id u32 @16 (0: every pool), state u8 @20 (only
/// recent events of this kind, a [`super::ReservationState`]: a reservation held,
/// confirmed, released or expired; 0: any), recent u8 @21 (at most this many recent events
/// per pool, newest first), reserved u16 @22.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserActivityRequest {
    /// The user.
    pub user: u128,
    /// One pool, or 0 for every pool.
    pub pool: u32,
    /// Only events of this kind (the state the event put its reservation in; 0: any).
    pub state: u8,
    /// At most this many recent events per pool.
    pub recent: u8,
}

impl UserActivityRequest {
    /// Body size in bytes.
    pub const SIZE: usize = 24;

    /// Appends the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.user.to_le_bytes());
        out.extend_from_slice(&self.pool.to_le_bytes());
        out.extend_from_slice(&[self.state, self.recent, 0, 0]);
    }

    /// Decodes a body.
    pub fn decode(b: &[u8]) -> Result<Self, Malformed> {
        if b.len() != Self::SIZE || b[22..24] != [0; 2] || super::ReservationState::from_u8(b[20]).is_none() {
            return Err(Malformed);
        }
        Ok(UserActivityRequest { user: u128_at(b, 0), pool: u32_at(b, 16), state: b[20], recent: b[21] })
    }
}

/// One recent event of a user in a pool.
///
/// Layout (32 bytes): id u128 @0, at_ms u64 @16, qty u32 @24, state u8 @28 (the
/// reservation's state after the event: held, confirmed, released or expired), reserved 3
/// bytes @29.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActivityEvent {
    /// The reservation.
    pub id: u128,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// Units.
    pub qty: u32,
    /// [`super::ReservationState`] byte.
    pub state: u8,
}

impl ActivityEvent {
    /// Wire size in bytes.
    pub const SIZE: usize = 32;
}

/// A user's activity in one pool (pools whose rules keep per-user state).
///
/// Layout (64 bytes, then the events): pool_id u32 @0, event count u32 @4, held u64 @8,
/// confirmed u64 @16, pending u64 @24, released u64 @32, expired u64 @40, last_activity_ms
/// u64 @48, attempts_left_milli u64 @56 (thousandths of reserve attempts left in a
/// rate-limited pool), then `event count` [`ActivityEvent`]s, newest first. The answer's
/// payload is a count u32 and reserved u32, then the entries by pool id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserActivity {
    /// The pool.
    pub pool: u32,
    /// Units in live holds.
    pub held: u64,
    /// Units confirmed.
    pub confirmed: u64,
    /// Units of reserves waiting for borrowed capacity.
    pub pending: u64,
    /// Units released.
    pub released: u64,
    /// Units expired.
    pub expired: u64,
    /// The user's last operation in the pool, ms since the Unix epoch.
    pub last_activity_ms: u64,
    /// Reserve attempts left, in thousandths (rate-limited pools).
    pub attempts_left_milli: u64,
    /// Recent events, newest first.
    pub events: Vec<ActivityEvent>,
}

impl UserActivity {
    /// Size of the fixed part, before the events.
    pub const SIZE: usize = 64;

    /// Appends the encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.pool.to_le_bytes());
        out.extend_from_slice(&(self.events.len() as u32).to_le_bytes());
        for v in [
            self.held,
            self.confirmed,
            self.pending,
            self.released,
            self.expired,
            self.last_activity_ms,
            self.attempts_left_milli,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for e in &self.events {
            out.extend_from_slice(&e.id.to_le_bytes());
            out.extend_from_slice(&e.at_ms.to_le_bytes());
            out.extend_from_slice(&e.qty.to_le_bytes());
            out.extend_from_slice(&[e.state, 0, 0, 0]);
        }
    }

    /// Decodes a payload: count, reserved, entries.
    pub fn decode_list(b: &[u8]) -> Result<Vec<Self>, Malformed> {
        if b.len() < 8 {
            return Err(Malformed);
        }
        let count = u32_at(b, 0) as usize;
        let mut list = Vec::with_capacity(count.min(1024));
        let mut rest = &b[8..];
        for _ in 0..count {
            let e = rest.get(..Self::SIZE).ok_or(Malformed)?;
            let events = u32_at(e, 4) as usize;
            let end = Self::SIZE + events.checked_mul(ActivityEvent::SIZE).ok_or(Malformed)?;
            let ev = rest.get(Self::SIZE..end).ok_or(Malformed)?;
            list.push(UserActivity {
                pool: u32_at(e, 0),
                held: u64_at(e, 8),
                confirmed: u64_at(e, 16),
                pending: u64_at(e, 24),
                released: u64_at(e, 32),
                expired: u64_at(e, 40),
                last_activity_ms: u64_at(e, 48),
                attempts_left_milli: u64_at(e, 56),
                events: ev
                    .chunks_exact(ActivityEvent::SIZE)
                    .map(|x| ActivityEvent {
                        id: u128_at(x, 0),
                        at_ms: u64_at(x, 16),
                        qty: u32_at(x, 24),
                        state: x[28],
                    })
                    .collect(),
            });
            rest = &rest[end..];
        }
        if !rest.is_empty() {
            return Err(Malformed);
        }
        Ok(list)
    }

    /// Appends a payload: count, reserved, entries.
    pub fn encode_list(list: &[Self], out: &mut Vec<u8>) {
        out.extend_from_slice(&(list.len() as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        for a in list {
            a.encode(out);
        }
    }
}

/// Request to change a pool's rules; answered with the pool's [`PoolInfo`].
///
/// Body (56 bytes): pool_id u32 @0, reserved u32 @4, rules ([`PoolRules`]) @8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSetRules {
    /// The pool.
    pub pool: u32,
    /// Its new rules (they replace the old ones whole).
    pub rules: PoolRules,
}

impl PoolSetRules {
    /// Body size in bytes.
    pub const SIZE: usize = 8 + PoolRules::SIZE;

    /// Appends the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.pool.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        self.rules.encode(out);
    }

    /// Decodes a body.
    pub fn decode(b: &[u8]) -> Result<Self, Malformed> {
        if b.len() != Self::SIZE || b[4..8] != [0; 4] {
            return Err(Malformed);
        }
        Ok(PoolSetRules { pool: u32_at(b, 0), rules: PoolRules::decode(&b[8..])? })
    }
}

/// Request to create a pool.
///
/// Body: capacity u64 @0, hold_ttl_ms_default u32 @8, hold_ttl_ms_max u32 @12, kind u8 @16,
/// active u8 @17, name_len u8 @18, reserved 5 bytes @19, rules ([`PoolRules`], 48 bytes)
/// @24, name (`name_len` bytes) @72.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolCreate {
    /// Unique pool name.
    pub name: String,
    /// Total units.
    pub capacity: u64,
    /// TTL of a hold whose reserve asks for 0, in milliseconds.
    pub hold_ttl_ms_default: u32,
    /// Longest TTL a reserve or extend may ask for, in milliseconds.
    pub hold_ttl_ms_max: u32,
    /// Counted or seated.
    pub kind: u8,
    /// Whether reserves are accepted from the start.
    pub active: bool,
    /// Allocation rules.
    pub rules: PoolRules,
}

impl PoolCreate {
    /// Size of the body before the name.
    pub const FIXED_SIZE: usize = 24 + PoolRules::SIZE;

    /// Appends the body; a name longer than [`POOL_NAME_MAX_BYTES`] is refused and nothing
    /// is appended (other invalid names are the server's to refuse: `invalid_pool_name`).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), TextTooLong> {
        let name_len = text_len("pool name", &self.name, POOL_NAME_MAX_BYTES)?;
        out.extend_from_slice(&self.capacity.to_le_bytes());
        out.extend_from_slice(&self.hold_ttl_ms_default.to_le_bytes());
        out.extend_from_slice(&self.hold_ttl_ms_max.to_le_bytes());
        out.push(self.kind);
        out.push(self.active as u8);
        out.push(name_len);
        out.extend_from_slice(&[0; 5]);
        self.rules.encode(out);
        out.extend_from_slice(self.name.as_bytes());
        Ok(())
    }
    /// Decodes a body; the name is checked for UTF-8 here and for validity by the server.
    pub fn decode(b: &[u8]) -> Result<Self, Malformed> {
        if b.len() < Self::FIXED_SIZE || b[19..24] != [0; 5] || b[17] > 1 {
            return Err(Malformed);
        }
        let name_len = b[18] as usize;
        if b.len() != Self::FIXED_SIZE + name_len {
            return Err(Malformed);
        }
        let rules = PoolRules::decode(&b[24..])?;
        let name = std::str::from_utf8(&b[Self::FIXED_SIZE..]).map_err(|_| Malformed)?.to_owned();
        Ok(PoolCreate {
            name,
            capacity: u64_at(b, 0),
            hold_ttl_ms_default: u32_at(b, 8),
            hold_ttl_ms_max: u32_at(b, 12),
            kind: b[16],
            active: b[17] == 1,
            rules,
        })
    }
}

/// A pool's definition as reported by the server.
///
/// Layout: id u32 @0, kind u8 @4, active u8 @5, name_len u8 @6, description_len u8 @7,
/// capacity u64 @8, hold_ttl_ms_default u32 @16, hold_ttl_ms_max u32 @20, home_core u16 @24,
/// reserved 6 bytes @26, rules ([`PoolRules`], 48 bytes) @32, name @80, description after
/// the name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolInfo {
    /// Pool id (from 1).
    pub id: u32,
    /// Unique name.
    pub name: String,
    /// [`PoolKind`] byte.
    pub kind: u8,
    /// Whether new reserves are accepted.
    pub active: bool,
    /// Total units.
    pub capacity: u64,
    /// Default hold TTL in milliseconds.
    pub hold_ttl_ms_default: u32,
    /// Maximum hold TTL in milliseconds.
    pub hold_ttl_ms_max: u32,
    /// The core that coordinates borrowing for this pool.
    pub home_core: u16,
    /// Allocation rules.
    pub rules: PoolRules,
    /// Free text for operators (empty if none).
    pub description: String,
}

impl PoolInfo {
    /// Fixed part of the encoding, before the name.
    pub const FIXED_SIZE: usize = 32 + PoolRules::SIZE;
    /// Appends the encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.to_le_bytes());
        out.push(self.kind);
        out.push(self.active as u8);
        out.push(self.name.len() as u8);
        out.push(self.description.len() as u8);
        out.extend_from_slice(&self.capacity.to_le_bytes());
        out.extend_from_slice(&self.hold_ttl_ms_default.to_le_bytes());
        out.extend_from_slice(&self.hold_ttl_ms_max.to_le_bytes());
        out.extend_from_slice(&self.home_core.to_le_bytes());
        out.extend_from_slice(&[0; 6]);
        self.rules.encode(out);
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(self.description.as_bytes());
    }
    /// Decodes one entry from the front of `b`; returns it and the bytes it used.
    pub fn decode(b: &[u8]) -> Result<(Self, usize), Malformed> {
        if b.len() < Self::FIXED_SIZE {
            return Err(Malformed);
        }
        let name_end = Self::FIXED_SIZE + b[6] as usize;
        let end = name_end + b[7] as usize;
        if b.len() < end {
            return Err(Malformed);
        }
        let text = |range: std::ops::Range<usize>| std::str::from_utf8(&b[range]).map_err(|_| Malformed);
        let name = text(Self::FIXED_SIZE..name_end)?.to_owned();
        let description = text(name_end..end)?.to_owned();
        Ok((
            PoolInfo {
                id: u32_at(b, 0),
                name,
                kind: b[4],
                active: b[5] == 1,
                capacity: u64_at(b, 8),
                hold_ttl_ms_default: u32_at(b, 16),
                hold_ttl_ms_max: u32_at(b, 20),
                home_core: u16_at(b, 24),
                rules: PoolRules::decode(&b[32..])?,
                description,
            },
            end,
        ))
    }
}

/// Names a pool by id, or by name when the id is 0.
///
/// Body: pool_id u32 @0, name_len u8 @4, reserved 3 bytes @5, name @8.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolRef {
    /// Pool id, or 0 to use `name`.
    pub id: u32,
    /// Pool name when `id` is 0.
    pub name: String,
}

impl PoolRef {
    /// Appends the body; a name longer than [`POOL_NAME_MAX_BYTES`] is refused and nothing
    /// is appended.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), TextTooLong> {
        let name_len = text_len("pool name", &self.name, POOL_NAME_MAX_BYTES)?;
        out.extend_from_slice(&self.id.to_le_bytes());
        out.push(name_len);
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(self.name.as_bytes());
        Ok(())
    }
    /// Decodes a body. The name is read (and must be UTF-8) only when the id is 0; with an
    /// id it is ignored, whatever its bytes, and decoded as empty.
    pub fn decode(b: &[u8]) -> Result<Self, Malformed> {
        if b.len() < 8 || b[5..8] != [0; 3] {
            return Err(Malformed);
        }
        let name_len = b[4] as usize;
        if b.len() != 8 + name_len {
            return Err(Malformed);
        }
        let id = u32_at(b, 0);
        if id != 0 {
            return Ok(PoolRef { id, name: String::new() });
        }
        let name = std::str::from_utf8(&b[8..]).map_err(|_| Malformed)?.to_owned();
        Ok(PoolRef { id, name })
    }
}

/// One core's shard of a pool.
///
/// Layout (48 bytes): core u16 @0, flags u8 @2 (bit 0 drained, bit 1 home, bit 2 recalling),
/// reserved u8 @3, parked u32 @4, capacity u64 @8, held u64 @16, confirmed u64 @24,
/// lent u64 @32, borrowed u64 @40.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardStatus {
    /// Core index.
    pub core: u16,
    /// `SHARD_FLAG_*` bits.
    pub flags: u8,
    /// Reserves waiting on this shard for borrowed capacity.
    pub parked: u32,
    /// Units this shard currently owns.
    pub capacity: u64,
    /// Units held by live holds.
    pub held: u64,
    /// Units confirmed.
    pub confirmed: u64,
    /// Units this shard has sent to other shards, ever.
    pub lent: u64,
    /// Units this shard has received from other shards, ever.
    pub borrowed: u64,
}

/// Shard flag: the pool is drained (its free capacity is gathered at the home core).
pub const SHARD_FLAG_DRAINED: u8 = 1 << 0;
/// Shard flag: this core is the pool's home (it coordinates borrowing).
pub const SHARD_FLAG_HOME: u8 = 1 << 1;
/// Shard flag: the home core is recalling free capacity from the other shards.
pub const SHARD_FLAG_RECALLING: u8 = 1 << 2;

impl ShardStatus {
    /// Wire size in bytes.
    pub const SIZE: usize = 48;
    /// Units free on this shard.
    pub fn available(&self) -> u64 {
        self.capacity.saturating_sub(self.held + self.confirmed)
    }
    /// Appends the encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.core.to_le_bytes());
        out.push(self.flags);
        out.push(0);
        out.extend_from_slice(&self.parked.to_le_bytes());
        for v in [self.capacity, self.held, self.confirmed, self.lent, self.borrowed] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    /// Decodes from `b` (at least `SIZE` bytes).
    pub fn decode(b: &[u8]) -> Self {
        ShardStatus {
            core: u16_at(b, 0),
            flags: b[2],
            parked: u32_at(b, 4),
            capacity: u64_at(b, 8),
            held: u64_at(b, 16),
            confirmed: u64_at(b, 24),
            lent: u64_at(b, 32),
            borrowed: u64_at(b, 40),
        }
    }
}

/// A pool's status: its definition and every core's shard.
///
/// Payload: shard_count u16 @0, reserved 6 bytes @2, then `shard_count` × [`ShardStatus`],
/// then the [`PoolInfo`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolStatus {
    /// The definition.
    pub info: PoolInfo,
    /// One entry per core, by core index.
    pub shards: Vec<ShardStatus>,
}

impl PoolStatus {
    /// Units held across all shards.
    pub fn held(&self) -> u64 {
        self.shards.iter().map(|s| s.held).sum()
    }
    /// Units confirmed across all shards.
    pub fn confirmed(&self) -> u64 {
        self.shards.iter().map(|s| s.confirmed).sum()
    }
    /// Units free across all shards.
    pub fn available(&self) -> u64 {
        self.shards.iter().map(|s| s.available()).sum()
    }
    /// Units in transit between cores when the shards were read: lent minus borrowed.
    /// Shards are read one after the other, so a transfer completed between two reads can
    /// make this negative; `capacity_sum + in_flight` equals the pool capacity regardless.
    pub fn in_flight(&self) -> i128 {
        self.shards.iter().map(|s| s.lent as i128 - s.borrowed as i128).sum()
    }
    /// Sum of the shards' capacities.
    pub fn capacity_sum(&self) -> u64 {
        self.shards.iter().map(|s| s.capacity).sum()
    }
    /// Capacity conservation: shard capacities plus units in transit equal the pool capacity.
    pub fn conserved(&self) -> bool {
        self.capacity_sum() as i128 + self.in_flight() == self.info.capacity as i128
    }
    /// Appends the payload.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.shards.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0; 6]);
        for s in &self.shards {
            s.encode(out);
        }
        self.info.encode(out);
    }
    /// Decodes a payload.
    pub fn decode(b: &[u8]) -> Result<Self, Malformed> {
        if b.len() < 8 {
            return Err(Malformed);
        }
        let n = u16_at(b, 0) as usize;
        let shards_end = 8 + n * ShardStatus::SIZE;
        if b.len() < shards_end {
            return Err(Malformed);
        }
        let shards = (0..n).map(|i| ShardStatus::decode(&b[8 + i * ShardStatus::SIZE..])).collect();
        let (info, used) = PoolInfo::decode(&b[shards_end..])?;
        if shards_end + used != b.len() {
            return Err(Malformed);
        }
        Ok(PoolStatus { info, shards })
    }
}

/// Request for a page of pools.
///
/// Body (8 bytes): start_after u32 @0 (list pools with a larger id), limit u16 @4 (0: as
/// many as fit in a frame), reserved u16 @6. The response payload is `op_count` ×
/// [`PoolInfo`] back to back; the header flag `MORE` says whether more follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolListRequest {
    /// List pools whose id is greater than this.
    pub start_after: u32,
    /// At most this many (0: as many as fit).
    pub limit: u16,
}

impl PoolListRequest {
    /// Body size.
    pub const SIZE: usize = 8;
    /// Appends the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.start_after.to_le_bytes());
        out.extend_from_slice(&self.limit.to_le_bytes());
        out.extend_from_slice(&[0; 2]);
    }
    /// Decodes a body.
    pub fn decode(b: &[u8]) -> Result<Self, Malformed> {
        if b.len() != Self::SIZE || b[6..8] != [0; 2] {
            return Err(Malformed);
        }
        Ok(PoolListRequest { start_after: u32_at(b, 0), limit: u16_at(b, 4) })
    }
}

/// Request to activate or deactivate a pool.
///
/// Body (8 bytes): pool_id u32 @0, active u8 @4 (0 or 1), reserved 3 bytes @5.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSetActive {
    /// Pool id.
    pub pool: u32,
    /// New state.
    pub active: bool,
}

impl PoolSetActive {
    /// Body size.
    pub const SIZE: usize = 8;
    /// Appends the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.pool.to_le_bytes());
        out.push(self.active as u8);
        out.extend_from_slice(&[0; 3]);
    }
    /// Decodes a body.
    pub fn decode(b: &[u8]) -> Result<Self, Malformed> {
        if b.len() != Self::SIZE || b[4] > 1 || b[5..8] != [0; 3] {
            return Err(Malformed);
        }
        Ok(PoolSetActive { pool: u32_at(b, 0), active: b[4] == 1 })
    }
}

/// Body of `pool_set_capacity`: pool u32 @0, reserved u32 @4 (zero), capacity u64 @8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSetCapacity {
    /// Pool id.
    pub pool: u32,
    /// The new capacity, in units (1..=2^60).
    pub capacity: u64,
}

impl PoolSetCapacity {
    /// Body size.
    pub const SIZE: usize = 16;
    /// Appends the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.pool.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.capacity.to_le_bytes());
    }
    /// Decodes a body.
    pub fn decode(b: &[u8]) -> Result<Self, Malformed> {
        if b.len() != Self::SIZE || b[4..8] != [0; 4] {
            return Err(Malformed);
        }
        Ok(PoolSetCapacity { pool: u32_at(b, 0), capacity: u64_at(b, 8) })
    }
}

/// Body of `pool_rename`: pool u32 @0, name_len u8 @4, reserved 3 bytes @5 (zero), then
/// `name_len` bytes of name (1..=64).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolRename {
    /// Pool id.
    pub pool: u32,
    /// The new name.
    pub name: String,
}

impl PoolRename {
    /// Size of the body before the name.
    pub const FIXED_SIZE: usize = 8;
    /// Appends the body; a name longer than [`POOL_NAME_MAX_BYTES`] is refused and nothing
    /// is appended.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), TextTooLong> {
        encode_pool_text(self.pool, "pool name", &self.name, POOL_NAME_MAX_BYTES, out)
    }
    /// Decodes a body. The name's validity is checked by the server (`invalid_pool_name`).
    pub fn decode(b: &[u8]) -> Result<Self, Malformed> {
        let (pool, name) = decode_pool_text(b)?;
        Ok(PoolRename { pool, name: name.into() })
    }
}

/// The body of a pool id and a text (`pool_rename`, `pool_set_description`): pool u32 @0,
/// text length u8 @4, reserved 3 bytes @5 (zero), then the text.
fn encode_pool_text(
    pool: u32,
    field: &'static str,
    text: &str,
    max: usize,
    out: &mut Vec<u8>,
) -> Result<(), TextTooLong> {
    let len = text_len(field, text, max)?;
    out.extend_from_slice(&pool.to_le_bytes());
    out.push(len);
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

/// Decodes [`encode_pool_text`]'s body; the text must be UTF-8.
fn decode_pool_text(b: &[u8]) -> Result<(u32, &str), Malformed> {
    if b.len() < 8 || b[5..8] != [0; 3] || b.len() != 8 + b[4] as usize {
        return Err(Malformed);
    }
    Ok((u32_at(b, 0), std::str::from_utf8(&b[8..]).map_err(|_| Malformed)?))
}

/// Body of `pool_set_description`: pool u32 @0, description_len u8 @4, reserved 3 bytes @5
/// (zero), then `description_len` bytes of UTF-8 text (0..=128; checked by the server).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSetDescription {
    /// Pool id.
    pub pool: u32,
    /// The new description (empty clears it).
    pub description: String,
}

impl PoolSetDescription {
    /// Size of the body before the text.
    pub const FIXED_SIZE: usize = 8;
    /// Appends the body; a description longer than 255 bytes (its length byte) is refused
    /// and nothing is appended (one of 129 to 255 bytes is the server's to refuse:
    /// `invalid_description`).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), TextTooLong> {
        encode_pool_text(self.pool, "description", &self.description, u8::MAX as usize, out)
    }
    /// Decodes a body. The description's validity is checked by the server.
    pub fn decode(b: &[u8]) -> Result<Self, Malformed> {
        let (pool, description) = decode_pool_text(b)?;
        Ok(PoolSetDescription { pool, description: description.into() })
    }
}

/// Per-core counters (plain integers owned by each core, gathered on request).
///
/// Layout (88 bytes): core u16 @0, reserved 6 bytes @2, then u64 counters: connections_open
/// @8, frames @16, operations @24, forwarded_out @32, forwarded_in @40, borrow_messages @48,
/// holds_live @56, log_records @64, log_syncs @72, log_durable_lsn @80.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Core index.
    pub core: u16,
    /// Connections open on this core now.
    pub connections_open: u64,
    /// Request frames read by this core.
    pub frames: u64,
    /// Reserves, confirms, releases and extends applied on this core (its users' operations;
    /// lookups are not counted).
    pub operations: u64,
    /// Operations this core sent to their users' home cores (the proxy hop).
    pub forwarded_out: u64,
    /// Operations other cores sent here.
    pub forwarded_in: u64,
    /// Borrowing messages (borrow, grant, recall, return...) this core sent.
    pub borrow_messages: u64,
    /// Reservation records in this core's table (held and retained).
    pub holds_live: u64,
    /// Records appended to this core's log since start (0 without a log).
    pub log_records: u64,
    /// Durable writes of this core's log since start (one per group commit).
    pub log_syncs: u64,
    /// LSN of the last record of this core's log that is on disk.
    pub log_durable_lsn: u64,
}

impl CoreStats {
    /// Wire size in bytes.
    pub const SIZE: usize = 88;
    /// Appends the encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.core.to_le_bytes());
        out.extend_from_slice(&[0; 6]);
        for v in [
            self.connections_open,
            self.frames,
            self.operations,
            self.forwarded_out,
            self.forwarded_in,
            self.borrow_messages,
            self.holds_live,
            self.log_records,
            self.log_syncs,
            self.log_durable_lsn,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    /// Decodes from `b` (at least `SIZE` bytes).
    pub fn decode(b: &[u8]) -> Self {
        CoreStats {
            core: u16_at(b, 0),
            connections_open: u64_at(b, 8),
            frames: u64_at(b, 16),
            operations: u64_at(b, 24),
            forwarded_out: u64_at(b, 32),
            forwarded_in: u64_at(b, 40),
            borrow_messages: u64_at(b, 48),
            holds_live: u64_at(b, 56),
            log_records: u64_at(b, 64),
            log_syncs: u64_at(b, 72),
            log_durable_lsn: u64_at(b, 80),
        }
    }
}

/// Appends the server-stats payload: core_count u16, reserved 6 bytes, then one
/// [`CoreStats`] per core.
pub fn encode_stats(stats: &[CoreStats], out: &mut Vec<u8>) {
    out.extend_from_slice(&(stats.len() as u16).to_le_bytes());
    out.extend_from_slice(&[0; 6]);
    for s in stats {
        s.encode(out);
    }
}

/// Decodes the server-stats payload.
pub fn decode_stats(b: &[u8]) -> Option<Vec<CoreStats>> {
    if b.len() < 8 {
        return None;
    }
    let n = u16_at(b, 0) as usize;
    if b.len() != 8 + n * CoreStats::SIZE {
        return None;
    }
    Some((0..n).map(|i| CoreStats::decode(&b[8 + i * CoreStats::SIZE..])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: PoolRules = PoolRules {
        max_per_user: 4,
        opens_at_ms: 1_700_000_000_000,
        closes_at_ms: 1_700_000_600_000,
        rate_per_s: 10,
        burst: 20,
        max_qty: 6,
        flags: RULE_FLAG_TRACK_USERS,
        kept_permille: 100,
        priority_min: 5,
    };

    #[test]
    fn a_text_too_long_for_its_length_byte_is_refused_before_encoding() {
        let long = "n".repeat(300);
        let too_long = |field, max| TextTooLong { field, len: 300, max };
        let create = PoolCreate {
            name: long.clone(),
            capacity: 10,
            hold_ttl_ms_default: 1_000,
            hold_ttl_ms_max: 1_000,
            kind: 0,
            active: true,
            rules: RULES,
        };
        let mut out = Vec::new();
        assert_eq!(create.encode(&mut out), Err(too_long("pool name", 64)));
        assert_eq!(PoolRef { id: 0, name: long.clone() }.encode(&mut out), Err(too_long("pool name", 64)));
        assert_eq!(PoolRename { pool: 1, name: long.clone() }.encode(&mut out), Err(too_long("pool name", 64)));
        let describe = PoolSetDescription { pool: 1, description: long.clone() };
        assert_eq!(describe.encode(&mut out), Err(too_long("description", 255)));
        let name_65 = PoolRename { pool: 1, name: "n".repeat(65) };
        assert_eq!(name_65.encode(&mut out), Err(TextTooLong { field: "pool name", len: 65, max: 64 }));
        assert!(out.is_empty(), "nothing was appended");
        let message = too_long("pool name", 64).to_string();
        assert_eq!(message, "the pool name is 300 bytes long; the protocol carries at most 64");

        // The longest texts still fit, and decode back.
        let longest = PoolCreate { name: "n".repeat(64), ..create };
        longest.encode(&mut out).unwrap();
        assert_eq!(PoolCreate::decode(&out), Ok(longest));
        out.clear();
        let longest = PoolSetDescription { pool: 1, description: "d".repeat(255) };
        longest.encode(&mut out).unwrap();
        assert_eq!(PoolSetDescription::decode(&out), Ok(longest));
    }

    #[test]
    fn rules_round_trip_and_are_checked() {
        let mut b = Vec::new();
        PoolSetRules { pool: 9, rules: RULES }.encode(&mut b);
        assert_eq!(b.len(), PoolSetRules::SIZE);
        assert_eq!(PoolSetRules::decode(&b), Ok(PoolSetRules { pool: 9, rules: RULES }));
        b[44] = 2; // an unknown rule flag (flags start at 8 + 36)
        let unknown = PoolSetRules::decode(&b).expect("decodes");
        assert!(!unknown.rules.valid(), "unknown flags are refused as invalid rules");
        assert!(RULES.valid() && RULES.per_user() && PoolRules::default().valid());
        assert!(!PoolRules::default().per_user());
        assert!(!PoolRules { closes_at_ms: RULES.opens_at_ms, ..RULES }.valid(), "a window that never opens");
        assert!(!PoolRules { burst: 0, ..RULES }.valid(), "a rate needs a burst");
        assert!(!PoolRules { rate_per_s: 0, ..RULES }.valid(), "a burst needs a rate");
        assert!(!PoolRules { max_qty: 1 << 29, ..RULES }.valid());
        assert!(PoolRules { opens_at_ms: 0, ..RULES }.valid(), "one end of the window alone");
        assert!(!PoolRules { kept_permille: 1001, ..RULES }.valid(), "more than the whole pool kept");
        assert!(!PoolRules { kept_permille: 0, ..RULES }.valid(), "a priority without a kept share");
        assert_eq!(RULES.kept_units(1_000_003), 100_000);
        assert_eq!(PoolRules { kept_permille: 1000, ..RULES }.kept_units(u64::MAX >> 4), u64::MAX >> 4);
        let mut b = Vec::new();
        PoolSetRules { pool: 9, rules: RULES }.encode(&mut b);
        b[8 + 47] = 1;
        assert_eq!(PoolSetRules::decode(&b), Err(Malformed), "reserved bytes of the rules");
    }

    #[test]
    fn control_bodies_round_trip() {
        let h = Hello {
            protocol_version: 1,
            user_hash: USER_HASH_XXH3_JUMP,
            core_count: 2,
            this_core: 1,
            shared_port: 7400,
            frame_size_max_bytes: 1 << 20,
            batch_operations_max: 8192,
            inflight_frames_max: 1024,
            core_ports: vec![7401, 7402],
        };
        let mut b = Vec::new();
        h.encode(&mut b);
        assert_eq!(Hello::decode(&b), Ok(h));

        let c = PoolCreate {
            name: "demo".into(),
            capacity: 1000,
            hold_ttl_ms_default: 300_000,
            hold_ttl_ms_max: 900_000,
            kind: 0,
            active: true,
            rules: RULES,
        };
        let mut b = Vec::new();
        c.encode(&mut b).unwrap();
        assert_eq!(PoolCreate::decode(&b), Ok(c));
        b.push(b'x');
        assert_eq!(PoolCreate::decode(&b), Err(Malformed));

        let st = PoolStatus {
            info: PoolInfo {
                id: 3,
                name: "p".into(),
                kind: 0,
                active: true,
                capacity: 10,
                hold_ttl_ms_default: 1,
                hold_ttl_ms_max: 2,
                home_core: 1,
                rules: RULES,
                description: "Friday, hall B".into(),
            },
            shards: vec![
                ShardStatus { core: 0, capacity: 4, held: 1, confirmed: 1, lent: 3, ..Default::default() },
                ShardStatus { core: 1, capacity: 6, held: 2, borrowed: 3, ..Default::default() },
            ],
        };
        let mut b = Vec::new();
        st.encode(&mut b);
        let back = PoolStatus::decode(&b).unwrap();
        assert_eq!(back, st);
        assert!(back.conserved());
        assert_eq!(back.available(), 2 + 4);
    }

    #[test]
    fn auth_bodies_round_trip_and_are_checked() {
        let mut b = Vec::new();
        Auth { token: b"s3cret".to_vec() }.encode(&mut b).unwrap();
        assert_eq!(b, b"\x06\0\0\0\0\0\0\0s3cret");
        assert_eq!(Auth::decode(&b), Ok(Auth { token: b"s3cret".to_vec() }));
        assert_eq!(format!("{:?}", Auth::decode(&b).unwrap()), "Auth { token: <6 bytes> }", "never printed");
        b[3] = 1;
        assert_eq!(Auth::decode(&b), Err(Malformed), "reserved bytes");
        b[3] = 0;
        b.push(b'x');
        assert_eq!(Auth::decode(&b), Err(Malformed), "length byte and body disagree");
        assert_eq!(Auth { token: vec![b'a'; 256] }.encode(&mut Vec::new()), None, "too long for its length byte");
        assert!(Auth { token: vec![b'a'; 255] }.encode(&mut Vec::new()).is_some());
    }

    #[test]
    fn a_pool_reference_reads_its_name_only_without_an_id() {
        let body = |id: u32, name: &[u8]| {
            let mut b = id.to_le_bytes().to_vec();
            b.extend_from_slice(&[name.len() as u8, 0, 0, 0]);
            b.extend_from_slice(name);
            b
        };
        assert_eq!(PoolRef::decode(&body(7, b"\xff\xfe")), Ok(PoolRef { id: 7, name: String::new() }));
        assert_eq!(PoolRef::decode(&body(7, b"other")), Ok(PoolRef { id: 7, name: String::new() }));
        assert_eq!(PoolRef::decode(&body(0, b"\xff\xfe")), Err(Malformed), "a name in use must be UTF-8");
        assert_eq!(PoolRef::decode(&body(0, b"demo")), Ok(PoolRef { id: 0, name: "demo".into() }));
        let mut short = body(7, b"ab");
        short.pop();
        assert_eq!(PoolRef::decode(&short), Err(Malformed), "the length is checked with an id too");
    }

    #[test]
    fn pool_names() {
        assert!(valid_pool_name("demo"));
        assert!(valid_pool_name(&"a".repeat(64)));
        assert!(!valid_pool_name(&"a".repeat(65)));
        assert!(!valid_pool_name(""));
        assert!(!valid_pool_name("two words"));
    }
}
