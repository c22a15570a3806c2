//! The frame parser: finds whole frames at the front of a byte buffer and checks every
//! header field against the limits before the body has even arrived, so that an oversize or
//! malformed frame is refused at once and a partial frame simply waits for its bytes.

use super::control::{
    AUTH_TOKEN_MAX_BYTES, Auth, POOL_NAME_MAX_BYTES, PoolCreate, PoolListRequest, PoolRename, PoolSetActive,
    PoolSetCapacity, PoolSetDescription, PoolSetRules, UserActivityRequest,
};
use super::header::{HEADER_SIZE, Header, MAGIC, Opcode, VERSION, decode_header};
use super::status::Status;

/// The limits a frame is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest frame, header included, in bytes.
    pub frame_size_max_bytes: u32,
    /// Most records in one batch frame.
    pub batch_operations_max: u32,
}

/// A refused frame: the status to answer with, the request id if known, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameError {
    /// Frame-level status.
    pub status: Status,
    /// Request id from the header, 0 if it could not be read.
    pub request_id: u64,
    /// A short human-readable reason.
    pub message: &'static str,
}

/// Looks at the front of `buf`. Returns `Ok(None)` while more bytes are needed,
/// `Ok(Some((header, frame_len)))` once a whole valid frame is there, or the reason to
/// refuse it. Checks run in this order: magic, version, opcode, reserved fields, request
/// flags, frame size, operation count, body size for the opcode.
pub fn next_frame(buf: &[u8], limits: &FrameLimits) -> Result<Option<(Header, usize)>, FrameError> {
    if buf.len() < HEADER_SIZE {
        // Refuse garbage early instead of waiting for 32 bytes that may never come.
        let n = buf.len().min(4);
        if buf[..n] != MAGIC[..n] {
            return Err(FrameError {
                status: Status::BadMagic,
                request_id: 0,
                message: "frame does not start with SCAP",
            });
        }
        if buf.len() > 4 && buf[4] != VERSION {
            return Err(FrameError {
                status: Status::UnsupportedVersion,
                request_id: 0,
                message: "protocol version not supported",
            });
        }
        return Ok(None);
    }
    let header = decode_header(buf[..HEADER_SIZE].try_into().unwrap()).map_err(|e| FrameError {
        status: e.status,
        request_id: e.request_id,
        message: match e.status {
            Status::BadMagic => "frame does not start with SCAP",
            Status::UnsupportedVersion => "protocol version not supported",
            Status::UnknownOpcode => "unknown opcode",
            _ => "reserved header bytes must be zero",
        },
    })?;
    let fail = |status, message| Err(FrameError { status, request_id: header.request_id, message });
    let opcode = header.opcode().expect("checked by decode_header");
    if opcode == Opcode::Error {
        return fail(Status::UnknownOpcode, "the error opcode is for responses only");
    }
    if header.flags != 0 || header.status != 0 || header.retry_after_ms != 0 {
        return fail(Status::ReservedNotZero, "request flags, status and retry_after_ms must be zero");
    }
    let frame_len = HEADER_SIZE as u64 + header.body_len as u64;
    if frame_len > limits.frame_size_max_bytes as u64 {
        return fail(Status::FrameTooLarge, "frame exceeds frame_size_max_bytes");
    }
    if header.op_count as u32 > limits.batch_operations_max {
        return fail(Status::TooManyOperations, "op_count exceeds batch_operations_max");
    }
    let body_len = header.body_len as usize;
    let count = header.op_count as usize;
    let body_ok = match opcode {
        Opcode::Hello | Opcode::Ping | Opcode::ServerStats => count == 0 && body_len == 0,
        Opcode::Auth => count == 1 && (Auth::FIXED_SIZE..=Auth::FIXED_SIZE + AUTH_TOKEN_MAX_BYTES).contains(&body_len),
        Opcode::PoolCreate => {
            count == 1 && (PoolCreate::FIXED_SIZE..=PoolCreate::FIXED_SIZE + POOL_NAME_MAX_BYTES).contains(&body_len)
        }
        Opcode::PoolStatus => count == 1 && (8..=8 + POOL_NAME_MAX_BYTES).contains(&body_len),
        Opcode::PoolList => count == 1 && body_len == PoolListRequest::SIZE,
        Opcode::PoolSetActive => count == 1 && body_len == PoolSetActive::SIZE,
        Opcode::PoolSetRules => count == 1 && body_len == PoolSetRules::SIZE,
        Opcode::UserActivity => count == 1 && body_len == UserActivityRequest::SIZE,
        Opcode::PoolSetCapacity => count == 1 && body_len == PoolSetCapacity::SIZE,
        Opcode::PoolRename => {
            count == 1 && (PoolRename::FIXED_SIZE..=PoolRename::FIXED_SIZE + POOL_NAME_MAX_BYTES).contains(&body_len)
        }
        Opcode::PoolSetDescription => {
            count == 1 && (PoolSetDescription::FIXED_SIZE..=PoolSetDescription::FIXED_SIZE + 255).contains(&body_len)
        }
        _ => {
            let size = opcode.request_record_size().expect("batchable opcode");
            count >= 1 && body_len == count * size
        }
    };
    if !body_ok {
        return fail(Status::MalformedBody, "body size does not match the opcode and op_count");
    }
    if buf.len() < HEADER_SIZE + body_len {
        return Ok(None);
    }
    Ok(Some((header, HEADER_SIZE + body_len)))
}

