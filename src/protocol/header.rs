//! The 32-byte frame header and the opcodes. Every frame, request or response, starts with
//! one; all integers are little-endian. The byte layout is documented in docs/PROTOCOL.md.

use super::status::Status;

/// The four bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"SCAP";
/// The protocol version this build speaks.
pub const VERSION: u8 = 1;
/// The size of a header in bytes.
pub const HEADER_SIZE: usize = 32;

/// Header flag: the frame is a response.
pub const FLAG_RESPONSE: u16 = 1 << 0;
/// Header flag (responses to `pool_list` only): more pools follow after the last one listed.
pub const FLAG_MORE: u16 = 1 << 1;

/// What a frame asks for. Batchable opcodes carry `op_count` fixed-size records.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Opcode {
    /// Handshake: the server answers with its topology and limits.
    Hello = 0x01,
    /// No-op round trip.
    Ping = 0x02,
    /// Shows the admin token: the connection may then change pools.
    Auth = 0x03,
    /// Batch of reserves (hold `qty` units for a TTL).
    Reserve = 0x10,
    /// Batch of confirms (make a hold permanent).
    Confirm = 0x11,
    /// Batch of releases (give a hold back).
    Release = 0x12,
    /// Batch of extends (move a hold's expiry).
    Extend = 0x13,
    /// Batch of lookups (a reservation's state).
    Lookup = 0x14,
    /// Create a pool.
    PoolCreate = 0x20,
    /// A pool's capacity, held, confirmed and available units, in total and per shard.
    PoolStatus = 0x21,
    /// A page of pool definitions.
    PoolList = 0x22,
    /// Activate or deactivate a pool.
    PoolSetActive = 0x23,
    /// Replace a pool's rules.
    PoolSetRules = 0x24,
    /// A user's activity in one pool or every pool.
    UserActivity = 0x25,
    /// Change a pool's capacity (grow at once; shrink no lower than what is handed out).
    PoolSetCapacity = 0x26,
    /// Rename a pool.
    PoolRename = 0x27,
    /// Replace a pool's description.
    PoolSetDescription = 0x28,
    /// Per-core counters.
    ServerStats = 0x30,
    /// Response only: a frame-level error; the body is a UTF-8 message.
    Error = 0xFF,
}

impl Opcode {
    /// Decodes an opcode byte; `None` if it is not defined.
    pub fn from_u8(byte: u8) -> Option<Opcode> {
        Some(match byte {
            0x01 => Opcode::Hello,
            0x02 => Opcode::Ping,
            0x03 => Opcode::Auth,
            0x10 => Opcode::Reserve,
            0x11 => Opcode::Confirm,
            0x12 => Opcode::Release,
            0x13 => Opcode::Extend,
            0x14 => Opcode::Lookup,
            0x20 => Opcode::PoolCreate,
            0x21 => Opcode::PoolStatus,
            0x22 => Opcode::PoolList,
            0x23 => Opcode::PoolSetActive,
            0x24 => Opcode::PoolSetRules,
            0x25 => Opcode::UserActivity,
            0x26 => Opcode::PoolSetCapacity,
            0x27 => Opcode::PoolRename,
            0x28 => Opcode::PoolSetDescription,
            0x30 => Opcode::ServerStats,
            0xFF => Opcode::Error,
            _ => return None,
        })
    }

    /// The size of one request record for batchable opcodes; `None` for the others.
    pub fn request_record_size(self) -> Option<usize> {
        use super::ops::{ConfirmOp, ExtendOp, LookupOp, ReleaseOp, ReserveOp};
        match self {
            Opcode::Reserve => Some(ReserveOp::SIZE),
            Opcode::Confirm => Some(ConfirmOp::SIZE),
            Opcode::Release => Some(ReleaseOp::SIZE),
            Opcode::Extend => Some(ExtendOp::SIZE),
            Opcode::Lookup => Some(LookupOp::SIZE),
            _ => None,
        }
    }

    /// The size of one response record for batchable opcodes; `None` for the others.
    pub fn response_record_size(self) -> Option<usize> {
        use super::ops::{LookupResult, OpResult};
        match self {
            Opcode::Reserve | Opcode::Confirm | Opcode::Release | Opcode::Extend => Some(OpResult::SIZE),
            Opcode::Lookup => Some(LookupResult::SIZE),
            _ => None,
        }
    }

