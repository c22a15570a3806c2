//! Fixed-size records of the hot operations (reserve, confirm, release, extend, lookup) and
//! of their results. A batch frame's body is `op_count` records of one kind back to back;
//! its response body is `op_count` result records in the same order.
//!
//! Ids (reservation, user, commit reference) are 128-bit little-endian. Reserved bytes must
//! be zero in requests and are zero in responses.

/// Reads a little-endian `u32` at `off`.
pub(crate) fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
/// Reads a little-endian `u64` at `off`.
pub(crate) fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}
/// Reads a little-endian `u128` at `off`.
pub(crate) fn u128_at(b: &[u8], off: usize) -> u128 {
    u128::from_le_bytes(b[off..off + 16].try_into().unwrap())
}
/// Reads a little-endian `u16` at `off`.
pub(crate) fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn all_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// A record whose reserved bytes were not zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReservedNotZero;

/// The life of a reservation: held, then exactly one of confirmed, released or expired.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReservationState {
    /// No such reservation (in results of refused operations).
    None = 0,
    /// Units are held until `expires_at_ms`.
    Held = 1,
    /// Units are taken for good.
    Confirmed = 2,
    /// Units were given back by the client.
    Released = 3,
    /// Units were given back because the hold's time ran out.
    Expired = 4,
}

impl ReservationState {
    /// Decodes a state byte.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::None,
            1 => Self::Held,
            2 => Self::Confirmed,
            3 => Self::Released,
            4 => Self::Expired,
            _ => return None,
        })
    }
    /// Lower-case name for output.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Held => "held",
            Self::Confirmed => "confirmed",
            Self::Released => "released",
            Self::Expired => "expired",
        }
    }
    /// True once the reservation can no longer change.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Confirmed | Self::Released | Self::Expired)
    }
}

/// Hold `qty` units of `pool` for `user` under the client-chosen id `id`.
///
/// Layout (48 bytes): id u128 @0, user u128 @16, pool u32 @32, qty u32 @36, ttl_ms u32 @40,
/// priority u8 @44, reserved 3 bytes @45.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReserveOp {
    /// Reservation id, chosen by the client; the idempotency key. Not 0.
    pub id: u128,
    /// User id; decides the home core. Not 0.
    pub user: u128,
    /// Pool id.
    pub pool: u32,
    /// Units to hold: 1 to 536,870,911 (2^29 - 1).
    pub qty: u32,
    /// Hold time in milliseconds; 0 means the pool's default.
    pub ttl_ms: u32,
    /// Request priority (used by pool rules of a later version; carried and ignored today).
    pub priority: u8,
}

impl ReserveOp {
    /// Wire size in bytes.
    pub const SIZE: usize = 48;
    /// Encodes into `out`.
    pub fn encode(&self, out: &mut [u8]) {
        out[..Self::SIZE].fill(0);
        out[0..16].copy_from_slice(&self.id.to_le_bytes());
        out[16..32].copy_from_slice(&self.user.to_le_bytes());
        out[32..36].copy_from_slice(&self.pool.to_le_bytes());
        out[36..40].copy_from_slice(&self.qty.to_le_bytes());
        out[40..44].copy_from_slice(&self.ttl_ms.to_le_bytes());
        out[44] = self.priority;
    }
    /// Decodes from `b` (at least `SIZE` bytes).
    pub fn decode(b: &[u8]) -> Result<Self, ReservedNotZero> {
        if !all_zero(&b[45..48]) {
            return Err(ReservedNotZero);
        }
        Ok(Self {
            id: u128_at(b, 0),
            user: u128_at(b, 16),
            pool: u32_at(b, 32),
            qty: u32_at(b, 36),
            ttl_ms: u32_at(b, 40),
            priority: b[44],
        })
    }
}

