//! The binary protocol, free of I/O: frame header and opcodes, fixed-size operation records,
//! control bodies, status codes, the frame parser, and the id and placement functions.
//! docs/PROTOCOL.md describes the same bytes for implementers in other languages.

pub mod control;
pub mod frame;
pub mod header;
pub mod ids;
pub mod ops;
pub mod status;

pub use frame::{FrameError, FrameLimits, append_error_frame, next_frame};
pub use header::{FLAG_MORE, FLAG_RESPONSE, HEADER_SIZE, Header, MAGIC, Opcode, VERSION, decode_header};
pub use ids::{format_id, home_core, parse_id, user_id_from_name};
pub use ops::{
    BatchOp, ConfirmOp, ExtendOp, LookupOp, LookupResult, OpResult, RESULT_FLAG_REPEAT, ReleaseOp, ReservationState,
    ReserveOp, decode_batch_results, encode_batch,
};
pub use status::Status;