    /// True for the operations that change a pool: they need a connection that showed the
    /// admin token (`auth`), unless the server leaves control open. Everything else,
    /// reads of pools included, is open to any client.
    pub fn changes_pool(self) -> bool {
        matches!(
            self,
            Opcode::PoolCreate
                | Opcode::PoolSetActive
                | Opcode::PoolSetRules
                | Opcode::PoolSetCapacity
                | Opcode::PoolRename
                | Opcode::PoolSetDescription
        )
    }

    /// Lower-case name for messages and docs.
    pub fn name(self) -> &'static str {
        match self {
            Opcode::Hello => "hello",
            Opcode::Ping => "ping",
            Opcode::Auth => "auth",
            Opcode::Reserve => "reserve",
            Opcode::Confirm => "confirm",
            Opcode::Release => "release",
            Opcode::Extend => "extend",
            Opcode::Lookup => "lookup",
            Opcode::PoolCreate => "pool_create",
            Opcode::PoolStatus => "pool_status",
            Opcode::PoolList => "pool_list",
            Opcode::PoolSetActive => "pool_set_active",
            Opcode::PoolSetRules => "pool_set_rules",
            Opcode::UserActivity => "user_activity",
            Opcode::PoolSetCapacity => "pool_set_capacity",
            Opcode::PoolRename => "pool_rename",
            Opcode::PoolSetDescription => "pool_set_description",
            Opcode::ServerStats => "server_stats",
            Opcode::Error => "error",
        }
    }
}

/// A decoded frame header.
///
/// | offset | size | field            |
/// |--------|------|------------------|
/// | 0      | 4    | magic `SCAP`     |
/// | 4      | 1    | version          |
/// | 5      | 1    | opcode           |
/// | 6      | 2    | flags            |
/// | 8      | 8    | request_id       |
/// | 16     | 4    | body_len         |
/// | 20     | 2    | op_count         |
/// | 22     | 1    | status           |
/// | 23     | 1    | reserved (0)     |
/// | 24     | 4    | retry_after_ms   |
/// | 28     | 4    | reserved (0)     |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The raw opcode byte (validated by [`decode_header`]).
    pub opcode: u8,
    /// `FLAG_*` bits.
    pub flags: u16,
    /// Chosen by the client; echoed in the response so that pipelined responses can be matched.
    pub request_id: u64,
    /// Bytes after the header.
    pub body_len: u32,
    /// Records in the body (batchable opcodes), or 0/1 for the others.
    pub op_count: u16,
    /// Frame-level status of a response; 0 in requests.
    pub status: u8,
    /// With `busy`: how long the client should wait before retrying, in milliseconds.
    pub retry_after_ms: u32,
}

const OFF_VERSION: usize = 4;
const OFF_OPCODE: usize = 5;
const OFF_FLAGS: usize = 6;
const OFF_REQUEST_ID: usize = 8;
const OFF_BODY_LEN: usize = 16;
const OFF_OP_COUNT: usize = 20;
const OFF_STATUS: usize = 22;
const OFF_RESERVED_A: usize = 23;
const OFF_RETRY_AFTER: usize = 24;
const OFF_RESERVED_B: usize = 28;
const _: () = assert!(OFF_RESERVED_B + 4 == HEADER_SIZE);

impl Header {
    /// A request header for `opcode` with `op_count` records and `body_len` bytes of body.
    pub fn request(opcode: Opcode, request_id: u64, op_count: u16, body_len: u32) -> Header {
        Header { opcode: opcode as u8, flags: 0, request_id, body_len, op_count, status: 0, retry_after_ms: 0 }
    }

    /// A response header answering a request with `request_id`.
    pub fn response(opcode: u8, request_id: u64, status: Status, op_count: u16, body_len: u32) -> Header {
        Header { opcode, flags: FLAG_RESPONSE, request_id, body_len, op_count, status: status as u8, retry_after_ms: 0 }
    }

    /// The opcode, if defined.
    pub fn opcode(&self) -> Option<Opcode> {
        Opcode::from_u8(self.opcode)
    }