/// Make a hold permanent, storing an opaque commit (payment) reference with it.
///
/// Layout (48 bytes): id u128 @0, user u128 @16, commit_ref u128 @32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConfirmOp {
    /// Reservation id.
    pub id: u128,
    /// The reservation's user.
    pub user: u128,
    /// Opaque reference stored with the confirmation (payment id, order id...).
    pub commit_ref: u128,
}

impl ConfirmOp {
    /// Wire size in bytes.
    pub const SIZE: usize = 48;
    /// Encodes into `out`.
    pub fn encode(&self, out: &mut [u8]) {
        out[0..16].copy_from_slice(&self.id.to_le_bytes());
        out[16..32].copy_from_slice(&self.user.to_le_bytes());
        out[32..48].copy_from_slice(&self.commit_ref.to_le_bytes());
    }
    /// Decodes from `b`.
    pub fn decode(b: &[u8]) -> Result<Self, ReservedNotZero> {
        Ok(Self { id: u128_at(b, 0), user: u128_at(b, 16), commit_ref: u128_at(b, 32) })
    }
}

/// Give a hold back.
///
/// Layout (32 bytes): id u128 @0, user u128 @16.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReleaseOp {
    /// Reservation id.
    pub id: u128,
    /// The reservation's user.
    pub user: u128,
}

impl ReleaseOp {
    /// Wire size in bytes.
    pub const SIZE: usize = 32;
    /// Encodes into `out`.
    pub fn encode(&self, out: &mut [u8]) {
        out[0..16].copy_from_slice(&self.id.to_le_bytes());
        out[16..32].copy_from_slice(&self.user.to_le_bytes());
    }
    /// Decodes from `b`.
    pub fn decode(b: &[u8]) -> Result<Self, ReservedNotZero> {
        Ok(Self { id: u128_at(b, 0), user: u128_at(b, 16) })
    }
}

/// Move a hold's expiry to `now + ttl_ms`, or keep it if that is later (extending never
/// shortens a hold). A `ttl_ms` of 0 or above the pool's maximum is refused (`invalid_ttl`).
///
/// Layout (48 bytes): id u128 @0, user u128 @16, ttl_ms u32 @32, reserved 12 bytes @36.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExtendOp {
    /// Reservation id.
    pub id: u128,
    /// The reservation's user.
    pub user: u128,
    /// New time to live from now, in milliseconds; at least 1.
    pub ttl_ms: u32,
}

impl ExtendOp {
    /// Wire size in bytes.
    pub const SIZE: usize = 48;
    /// Encodes into `out`.
    pub fn encode(&self, out: &mut [u8]) {
        out[..Self::SIZE].fill(0);
        out[0..16].copy_from_slice(&self.id.to_le_bytes());
        out[16..32].copy_from_slice(&self.user.to_le_bytes());
        out[32..36].copy_from_slice(&self.ttl_ms.to_le_bytes());
    }
    /// Decodes from `b`.
    pub fn decode(b: &[u8]) -> Result<Self, ReservedNotZero> {
        if !all_zero(&b[36..48]) {
            return Err(ReservedNotZero);
        }
        Ok(Self { id: u128_at(b, 0), user: u128_at(b, 16), ttl_ms: u32_at(b, 32) })
    }
}

/// Read a reservation. A user of 0 asks every core (slow; for operators and the CLI).
///
/// Layout (32 bytes): id u128 @0, user u128 @16.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LookupOp {
    /// Reservation id.
    pub id: u128,
    /// The reservation's user, or 0 when unknown.
    pub user: u128,
}

impl LookupOp {
    /// Wire size in bytes.
    pub const SIZE: usize = 32;
    /// Encodes into `out`.
    pub fn encode(&self, out: &mut [u8]) {
        out[0..16].copy_from_slice(&self.id.to_le_bytes());
        out[16..32].copy_from_slice(&self.user.to_le_bytes());
    }
    /// Decodes from `b`.
    pub fn decode(b: &[u8]) -> Result<Self, ReservedNotZero> {
        Ok(Self { id: u128_at(b, 0), user: u128_at(b, 16) })
    }
}