/// Appends a frame-level error response: opcode `error`, the status, and `message` as body.
pub fn append_error_frame(out: &mut Vec<u8>, request_id: u64, status: Status, message: &str) {
    let mut header = Header::response(Opcode::Error as u8, request_id, status, 0, message.len() as u32);
    header.flags = super::header::FLAG_RESPONSE;
    header.append_to(out);
    out.extend_from_slice(message.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ops::ReserveOp;

    const LIMITS: FrameLimits = FrameLimits { frame_size_max_bytes: 4096, batch_operations_max: 64 };

    fn frame(opcode: Opcode, count: u16, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        Header::request(opcode, 9, count, body.len() as u32).append_to(&mut out);
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn whole_and_partial_frames() {
        let bytes = frame(Opcode::Reserve, 2, &[0u8; 2 * ReserveOp::SIZE]);
        for cut in 0..bytes.len() {
            assert_eq!(next_frame(&bytes[..cut], &LIMITS), Ok(None), "cut at {cut}");
        }
        let (h, len) = next_frame(&bytes, &LIMITS).unwrap().unwrap();
        assert_eq!((h.op_count, len), (2, bytes.len()));
    }

    #[test]
    fn refusals() {
        let status = |b: &[u8]| next_frame(b, &LIMITS).unwrap_err().status;
        assert_eq!(status(b"GET / HTTP/1.1\r\n"), Status::BadMagic);
        assert_eq!(status(b"SCAX"), Status::BadMagic);
        assert_eq!(status(b"SCAP\x07"), Status::UnsupportedVersion);
        assert_eq!(status(&frame(Opcode::Reserve, 3, &[0u8; 2 * ReserveOp::SIZE])), Status::MalformedBody);
        assert_eq!(status(&frame(Opcode::Reserve, 0, &[])), Status::MalformedBody);
        assert_eq!(status(&frame(Opcode::Ping, 0, &[1])), Status::MalformedBody);
        let mut big = frame(Opcode::Reserve, 1, &[0u8; ReserveOp::SIZE]);
        big[16..20].copy_from_slice(&5000u32.to_le_bytes());
        assert_eq!(status(&big[..HEADER_SIZE]), Status::FrameTooLarge);
        let mut many = frame(Opcode::Reserve, 1, &[]);
        many[20..22].copy_from_slice(&65u16.to_le_bytes());
        assert_eq!(status(&many[..HEADER_SIZE]), Status::TooManyOperations);
        let mut flagged = frame(Opcode::Ping, 0, &[]);
        flagged[6] = 1;
        assert_eq!(status(&flagged), Status::ReservedNotZero);
        let mut unknown = frame(Opcode::Ping, 0, &[]);
        unknown[5] = 0x77;
        assert_eq!(status(&unknown), Status::UnknownOpcode);
        unknown[5] = Opcode::Error as u8;
        assert_eq!(status(&unknown), Status::UnknownOpcode);
    }
}