    /// Writes the 32 header bytes.
    pub fn encode(&self, out: &mut [u8; HEADER_SIZE]) {
        out[0..4].copy_from_slice(&MAGIC);
        out[OFF_VERSION] = VERSION;
        out[OFF_OPCODE] = self.opcode;
        out[OFF_FLAGS..OFF_FLAGS + 2].copy_from_slice(&self.flags.to_le_bytes());
        out[OFF_REQUEST_ID..OFF_REQUEST_ID + 8].copy_from_slice(&self.request_id.to_le_bytes());
        out[OFF_BODY_LEN..OFF_BODY_LEN + 4].copy_from_slice(&self.body_len.to_le_bytes());
        out[OFF_OP_COUNT..OFF_OP_COUNT + 2].copy_from_slice(&self.op_count.to_le_bytes());
        out[OFF_STATUS] = self.status;
        out[OFF_RESERVED_A] = 0;
        out[OFF_RETRY_AFTER..OFF_RETRY_AFTER + 4].copy_from_slice(&self.retry_after_ms.to_le_bytes());
        out[OFF_RESERVED_B..OFF_RESERVED_B + 4].copy_from_slice(&[0; 4]);
    }

    /// Appends the 32 header bytes to `out`.
    pub fn append_to(&self, out: &mut Vec<u8>) {
        let mut bytes = [0u8; HEADER_SIZE];
        self.encode(&mut bytes);
        out.extend_from_slice(&bytes);
    }
}

/// Why a header was refused, with the request id if it could be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderError {
    /// The frame-level status to answer with.
    pub status: Status,
    /// The request id from the header (0 when the magic was wrong).
    pub request_id: u64,
}

/// Decodes and checks a header without looking at the body, in this order: magic, version,
/// opcode, reserved bytes. Size limits are checked by the frame parser, which knows them.
pub fn decode_header(bytes: &[u8; HEADER_SIZE]) -> Result<Header, HeaderError> {
    let fail = |status, request_id| Err(HeaderError { status, request_id });
    if bytes[0..4] != MAGIC {
        return fail(Status::BadMagic, 0);
    }
    let request_id = u64::from_le_bytes(bytes[OFF_REQUEST_ID..OFF_REQUEST_ID + 8].try_into().unwrap());
    if bytes[OFF_VERSION] != VERSION {
        return fail(Status::UnsupportedVersion, request_id);
    }
    let header = Header {
        opcode: bytes[OFF_OPCODE],
        flags: u16::from_le_bytes([bytes[OFF_FLAGS], bytes[OFF_FLAGS + 1]]),
        request_id,
        body_len: u32::from_le_bytes(bytes[OFF_BODY_LEN..OFF_BODY_LEN + 4].try_into().unwrap()),
        op_count: u16::from_le_bytes([bytes[OFF_OP_COUNT], bytes[OFF_OP_COUNT + 1]]),
        status: bytes[OFF_STATUS],
        retry_after_ms: u32::from_le_bytes(bytes[OFF_RETRY_AFTER..OFF_RETRY_AFTER + 4].try_into().unwrap()),
    };
    if header.opcode().is_none() {
        return fail(Status::UnknownOpcode, request_id);
    }
    let reserved_b = &bytes[OFF_RESERVED_B..OFF_RESERVED_B + 4];
    if bytes[OFF_RESERVED_A] != 0 || reserved_b != [0; 4] {
        return fail(Status::ReservedNotZero, request_id);
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = Header {
            opcode: Opcode::Reserve as u8,
            flags: FLAG_RESPONSE,
            request_id: 0x0102_0304_0506_0708,
            body_len: 4800,
            op_count: 100,
            status: Status::Busy as u8,
            retry_after_ms: 25,
        };
        let mut bytes = [0u8; HEADER_SIZE];
        h.encode(&mut bytes);
        assert_eq!(&bytes[0..4], b"SCAP");
        assert_eq!(bytes[8], 0x08, "request id is little-endian");
        assert_eq!(decode_header(&bytes), Ok(h));
    }

    #[test]
    fn header_refusals_are_precise() {
        let mut bytes = [0u8; HEADER_SIZE];
        Header::request(Opcode::Ping, 7, 0, 0).encode(&mut bytes);
        let mut bad = bytes;
        bad[0] = b'X';
        assert_eq!(decode_header(&bad).unwrap_err().status, Status::BadMagic);
        let mut bad = bytes;
        bad[4] = 9;
        assert_eq!(decode_header(&bad).unwrap_err(), HeaderError { status: Status::UnsupportedVersion, request_id: 7 });
        let mut bad = bytes;
        bad[5] = 0x55;
        assert_eq!(decode_header(&bad).unwrap_err().status, Status::UnknownOpcode);
        let mut bad = bytes;
        bad[30] = 1;
        assert_eq!(decode_header(&bad).unwrap_err().status, Status::ReservedNotZero);
    }
}