/// Result flag: the operation was an idempotent repeat; nothing changed.
pub const RESULT_FLAG_REPEAT: u8 = 1 << 0;

/// Result of a reserve, confirm, release or extend.
///
/// Layout (24 bytes): status u8 @0, state u8 @1, flags u8 @2, reserved 5 bytes @3,
/// expires_at_ms u64 @8, available u64 @16.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpResult {
    /// Outcome (a [`super::Status`] code).
    pub status: u8,
    /// The reservation's state after the operation ([`ReservationState`]).
    pub state: u8,
    /// `RESULT_FLAG_*` bits.
    pub flags: u8,
    /// For a held reservation, when it expires (ms since the Unix epoch); otherwise 0.
    pub expires_at_ms: u64,
    /// Capacity hint: units available in the pool's shard on the core that decided, after
    /// the operation (`u64::MAX` when unknown). Clients use it to track capacity.
    pub available: u64,
}

impl OpResult {
    /// Wire size in bytes.
    pub const SIZE: usize = 24;
    /// A result with only a status.
    pub fn status(status: super::Status) -> Self {
        OpResult {
            status: status as u8,
            state: ReservationState::None as u8,
            flags: 0,
            expires_at_ms: 0,
            available: u64::MAX,
        }
    }
    /// Encodes into `out`.
    pub fn encode(&self, out: &mut [u8]) {
        out[0] = self.status;
        out[1] = self.state;
        out[2] = self.flags;
        out[3..8].fill(0);
        out[8..16].copy_from_slice(&self.expires_at_ms.to_le_bytes());
        out[16..24].copy_from_slice(&self.available.to_le_bytes());
    }
    /// Decodes from `b`.
    pub fn decode(b: &[u8]) -> Self {
        OpResult { status: b[0], state: b[1], flags: b[2], expires_at_ms: u64_at(b, 8), available: u64_at(b, 16) }
    }
}

/// Result of a lookup.
///
/// Layout (56 bytes): status u8 @0, state u8 @1, reserved 2 bytes @2, qty u32 @4,
/// pool u32 @8, reserved u32 @12, expires_at_ms u64 @16, user u128 @24, commit_ref u128 @40.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LookupResult {
    /// Outcome (a [`super::Status`] code).
    pub status: u8,
    /// [`ReservationState`].
    pub state: u8,
    /// Units held or confirmed.
    pub qty: u32,
    /// Pool id.
    pub pool: u32,
    /// Held: when the hold expires. Final states: until when the record is kept for
    /// idempotent repeats (ms since the Unix epoch).
    pub expires_at_ms: u64,
    /// The reservation's user.
    pub user: u128,
    /// The commit reference of a confirmed reservation; 0 otherwise.
    pub commit_ref: u128,
}

impl LookupResult {
    /// Wire size in bytes.
    pub const SIZE: usize = 56;
    /// A result with only a status.
    pub fn status(status: super::Status) -> Self {
        LookupResult { status: status as u8, state: 0, qty: 0, pool: 0, expires_at_ms: 0, user: 0, commit_ref: 0 }
    }
    /// Encodes into `out`.
    pub fn encode(&self, out: &mut [u8]) {
        out[0] = self.status;
        out[1] = self.state;
        out[2] = 0;
        out[3] = 0;
        out[4..8].copy_from_slice(&self.qty.to_le_bytes());
        out[8..12].copy_from_slice(&self.pool.to_le_bytes());
        out[12..16].fill(0);
        out[16..24].copy_from_slice(&self.expires_at_ms.to_le_bytes());
        out[24..40].copy_from_slice(&self.user.to_le_bytes());
        out[40..56].copy_from_slice(&self.commit_ref.to_le_bytes());
    }
    /// Decodes from `b`.
    pub fn decode(b: &[u8]) -> Self {
        LookupResult {
            status: b[0],
            state: b[1],
            qty: u32_at(b, 4),
            pool: u32_at(b, 8),
            expires_at_ms: u64_at(b, 16),
            user: u128_at(b, 24),
            commit_ref: u128_at(b, 40),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let r = ReserveOp { id: u128::MAX - 1, user: 42, pool: 7, qty: 3, ttl_ms: 60_000, priority: 2 };
        let mut b = [0xAAu8; ReserveOp::SIZE];
        r.encode(&mut b);
        assert_eq!(ReserveOp::decode(&b), Ok(r));
        b[46] = 1;
        assert_eq!(ReserveOp::decode(&b), Err(ReservedNotZero));

        let e = ExtendOp { id: 1, user: 2, ttl_ms: 3 };
        let mut b = [0u8; ExtendOp::SIZE];
        e.encode(&mut b);
        assert_eq!(ExtendOp::decode(&b), Ok(e));

        let res = OpResult { status: 22, state: 1, flags: RESULT_FLAG_REPEAT, expires_at_ms: 99, available: 5 };
        let mut b = [0u8; OpResult::SIZE];
        res.encode(&mut b);
        assert_eq!(OpResult::decode(&b), res);

        let l = LookupResult { status: 0, state: 2, qty: 4, pool: 9, expires_at_ms: 1, user: 77, commit_ref: 88 };
        let mut b = [0u8; LookupResult::SIZE];
        l.encode(&mut b);
        assert_eq!(LookupResult::decode(&b), l);
    }
}

/// A hot operation that travels in batches: its opcode, record size and result type.
/// [`encode_batch`] and [`decode_batch_results`] build on it, for any client.
pub trait BatchOp: Sized {
    /// The batch opcode.
    const OPCODE: super::Opcode;
    /// Size of one request record.
    const SIZE: usize;
    /// Size of one result record.
    const RESULT_SIZE: usize;
    /// The result record type.
    type Result;
    /// Writes the request record into `out` (`SIZE` bytes).
    fn encode_into(&self, out: &mut [u8]);
    /// Reads one result record.
    fn decode_result(b: &[u8]) -> Self::Result;
}

macro_rules! batch_op {
    ($op:ty, $opcode:ident, $result:ty) => {
        impl BatchOp for $op {
            const OPCODE: super::Opcode = super::Opcode::$opcode;
            const SIZE: usize = <$op>::SIZE;
            const RESULT_SIZE: usize = <$result>::SIZE;
            type Result = $result;
            fn encode_into(&self, out: &mut [u8]) {
                self.encode(out)
            }
            fn decode_result(b: &[u8]) -> $result {
                <$result>::decode(b)
            }
        }
    };
}

batch_op!(ReserveOp, Reserve, OpResult);
batch_op!(ConfirmOp, Confirm, OpResult);
batch_op!(ReleaseOp, Release, OpResult);
batch_op!(ExtendOp, Extend, OpResult);
batch_op!(LookupOp, Lookup, LookupResult);

/// Appends a request frame carrying `ops` (at most 65535) to `out`.
pub fn encode_batch<T: BatchOp>(request_id: u64, ops: &[T], out: &mut Vec<u8>) {
    assert!(!ops.is_empty() && ops.len() <= u16::MAX as usize, "a batch has 1..=65535 operations");
    let body_len = ops.len() * T::SIZE;
    super::Header::request(T::OPCODE, request_id, ops.len() as u16, body_len as u32).append_to(out);
    let start = out.len();
    out.resize(start + body_len, 0);
    for (op, chunk) in ops.iter().zip(out[start..].chunks_exact_mut(T::SIZE)) {
        op.encode_into(chunk);
    }
}

/// Decodes the result records of a batch response body; `None` if the size is wrong.
pub fn decode_batch_results<T: BatchOp>(op_count: u16, body: &[u8]) -> Option<Vec<T::Result>> {
    if body.len() != op_count as usize * T::RESULT_SIZE {
        return None;
    }
    Some(body.chunks_exact(T::RESULT_SIZE).map(T::decode_result).collect())
}
